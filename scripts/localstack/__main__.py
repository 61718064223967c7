"""``python -m localstack`` (what scripts/stack runs, with scripts/ on the path)."""

import sys

from ._cli import main

sys.exit(main())
