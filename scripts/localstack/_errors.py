"""The stack's exceptions: one root, a leaf per thing the caller does differently."""

from __future__ import annotations


class StackError(RuntimeError):
    """A service could not be started, stopped or reached. ``detail`` holds a log tail."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class PortInUse(StackError):
    """A port the stack needs is held by something else: move with SOCIETY_*_PORT (scripts/stack free-ports)."""


class PortMismatch(StackError):
    """Ports given (SOCIETY_*_PORT, arguments) disagree with the running stack in the state dir: unset them."""
