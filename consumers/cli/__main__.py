"""``python -m consumers.cli``."""

from consumers.cli import main

main()
