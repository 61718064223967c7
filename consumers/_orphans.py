"""Child processes that die with their parent, even one killed with SIGKILL (no clean-up of its own runs).

Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` in the child before it executes, so it stops as on
SIGTERM (a ``consume`` worker finishes its batch and leaves its group). Elsewhere nothing is set.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: SIGTERM the child when this process ends (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    return lambda: stop_with(parent)


def stop_with(parent: int) -> None:
    """In a child of `parent`: get SIGTERM when `parent` ends (Linux only; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not allowed here: the child merely outlives a killed parent, as before
    if os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
        os.kill(os.getpid(), signal.SIGTERM)
