"""Backfill without services: a fake sink that can be killed at a chosen batch, and NDJSON lines to feed it."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from consumers import backfill as bf

RUN = "6d1c1b0e-0c5e-4f7b-9a43-5d1f0c2b7e11"
STARTED = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def memory(i: int, **extra: Any) -> dict[str, Any]:
    return {"table": "agent_memories", "agent_id_str": f"agent_{i % 7}", "simulation_run_id": RUN,
            "step_timestamp": i // 7, "real_timestamp": "2024-05-01T12:00:00.123456+02:00",
            "content": f"memory {i}", "importance": 0.25, "tags": ["trade"], **extra}


def line(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()


class Killed(Exception):
    """Stands in for SIGKILL at a chosen point of a batch."""


class FakeSink:
    """Records what was sent and acknowledged; can be killed before or after a batch's acknowledgement.

    `after_ack(n)` is called once the n-th batch is acknowledged (to change files or ask to stop).
    """

    def __init__(self, max_message_bytes: int = 1_000_000, kafka_cluster: str | None = "cluster-a") -> None:
        self.max_message_bytes = max_message_bytes
        self.kafka_cluster = kafka_cluster
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.acked: list[tuple[str, dict[str, Any]]] = []
        self.batches = 0
        self.kill_before_ack_at: int | None = None
        self.kill_after_ack_at: int | None = None
        self.after_ack: Callable[[int], None] = lambda n: None

    def send(self, table: str, fields: dict[str, Any]) -> None:
        self.pending.append((table, fields))

    def deliver(self) -> None:
        self.batches += 1
        if self.batches == self.kill_before_ack_at:
            self.pending.clear()
            raise Killed
        self.acked.extend(self.pending)
        self.pending.clear()
        if self.batches == self.kill_after_ack_at:
            raise Killed
        self.after_ack(self.batches)


def write_lines(path: Path, objs: list[Any], compress: bool = False) -> Path:
    data = b"".join(line(o) for o in objs)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def run(sink: FakeSink, files: list[Path], **options: Any) -> bf.BackfillResult:
    """A backfill of `files` into prefix "t", 10 lines a batch unless told, starting at STARTED."""
    options.setdefault("batch_lines", 10)
    options.setdefault("now", lambda: STARTED)
    stop = options.pop("stop", lambda: False)
    progress = options.pop("progress", lambda n: None)
    return bf.Backfill(files, topic_prefix="t", **options).run(sink, stop, progress)


def keys(acked: list[tuple[str, dict[str, Any]]]) -> Counter:
    return Counter(str(f["memory_id"]) for t, f in acked if t == "agent_memories")
