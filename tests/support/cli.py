"""``society-ingest`` in a subprocess, with only the settings a test gives it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(*args: str, timeout: float, **env: str) -> Ran:
    """``python -m consumers.cli *args`` with `env` and none of this process's service settings
    (``PG*``, ``SOCIETY_*``, ``KAFKA_*``, ``DATABASE_URL``)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PG", "SOCIETY_", "KAFKA_")) and k != "DATABASE_URL"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "consumers.cli", *args], env={**base, **env}, cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    return Ran(out.returncode, out.stdout, out.stderr, time.monotonic() - started)
