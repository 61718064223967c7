"""Fixtures of the stack's own tests (helpers in private_stacks.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from private_stacks import PrivateStack, new_private_stack


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[PrivateStack]:
    """A stack that is not running (yet): its own state dir and ports; discarded after the test."""
    stack = new_private_stack(tmp_path / "stack")
    yield stack
    stack.discard()
