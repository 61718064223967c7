"""The worker: consume table topics, decode, validate, batch, load, commit.

One thread does everything; a batch is flushed when it reaches its row, byte
or linger bound, before partitions are revoked, and on shutdown. Offsets are
committed to PostgreSQL with the rows (see ``consumers.sink``) and mirrored
to Kafka afterwards for lag tools.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from consumers.batch import Batch, DeadLetter, Source
from consumers.dlq import DeadLetterPublisher
from consumers.errors import FencedError, TransientError
from consumers.settings import WorkerSettings
from consumers.sink import PostgresSink, WriteResult
from consumers.table_specs import SPECS
from producers import tables
from producers.codec import AvroCodec
from producers.errors import CodecError, InvalidRecordError, MalformedRecordError
from producers.models import validate_record

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerStats:
    """Counters since the worker started."""

    consumed: int = 0
    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(tables.TABLES, 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(tables.TABLES, 0))
    conflicts: int = 0
    dead_lettered: int = 0
    flushes: int = 0
    retries: int = 0
    fenced: int = 0
    degraded: bool = False
    last_error: str | None = None
    #: time.monotonic() of the first message and of the last commit (for throughput).
    first_message_at: float | None = None
    last_commit_at: float | None = None


class Worker:
    """Consumes ``<prefix>.<table>`` topics into PostgreSQL until stopped."""

    def __init__(self, settings: WorkerSettings, codec: AvroCodec | None = None) -> None:
        self.settings = settings
        self.stats = WorkerStats()
        self._codec = codec or AvroCodec()
        self._stop = threading.Event()
        self._topics = {tables.topic_for(settings.topic_prefix, t): t for t in settings.tables}
        self._sink = PostgresSink(settings.database_url.get_secret_value(), settings.group_id)
        self._dlq = DeadLetterPublisher(
            settings.producer_config(), tables.dlq_topic(settings.topic_prefix), settings.worker_id
        )
        self._consumer: Consumer | None = None
        self._batch = Batch()
        # Next offset per owned partition as stored in PostgreSQL (None: nothing stored yet).
        self._positions: dict[tuple[str, int], int | None] = {}
        self._linger_s = settings.linger_ms / 1000
        self._validate = settings.validate_records

    # -- lifecycle ----------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to finish the batch in hand, commit and return."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Consume until ``stop()`` (or `idle_exit_s` without messages); return the stats."""
        consumer = Consumer(self.settings.consumer_config())
        self._consumer = consumer
        consumer.subscribe(
            list(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        last_message = time.monotonic()
        try:
            while not self._stop.is_set():
                messages = consumer.consume(self.settings.poll_batch, timeout=min(0.2, self._linger_s or 0.2))
                for msg in messages:
                    self._accept(msg)
                if messages:
                    last_message = time.monotonic()
                if self._batch.due(self.settings.max_batch_rows, self.settings.max_batch_bytes, self._linger_s):
                    self._flush()
                if idle_exit_s is not None and not self._batch.next_offsets:
                    if time.monotonic() - last_message >= idle_exit_s:
                        break
            self._flush()
        finally:
            try:
                consumer.close()  # revokes: flushes nothing new, the batch is empty
            finally:
                self._consumer = None
                self._dlq.close()
                self._sink.close()
        return self.stats

    # -- rebalancing --------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self._retry(lambda: self._sink.load_offsets((p.topic, p.partition) for p in partitions))
        for p in partitions:
            tp = (p.topic, p.partition)
            self._positions[tp] = stored.get(tp)
            p.offset = stored.get(tp, OFFSET_BEGINNING)
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._flush()  # commit what we hold while we still own the partitions
        for p in partitions:
            self._positions.pop((p.topic, p.partition), None)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: committing would be fenced anyway.
        log.warning("partitions lost; dropping the uncommitted batch")
        self._batch = Batch()
        for p in partitions:
            self._positions.pop((p.topic, p.partition), None)
        consumer.unassign()

    # -- per message --------------------------------------------------------
    def _accept(self, msg: Any) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            log.warning("consumer error: %s", err)
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        value = msg.value()
        self.stats.consumed += 1
        if self.stats.first_message_at is None:
            self.stats.first_message_at = time.monotonic()
        self._batch.track(topic, partition, offset, len(value or b""))
        ts_type, ts = msg.timestamp()
        source = Source(topic, partition, offset, ts if ts_type else None, msg.key(), value)
        table = self._topics[topic]
        try:
            if value is None:
                raise MalformedRecordError("empty message (tombstone)")
            decoded = self._codec.decode(value)
            if decoded.table != table:
                raise MalformedRecordError(f"a {decoded.table} record on the {table} topic")
            fields = validate_record(table, decoded.record) if self._validate else decoded.record
        except (CodecError, InvalidRecordError) as e:
            self._batch.add_dead(DeadLetter(source, table, type(e).__name__, str(e)))
            return
        self._batch.add(table, tuple(fields[c] for c in SPECS[table].column_names), source)

    # -- flushing -----------------------------------------------------------
    def _flush(self) -> None:
        batch = self._batch
        if not batch.next_offsets:
            return
        try:
            result = self._retry(lambda: self._sink.write(batch, self._positions, self._dlq.publish))
        except FencedError as e:
            self.stats.fenced += 1
            log.warning("batch fenced, re-seeking: %s", e)
            self._batch = Batch()
            self._reseek(list(batch.next_offsets))
            return
        self._batch = Batch()
        self._record(result)
        for tp, next_offset in batch.next_offsets.items():
            self._positions[tp] = next_offset
        self._mirror_offsets(batch.next_offsets)

    def _record(self, result: WriteResult) -> None:
        s = self.stats
        s.flushes += 1
        s.last_commit_at = time.monotonic()
        for t in tables.TABLES:
            s.inserted[t] += result.inserted[t]
            s.duplicates[t] += result.duplicates[t]
        s.conflicts += result.conflicts
        s.dead_lettered += len(result.dead)
        for d in result.dead:
            log.warning(
                "dead-lettered %s[%d]@%d: %s: %s",
                d.source.topic, d.source.partition, d.source.offset, d.error_class, d.message,
            )

    def _mirror_offsets(self, next_offsets: dict[tuple[str, int], int]) -> None:
        if self._consumer is None:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:
            # Only a mirror for lag tools: PostgreSQL already holds the truth.
            log.info("could not mirror offsets to Kafka: %s", e)

    def _reseek(self, partitions: list[tuple[str, int]]) -> None:
        stored = self._retry(lambda: self._sink.load_offsets(partitions))
        if self._consumer is None:
            return
        for tp in partitions:
            if tp not in self._positions:
                continue
            self._positions[tp] = stored.get(tp)
            target = TopicPartition(tp[0], tp[1], stored.get(tp, OFFSET_BEGINNING))
            try:
                self._consumer.seek(target)
            except KafkaException as e:
                log.warning("cannot seek %s: %s", tp, e)

    def _retry(self, action: Any) -> Any:
        """Run `action`, retrying TransientError with capped exponential backoff and full jitter."""
        delay = self.settings.retry_initial_s
        while True:
            try:
                value = action()
            except TransientError as e:
                self.stats.retries += 1
                self.stats.degraded = True
                self.stats.last_error = str(e)
                log.warning("transient failure, retrying in up to %.1fs: %s", delay, e)
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            if self.stats.degraded:
                log.info("recovered")
                self.stats.degraded = False
            return value
