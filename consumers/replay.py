"""Replay: read a bounded range of the table topics back into PostgreSQL.

A replay is the worker (``consumers.worker``) on a fixed plan instead of a
group subscription: each selected partition is read from a start offset to an
end offset fixed when the replay starts (the log's end then, at the latest),
and records outside the selection (another run, outside the time range) are
skipped. It decodes, validates, dead-letters and loads exactly as the worker
does, but under its own group name, so the live workers' stored offsets (in
PostgreSQL and in Kafka) are never read or moved. Its own offsets are stored
with the rows under that group, which is what ``--resume`` continues from.

Selections:

- ``run``: records whose run column is that run (the message key starts with
  the run id, so other runs' records are skipped without decoding);
- ``since``/``until``: the records' Kafka timestamps (the time the producer
  sent them), ``since`` inclusive, ``until`` exclusive; the start and end
  offsets come from the broker's time index, then each record is checked;
- ``offsets``: explicit ``[start, end)`` offsets of given partitions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumers._deps import psycopg
from consumers.batch import Batch
from consumers.dlq_limit import DeadLetterLimit
from consumers.errors import ConfigurationError
from consumers.pg_errors import translate
from consumers.settings import WorkerSettings
from consumers.sink import CONNECT_OPTIONS, WriteResult
from consumers.worker import Worker
from consumers.writer import Outcome
from producers import tables
from producers.codec import AvroCodec

log = logging.getLogger(__name__)

#: How long each metadata, watermark or time-index request may take.
KAFKA_TIMEOUT_S = 30.0
#: First key of the advisory lock a replay holds on its group (the second is the group's hash).
REPLAY_LOCK_ID = 0x5E9A


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one partition of a table; end None: to the log's end."""

    table: str
    partition: int
    start: int
    end: int | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """What to replay: tables, and optionally one run, a time range or offset ranges."""

    tables: tuple[str, ...] = tables.TABLES
    run_id: uuid.UUID | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    offsets: tuple[OffsetRange, ...] = ()
    #: --since/--until as the user wrote them ("2h" stays "2h"): the group must not change with the clock.
    window: tuple[str | None, str | None] = (None, None)

    def group(self, prefix: str, target_schema: str | None) -> str:
        """The replay's own group name, the same for the same selection (so --resume finds it)."""
        chosen = tuple(t for t in tables.TABLES if t in self.tables)
        window = self.window if self.window != (None, None) else (self.since_ms, self.until_ms)
        offsets = tuple(sorted((r.table, r.partition, r.start, r.end or -1) for r in self.offsets))
        text = repr((prefix, chosen, self.run_id, window, offsets, target_schema))
        return "society-ingest-replay-" + hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def whole_run(self) -> bool:
        """A run and nothing narrower: what Kafka held can be compared with what the run recorded."""
        return (self.run_id is not None and self.since_ms is None and self.until_ms is None and not self.offsets
                and set(self.tables) == set(tables.TABLES))


@dataclass(slots=True)
class PartitionPlan:
    """One partition's share of the replay."""

    table: str
    topic: str
    partition: int
    #: Oldest offset Kafka still retains and the log's end, when the replay started.
    low: int
    high: int
    start: int
    end: int
    #: Offsets of the requested range that retention already deleted.
    gone: int = 0
    #: Next offset to read (start, or where a resumed replay stopped).
    position: int = 0
    #: Where the request began, before Kafka's retention moved it to `low`.
    requested: int = 0
    done: bool = False

    @property
    def size(self) -> int:
        """Offsets in ``[start, end)``."""
        return max(0, self.end - self.start)


@dataclass(slots=True)
class TableSummary:
    """What a replay did with one table."""

    scanned: int = 0
    selected: int = 0
    loaded: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


