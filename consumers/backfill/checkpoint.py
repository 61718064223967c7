"""The checkpoint: what a backfill delivered so far, per input file, replaced whole after every acknowledged batch.

Also where it lives (``default_checkpoint``), the lock that keeps a second
backfill off the same checkpoint (``CheckpointLock``), and the checks that no
file the backfill writes is one of its inputs, or a file it did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from consumers._files import write_atomically
from consumers.backfill.errors import BackfillError, CheckpointInUseError
from consumers.backfill.lines import UNKNOWN_TABLE
from producers import tables

CHECKPOINT_FORMAT: Final = "society-ingest backfill checkpoint"
#: 2: the report's path, the Kafka cluster, lines hashed without their terminators.
CHECKPOINT_VERSION: Final = 2
#: How much of a file's start is read to tell whether the backfill wrote it.
_SNIFF_BYTES: Final = 4096


@dataclass
class TableCounts:
    """Lines of one table: read, sent (acknowledged by Kafka), skipped as bad."""

    read: int = 0
    sent: int = 0
    skipped: int = 0


def new_counts() -> dict[str, TableCounts]:
    return {t: TableCounts() for t in (*tables.TABLES, UNKNOWN_TABLE)}


@dataclass
class FileProgress:
    """How far one input file was delivered: lines done and a SHA-256 of exactly those lines (``InputLines``)."""

    lines: int = 0
    sha256: str = hashlib.sha256().hexdigest()


@dataclass
class Checkpoint:
    """What a backfill delivered so far; written after every acknowledged batch."""

    inputs: dict[str, Any]
    started_at: str
    files: dict[str, FileProgress]
    #: The bad-line report of this backfill: the one file besides this one that it writes.
    report: str
    #: The id of the Kafka cluster the lines were delivered to (None: unknown).
    kafka_cluster: str | None
    #: Ids derived in the lines done (a resume re-reads them to number identical lines alike).
    derived_ids: int = 0
    #: Size of the report file covering the lines done (a resume cuts off what came after).
    report_bytes: int = 0
    complete: bool = False
    totals: dict[str, TableCounts] = field(default_factory=new_counts)

    @classmethod
    def new(cls, inputs: dict[str, Any], started_at: datetime, report: Path, kafka_cluster: str | None) -> Checkpoint:
        return cls(inputs, started_at.isoformat(), {f: FileProgress() for f in inputs["files"]}, str(report),
                   kafka_cluster)

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at `path`, or None when there is none; BackfillError when it is not one."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:  # a folder, no permission: --restart cannot help
            raise BackfillError(f"cannot read the checkpoint {path}: {e.strerror or e}; "
                                "pass --checkpoint PATH to keep it elsewhere") from e
        except ValueError as e:
            raise BackfillError(f"{path} is not a backfill checkpoint ({e}); "
                                "pass --checkpoint to choose another file") from e
        try:
            data = json.loads(text)
        except ValueError as e:
            if not written_as(path, CHECKPOINT_FORMAT):
                raise BackfillError(f"{path} is not a backfill checkpoint; "
                                    "pass --checkpoint to choose another file") from e
            raise BackfillError(f"the checkpoint {path} is damaged ({e}); pass --restart to start over") from e
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise BackfillError(f"{path} is not a backfill checkpoint; pass --checkpoint to choose another file")
        if data.get("version") != CHECKPOINT_VERSION:
            raise BackfillError(f"checkpoint {path} has version {data.get('version')}, this society-ingest "
                                f"reads {CHECKPOINT_VERSION}; pass --restart to start over")
        try:
            return cls(
                inputs=data["inputs"],
                started_at=data["started_at"],
                files={f: FileProgress(**p) for f, p in data["files"].items()},
                report=data["report"],
                kafka_cluster=data["kafka_cluster"],
                derived_ids=data["derived_ids"],
                report_bytes=data["report_bytes"],
                complete=data["complete"],
                totals={t: TableCounts(**c) for t, c in data["totals"].items()},
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise BackfillError(f"checkpoint {path} is damaged ({type(e).__name__}: {e}); "
                                "pass --restart to start over") from e

    def save(self, path: Path) -> None:
        """Replace the checkpoint at `path` atomically: a crash leaves the old one or the new one, whole."""
        data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **asdict(self),
                "written_at": datetime.now(timezone.utc).isoformat()}
        write_atomically(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


CHECKPOINT_SUFFIX: Final = ".checkpoint.json"
REPORT_SUFFIX: Final = ".bad.ndjson"


def default_checkpoint(files: Sequence[Path], table: str | None, topic_prefix: str) -> Path:
    """``<first file>.backfill-<hash of the arguments>.checkpoint.json``, beside the first file."""
    inputs = inputs_of(files, table, topic_prefix)
    tag = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()[:10]
    first = Path(inputs["files"][0])
    return first.with_name(f"{first.name}.backfill-{tag}{CHECKPOINT_SUFFIX}")


def default_report(checkpoint: Path) -> Path:
    """The bad-line report beside a checkpoint: ``x.checkpoint.json`` -> ``x.bad.ndjson``."""
    name = checkpoint.name.removesuffix(CHECKPOINT_SUFFIX)
    return checkpoint.with_name(name + REPORT_SUFFIX)


def inputs_of(files: Sequence[Path], table: str | None, topic_prefix: str) -> dict[str, Any]:
    return {"files": [str(Path(f).resolve()) for f in files], "table": table, "topic_prefix": topic_prefix}


def same_file(a: Path, b: Path) -> bool:
    """Are `a` and `b` the same file (hard links and symlinks included), or the same path when one is missing?"""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def written_as(path: Path, file_format: str) -> bool:
    """Does the file at `path` start as the backfill writes a file of `file_format` (its ``"format"`` key)?

    How the backfill tells its own checkpoint or report from a file it must never cut or replace.
    """
    try:
        with path.open("rb") as f:
            start = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return json.dumps({"format": file_format})[1:-1].encode("utf-8") in start


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class CheckpointLock:
    """``with CheckpointLock(checkpoint):`` an exclusive lock on ``<checkpoint>.lock`` for the whole run.

    CheckpointInUseError at once when another process holds it. The operating system drops the
    lock when the process ends, however it ends, so a killed backfill leaves no stale lock; the
    empty ``.lock`` file stays (removing it could let two backfills lock two different files).
    Uses ``fcntl.flock`` (Linux, macOS, BSD), else ``msvcrt.locking`` (Windows).
    """

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.path = checkpoint.with_name(checkpoint.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> CheckpointLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            reason = (f"its folder {self.path.parent} is missing or not a folder"
                      if isinstance(e, (FileNotFoundError, NotADirectoryError)) else e.strerror or str(e))
            raise BackfillError(f"cannot keep the checkpoint at {self.checkpoint} (creating its lock file "
                                f"{self.path.name}): {reason}; pass --checkpoint PATH to keep it elsewhere") from e
        try:
            _lock(fd)
        except OSError as e:
            os.close(fd)
            if not isinstance(e, (BlockingIOError, PermissionError)):  # PermissionError: msvcrt's "locked"
                raise BackfillError(f"cannot lock {self.path}: {e.strerror or e}; "
                                    "pass --checkpoint PATH to keep the checkpoint elsewhere") from e
            raise CheckpointInUseError(
                f"another backfill is running with the checkpoint {self.checkpoint} (it holds {self.path}): "
                "wait until it ends, or give this one its own --checkpoint"
            ) from e
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_SUFFIX", "CHECKPOINT_VERSION", "REPORT_SUFFIX", "Checkpoint", "CheckpointLock",
    "FileProgress", "TableCounts", "default_checkpoint", "default_report", "inputs_of", "new_counts", "same_file",
    "written_as",
]
