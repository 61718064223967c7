"""The checkpoint: what a backfill delivered so far, per input file, replaced whole after every acknowledged batch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from consumers._files import write_atomically
from consumers.backfill.errors import BackfillError
from consumers.backfill.lines import UNKNOWN_TABLE
from producers import tables

CHECKPOINT_FORMAT: Final = "society-ingest backfill checkpoint"
CHECKPOINT_VERSION: Final = 1


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
    """How far one input file was delivered: lines done and a SHA-256 of exactly those lines' bytes."""

    lines: int = 0
    sha256: str = hashlib.sha256().hexdigest()


@dataclass
class Checkpoint:
    """What a backfill delivered so far; written after every acknowledged batch."""

    inputs: dict[str, Any]
    started_at: str
    files: dict[str, FileProgress]
    #: Ids derived in the lines done (a resume re-reads them to number identical lines alike).
    derived_ids: int = 0
    #: Size of the report file covering the lines done (a resume cuts off what came after).
    report_bytes: int = 0
    complete: bool = False
    totals: dict[str, TableCounts] = field(default_factory=new_counts)

    @classmethod
    def new(cls, inputs: dict[str, Any], started_at: datetime) -> Checkpoint:
        return cls(inputs, started_at.isoformat(), {f: FileProgress() for f in inputs["files"]})

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at `path`, or None when there is none; BackfillError when it is not one."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise BackfillError(f"cannot read the checkpoint {path}: {e}; pass --restart to start over") from e
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


__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_SUFFIX", "CHECKPOINT_VERSION", "REPORT_SUFFIX", "Checkpoint", "FileProgress",
    "TableCounts", "default_checkpoint", "default_report", "inputs_of", "new_counts",
]