@dataclass(slots=True)
class ReplaySummary:
    """The outcome of a replay, per table and in total."""

    group: str
    dry_run: bool
    target_schema: str | None
    partitions: list[PartitionPlan] = field(default_factory=list)
    tables: dict[str, TableSummary] = field(default_factory=dict)
    conflicts: int = 0
    warnings: list[str] = field(default_factory=list)
    resumed_from: int = 0
    elapsed_s: float = 0.0
    finished: bool = False

    @property
    def scanned(self) -> int:
        """Records read in the planned ranges."""
        return sum(t.scanned for t in self.tables.values())

    @property
    def total(self) -> int:
        """Offsets in the planned ranges (what the progress bar counts to)."""
        return sum(p.size for p in self.partitions)


def _partitions_of(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} does not exist"))
    return sorted(meta.partitions)


def _offsets_at(consumer: Consumer, topic: str, partitions: list[int], ts_ms: int) -> dict[int, int]:
    """Per partition, the first offset whose timestamp is >= ts_ms (-1: none)."""
    found = consumer.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in partitions], timeout=KAFKA_TIMEOUT_S)
    return {tp.partition: tp.offset for tp in found}


def plan(consumer: Consumer, prefix: str, selection: Selection) -> list[PartitionPlan]:
    """Fix each selected partition's ``[start, end)`` against the broker's current log."""
    wanted: dict[str, dict[int, OffsetRange | None]] = {}
    if selection.offsets:
        for r in selection.offsets:
            wanted.setdefault(r.table, {})[r.partition] = r
    else:
        wanted = {t: {} for t in selection.tables}
    plans = []
    for table in tables.TABLES:
        if table not in wanted:
            continue
        topic = tables.topic_for(prefix, table)
        existing = _partitions_of(consumer, topic)
        ranges = wanted[table]
        unknown = sorted(set(ranges) - set(existing))
        if unknown:
            raise ValueError(
                f"{topic} has partitions 0..{max(existing)}; there is no partition {', '.join(map(str, unknown))}"
            )
        partitions = sorted(ranges) if ranges else existing
        # The first offset at or after --since is exact (every earlier record is older). --until
        # bounds nothing: a later record may carry an earlier timestamp (clock skew between
        # producers), so reading goes on to the end and each record's timestamp decides.
        since = _offsets_at(consumer, topic, partitions, selection.since_ms) if selection.since_ms is not None else {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=KAFKA_TIMEOUT_S, cached=False)
            asked = ranges.get(p)
            start = asked.start if asked else 0
            end = high if asked is None or asked.end is None else min(asked.end, high)
            if p in since:
                start = high if since[p] < 0 else max(start, since[p])
            requested = start
            gone = max(0, min(low, end) - start) if start < low else 0
            start = max(start, low)
            plans.append(PartitionPlan(table, topic, p, low, high, start, max(start, end), gone, start, requested))
    return plans


def retention_warnings(plans: list[PartitionPlan], selection: Selection) -> list[str]:
    """Say plainly which requested records Kafka no longer holds."""
    warnings = []
    for p in plans:
        if p.gone:
            what = "of the requested range" if selection.offsets else "at the start of the topic"
            rest = f"replaying from {p.low}" if p.size else "nothing of it is left"
            warnings.append(
                f"{p.topic}[{p.partition}]: offsets {p.requested}..{p.requested + p.gone - 1} {what} are no longer "
                f"in Kafka ({p.gone:,} record(s) deleted by retention); {rest}"
            )
        elif selection.since_ms is not None and p.low > 0 and p.start == p.low:
            warnings.append(
                f"{p.topic}[{p.partition}]: Kafka deleted offsets 0..{p.low - 1} ({p.low:,} record(s)) and its oldest "
                f"record is from after --since: part of the requested time range may be gone"
            )
    return warnings


