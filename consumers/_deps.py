"""Imports of the worker's optional dependencies, with a fix-it message."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import `module` or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is not installed; run \"pip install 'society-ingest[{extra}]'\" to fix it"
        ) from e


psycopg = require("psycopg", "worker")
