"""Resident memory of a process, read from Linux's ``/proc`` (no psutil needed)."""

from __future__ import annotations

from pathlib import Path

#: Where Linux keeps per-process status; other systems have no such file.
PROC = Path("/proc")


def rss_bytes(pid: int) -> int | None:
    """The resident set size (``VmRSS``) of process `pid` in bytes; None once it has exited.

    Raises OSError where ``/proc`` does not exist (not Linux).
    """
    if not PROC.is_dir():
        raise OSError("reading a process's memory needs Linux's /proc")
    try:
        text = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # "VmRSS:   123456 kB"
    return None  # a zombie: exited, not yet reaped