class Replay(Worker):
    """The worker on a fixed plan: reads each partition's range once, loads the selection, and returns."""

    def __init__(
        self,
        settings: WorkerSettings,
        selection: Selection,
        *,
        dry_run: bool = False,
        resume: bool = False,
        target_schema: str | None = None,
        on_plan: Callable[[ReplaySummary], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        codec: AvroCodec | None = None,
    ) -> None:
        super().__init__(settings, codec)
        self.selection = selection
        self.summary = ReplaySummary(settings.group_id, dry_run, target_schema)
        self.summary.tables = {t: TableSummary() for t in tables.TABLES if t in settings.tables}
        self._dry_run = dry_run
        self._resume = resume
        self._on_plan = on_plan
        self._on_progress = on_progress
        self._parts: dict[tuple[str, int], PartitionPlan] = {}
        self._reported = 0
        self._lock: Any = None
        if dry_run:
            self._limit = DeadLetterLimit(0, 0)  # a dry run counts bad records, however many
        run = selection.run_id
        self._run_text = None if run is None else str(run)
        self._run_key = None if run is None else str(run).encode()
        self._run_prefix = None if run is None else self._run_key + b"/"
        if run is not None:
            self._wanted = self._in_run

    # -- plan ---------------------------------------------------------------
    def _prepare(self) -> None:
        if self._dry_run:
            return
        super()._prepare()
        self._lock = self._retry(self._take_lock)

    def _take_lock(self) -> Any:
        """Hold a session lock on the group for the whole replay: one replay of a selection at a time."""
        url = self.settings.database_url.get_secret_value()
        try:
            conn = psycopg.connect(url, autocommit=True, **CONNECT_OPTIONS)
        except psycopg.Error as e:
            raise translate(e, url, "locking the replay") from e
        held = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (REPLAY_LOCK_ID, self.settings.group_id))
        if not held.fetchone()[0]:
            conn.close()
            raise ConfigurationError(
                f"another replay of the same selection (group {self.settings.group_id}) is running into this "
                "database: wait for it, or stop it and run this one with --resume"
            )
        return conn

    def _start(self, consumer: Consumer) -> None:
        plans = plan(consumer, self.settings.topic_prefix, self.selection)
        s = self.summary
        s.partitions = plans
        s.warnings = retention_warnings(plans, self.selection)
        stored: dict[tuple[str, int], int] = {}
        if self._resume and not self._dry_run:
            stored = self._retry(lambda: self._sink.load_offsets((p.topic, p.partition) for p in plans))
            if not stored:
                s.warnings.append("nothing stored to resume for this selection: replaying from the start")
        elif not self._dry_run:
            self._retry(lambda: self._sink.forget_offsets())
        assignment = []
        for p in plans:
            tp = (p.topic, p.partition)
            if tp in stored:
                self._positions[tp] = stored[tp]
                if stored[tp] > p.high:
                    s.warnings.append(
                        f"{p.topic}[{p.partition}]: the stored offset {stored[tp]} is past the log's end {p.high} "
                        "(was the topic deleted and created again?): replaying this partition from the start"
                    )
                    continue_from = p.start
                else:
                    continue_from = min(max(p.start, stored[tp]), p.end)
                p.position = continue_from
                s.resumed_from += p.position - p.start
            else:
                self._positions[tp] = None
            self._parts[tp] = p
            if p.position >= p.end:
                p.done = True
            else:
                assignment.append(TopicPartition(p.topic, p.partition, p.position))
        self._reported = s.resumed_from
        if self._on_plan is not None:
            self._on_plan(s)
        if self._on_progress is not None and s.resumed_from:
            self._on_progress(s.resumed_from)
        consumer.assign(assignment)

    # -- per message --------------------------------------------------------
    def _accept(self, msg: Any) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                part = self._parts.get((msg.topic(), msg.partition()))
                if part is not None:
                    self._finish(part)
                return
            super()._accept(msg)
            return
        part = self._parts.get((msg.topic(), msg.partition()))
        offset = msg.offset()
        if part is None or part.done or offset >= part.end:
            if part is not None:
                self._finish(part)
            return
        part.position = offset + 1
        if part.position >= part.end:
            self._finish(part)
        counts = self.summary.tables[part.table]
        counts.scanned += 1
        if not self._selected(msg):
            self._batch.track(part.topic, part.partition, offset, 0)
            return
        counts.selected += 1
        super()._accept(msg)

    def _selected(self, msg: Any) -> bool:
        sel = self.selection
        if sel.since_ms is not None or sel.until_ms is not None:
            _, ts = msg.timestamp()
            if sel.since_ms is not None and ts < sel.since_ms or sel.until_ms is not None and ts >= sel.until_ms:
                return False
        if self._run_key is not None:
            key = msg.key()
            # Keys are "<run>" or "<run>/<entity>" (producers.tables.message_key); no key: decode and look.
            if key is not None and key != self._run_key and not key.startswith(self._run_prefix):
                return False
        return True

    def _in_run(self, table: str, fields: dict[str, Any]) -> bool:
        if str(fields.get(tables.DECLARATIONS[table].run_column)) == self._run_text:
            return True
        self.summary.tables[table].selected -= 1  # keyed as the run's, but it is another run's record
        return False

    def _finish(self, part: PartitionPlan) -> None:
        if part.done:
            return
        part.done = True
        if self._consumer is not None:
            try:
                self._consumer.pause([TopicPartition(part.topic, part.partition)])
            except KafkaException as e:
                log.debug("cannot pause %s[%d]: %s", part.topic, part.partition, e)

    def _finished(self) -> bool:
        if self._on_progress is not None:
            now = sum(p.position - p.start for p in self._parts.values())
            if now > self._reported:
                self._on_progress(now - self._reported)
                self._reported = now
        return all(p.done for p in self._parts.values())

    # -- loading ------------------------------------------------------------
    def _hand_over(self) -> None:
        if not self._dry_run:
            super()._hand_over()
            return
        batch, self._batch = self._batch, Batch()
        for table, rows in batch.tables.items():
            if rows.rows:
                self.summary.tables[table].loaded += len(rows.rows)
        for d in batch.dead:
            if d.table in self.summary.tables:
                self.summary.tables[d.table].dead_lettered += 1

    def _handle(self, outcomes: list[Outcome]) -> None:
        fenced = next((o.fenced for o in outcomes if o.fenced is not None), None)
        if fenced is not None:
            # The lock keeps other replays of this group out; whoever moved the offsets, the
            # replay cannot tell what was loaded: stop, and let --resume start from what is stored.
            self._giving_up = True
            raise ConfigurationError(f"the replay's stored offsets were moved by another process: {fenced}")
        super()._handle(outcomes)

    def _mirror_offsets(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """A replay leaves no consumer group behind in Kafka: its offsets live in PostgreSQL only."""

    def _close(self, consumer: Consumer | None) -> None:
        try:
            super()._close(consumer)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _record(self, result: WriteResult) -> None:
        super()._record(result)
        for t, counts in self.summary.tables.items():
            counts.loaded += result.inserted[t]
            counts.duplicates += result.duplicates[t]
        for d in result.dead:
            if d.table in self.summary.tables:
                self.summary.tables[d.table].dead_lettered += 1
        self.summary.conflicts += result.conflicts

    def run(self, idle_exit_s: float | None = None) -> Any:  # noqa: ARG002 - a replay ends when its ranges do
        """Replay the plan; return the summary (``finished`` False when stopped first)."""
        started = time.monotonic()
        try:
            super().run()
        finally:
            self.summary.elapsed_s = time.monotonic() - started
            self.summary.finished = not self._giving_up and all(p.done for p in self._parts.values())
        if self.summary.finished and not self._dry_run:
            # Nothing is left to resume: leave no offsets behind.
            self._retry(self._sink.forget_offsets)
            self._sink.close()
        return self.summary


def replay_worker_id() -> str:
    """Names the replay in dead-letter headers and ``ingest_workers``: replay@host:pid."""
    return f"replay@{socket.gethostname()}:{os.getpid()}"
