"""In-memory batch of decoded rows per table, with their Kafka sources and offsets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from producers.tables import TABLES

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from; enough to dead-letter it with its original bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    #: The message's own Kafka headers, carried into its dead letter.
    headers: list[tuple[str, bytes | None]] | None = None


def source_of(entry: Any) -> Source:
    """The Source of a batch entry: a Source, or the Kafka message itself, which the worker keeps
    instead of copying it into a Source (one object less per record; this runs only for the rare
    record that is dead-lettered or conflicts)."""
    if isinstance(entry, Source):
        return entry
    ts_type, ts = entry.timestamp()
    return Source(entry.topic(), entry.partition(), entry.offset(), ts if ts_type else None, entry.key(),
                  entry.value(), entry.headers())


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be loaded, and why."""

    source: Source
    table: str | None
    error_class: str
    message: str


@dataclass(slots=True)
class TableRows:
    """Rows of one table and where each came from.

    A row is a tuple in its TableSpec's column order, or (fact tables, from
    ``consumers.transcode``) its binary COPY tuple, with its parent key in
    `parents` (``copy_rows.parent_key``; None for a tuple row).
    """

    rows: list[Any] = field(default_factory=list)
    #: Source, or the Kafka message (see ``source_of``).
    sources: list[Any] = field(default_factory=list)
    parents: list[bytes | None] = field(default_factory=list)

    def split(self) -> tuple[TableRows, TableRows]:
        """The first and second half (for bisecting a chunk PostgreSQL refused)."""
        mid = len(self.rows) // 2
        return (TableRows(self.rows[:mid], self.sources[:mid], self.parents[:mid]),
                TableRows(self.rows[mid:], self.sources[mid:], self.parents[mid:]))


class Batch:
    """What the worker holds between flushes."""

    def __init__(self) -> None:
        self.tables: dict[str, TableRows] = {t: TableRows() for t in TABLES}
        self.dead: list[DeadLetter] = []
        self.next_offsets: dict[TopicPartition, int] = {}
        self.rows = 0
        self.bytes = 0
        self.started = 0.0

    def __len__(self) -> int:
        return self.rows + len(self.dead)

    def track(self, topic: str, partition: int, offset: int, size: int) -> None:
        """Count a consumed message: the partition's next offset moves past it."""
        if not self.next_offsets and not self.rows:
            self.started = time.monotonic()
        self.next_offsets[(topic, partition)] = offset + 1
        self.bytes += size

    def add(self, table: str, row: tuple[Any, ...], source: Source) -> None:
        """Add one decoded row of `table` as a tuple."""
        rows = self.tables[table]
        rows.rows.append(row)
        rows.sources.append(source)
        rows.parents.append(None)
        self.rows += 1

    def add_copy(self, table: str, row: bytes, parent: bytes, source: Any) -> None:
        """Add one row of a fact table as its binary COPY tuple, with its parent key."""
        rows = self.tables[table]
        rows.rows.append(row)
        rows.sources.append(source)
        rows.parents.append(parent)
        self.rows += 1

    def add_dead(self, dead: DeadLetter) -> None:
        """Add a record that will go to the dead-letter topic."""
        self.dead.append(dead)

    def due(self, max_rows: int, max_bytes: int, linger_s: float) -> bool:
        """True when a bound is reached and the batch should be flushed."""
        if not self.next_offsets:
            return False
        return (
            self.rows >= max_rows
            or self.bytes >= max_bytes
            or time.monotonic() - self.started >= linger_s
        )
