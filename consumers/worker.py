"""The worker: consume table topics, decode, validate, batch, load, commit.

The consumer thread polls, decodes and validates; a batch is handed to the
writer thread (``consumers.writer``) when it reaches its row, byte or linger
bound, and the consumer goes on with the next one. Before partitions are
revoked and on shutdown, the worker waits until everything handed over is
committed. Offsets are committed to PostgreSQL with the rows (see
``consumers.sink``) and mirrored to Kafka afterwards for lag tools.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from consumers.batch import Batch, DeadLetter, Source, source_of
from consumers.dlq import DeadLetterPublisher
from consumers.dlq_limit import DeadLetterLimit
from consumers.errors import ConfigurationError, FatalError, Interrupted, TransientError
from consumers.logs import log_committed
from consumers.metrics import NoMetrics
from consumers.settings import WorkerSettings
from consumers.sink import PostgresSink, WriteResult
from consumers.writer import BatchWriter, Job, Outcome
from consumers.table_specs import SPECS
from consumers.transcode import Transcoders
from producers import tables
from producers.codec import AvroCodec
from producers.errors import CodecError, InvalidRecordError, MalformedRecordError
from producers.models import validate_record

log = logging.getLogger(__name__)

#: librdkafka's errors for brokers it cannot reach: the worker is degraded until Kafka answers again.
_OUTAGE_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})
#: Seconds without another outage error after which Kafka counts as back even with no message to
#: prove it (an idle worker): librdkafka reports again at each failed reconnect (at most every 10 s).
KAFKA_OUTAGE_QUIET_S = 30.0

_ABSENT = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
    """Consumes ``<prefix>.<table>`` topics into PostgreSQL until stopped.

    `metrics`: a ``consumers.metrics.WorkerMetrics`` to update (at batch
    granularity, never per record) and to answer health probes from.
    """

    def __init__(
        self, settings: WorkerSettings, codec: AvroCodec | None = None, *, metrics: NoMetrics | None = None
    ) -> None:
        self.settings = settings
        self.stats = WorkerStats()
        self._metrics = metrics if metrics is not None else NoMetrics()
        self._metrics.bind(settings, self.stats)
        self._codec = codec or AvroCodec()
        self._stop = threading.Event()
        self._topics = {tables.topic_for(settings.topic_prefix, t): t for t in settings.tables}
        self._sink = PostgresSink(
            settings.database_url.get_secret_value(), settings.group_id, settings.worker_id, self.stats
        )
        self._dlq = DeadLetterPublisher(
            settings.producer_config(), tables.dlq_topic(settings.topic_prefix), settings.worker_id, self._stop
        )
        self._limit = DeadLetterLimit(settings.dead_letter_max_consecutive, settings.dead_letter_max_per_minute)
        # Set once the worker stops on an error or past its shutdown deadline: from then on
        # nothing more is written (a revoke during close must not flush).
        self._giving_up = False
        self._consumer: Consumer | None = None
        self._writer: BatchWriter | None = None
        self._batch = Batch()
        # Next offset per owned partition as stored in PostgreSQL once every batch handed
        # to the writer commits (None: nothing stored yet). Each batch's commit expects these.
        self._positions: dict[tuple[str, int], int | None] = {}
        self._linger_s = settings.linger_ms / 1000
        self._validate = settings.validate_records
        self._row_of = {t: itemgetter(*SPECS[t].column_names) for t in tables.TABLES}
        self._range_error = {t: SPECS[t].range_error for t in tables.TABLES}
        # Validated fact-table records of the current schema go straight to COPY tuples;
        # `--no-validate` keeps the general path (its checks are the database's).
        transcoders = Transcoders(self._codec) if self._validate else None
        self._transcode = {t: transcoders.for_table(t) for t in tables.TABLES} if transcoders else {}
        #: A replay's filter on decoded records: (table, fields) -> load it? None: load all.
        self._wanted: Any = None
        #: Why Kafka refused the consumer (credentials, TLS): fatal, raised by the consuming loop.
        self._refused: str | None = None
        #: The last_error of a Kafka outage in progress and when it was last reported (monotonic).
        self._outage: str | None = None
        self._outage_at = 0.0

    # -- lifecycle ----------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to finish the batch in hand, commit and return."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second one exits at once (main thread only).

        Exiting at once loses nothing: offsets are stored with the rows, so an
        uncommitted batch is simply consumed again by the next worker.
        """

        def handle(signum: int, _frame: Any) -> None:
            if self._stop.is_set():
                log.warning("second %s: exiting now without committing the batch in hand", signal.Signals(signum).name)
                logging.shutdown()
                os._exit(128 + signum)
            log.info("%s: finishing the batch in hand", signal.Signals(signum).name)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handle)

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Consume until ``stop()`` (or `idle_exit_s` without messages); return the stats.

        Raises FatalError (ConfigurationError, DeadLetterLimitError) when retrying cannot help.
        """
        self._writer = BatchWriter(self._write)
        consumer: Consumer | None = None
        self._metrics.started()
        try:
            self._prepare()
            consumer = Consumer({**self.settings.consumer_config(), "error_cb": self._on_kafka_error,
                                 "on_commit": self._on_commit})
            self._consumer = consumer
            self._start(consumer)
            self._loop(consumer, idle_exit_s)
            self._flush(self.settings.shutdown_timeout_s)
        except Interrupted as e:
            self._giving_up = True
            log.warning("stopped while %s; the uncommitted batch will be consumed again", e)
        except FatalError:
            # Commit what was handed over before the failure (bounded), nothing after it.
            self._batch = Batch()
            self._giving_up = True
            self._drain_quietly()
            raise
        except BaseException:
            self._giving_up = True
            raise
        finally:
            self._metrics.stopped()
            self._close(consumer)
        return self.stats

    def _prepare(self) -> None:
        """Before consuming: wrong password, missing database or tables fail now, not at the first batch."""
        self._retry(self._sink.check_schema)

    def _on_kafka_error(self, err: Any) -> None:
        """librdkafka's client-level errors, served by consume(); the rest it logs itself."""
        self._refused = self._refused or self.settings.kafka.refused(err) or self._denied(err)
        self._kafka_outage(err)

    def _on_commit(self, err: Any, _partitions: Any) -> None:
        """An offset mirror's result: one the broker took shows Kafka answers again."""
        if err is None and self._outage is not None:
            self._kafka_back()

    def _kafka_outage(self, err: Any) -> bool:
        """Whether `err` says the brokers cannot be reached; if so the worker is degraded until they can."""
        if err.code() not in _OUTAGE_CODES:
            return False
        if self._outage is None:
            log.warning("Kafka unreachable, librdkafka keeps retrying: %s", err.str(),
                        extra={"error_class": err.name()})
        self._outage = f"Kafka at {self.settings.kafka.describe()}: {err.str()}"
        self._outage_at = time.monotonic()
        self.stats.degraded = True
        self.stats.last_error = self._outage
        return True

    def _kafka_back(self) -> None:
        """Kafka answered (a message, a commit, or a quiet spell): clear the degraded state its outage set."""
        if self._outage is None:
            return
        if self.stats.last_error == self._outage:  # not since degraded by a failed database
            self.stats.degraded = False
            log.info("Kafka is reachable again")
        self._outage = None

    def _denied(self, err: Any, topic: str | None = None) -> str | None:
        """One line if the brokers' ACLs deny this worker its group, a topic or the cluster, else None."""
        return self.settings.kafka.denied(err, group=self.settings.group_id, topic=topic)

    def _start(self, consumer: Consumer) -> None:
        """Join the group; partitions come through the rebalance callbacks."""
        consumer.subscribe(
            list(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _finished(self) -> bool:
        """Whether there is nothing left to consume (a daemon never is)."""
        return False

    def _loop(self, consumer: Consumer, idle_exit_s: float | None) -> None:
        last_message = time.monotonic()
        while not self._stop.is_set():
            messages = consumer.consume(self.settings.poll_batch, timeout=min(0.2, self._linger_s or 0.2))
            if self._refused is not None:  # a wrong password or certificate: retrying cannot help
                raise ConfigurationError(self._refused)
            for msg in messages:
                self._accept(msg)
            if messages:
                last_message = time.monotonic()
            if self._batch.due(self.settings.max_batch_rows, self.settings.max_batch_bytes, self._linger_s):
                self._hand_over()
            self._handle(self._writer.outcomes())
            self._dlq.poll()
            if self._outage is not None and time.monotonic() - self._outage_at >= KAFKA_OUTAGE_QUIET_S:
                self._kafka_back()
            self._metrics.tick(consumer)
            idle = idle_exit_s is not None and not self._batch.next_offsets
            if idle and time.monotonic() - last_message >= idle_exit_s or self._finished():
                break

    def _close(self, consumer: Consumer | None) -> None:
        writer = self._writer
        try:
            if consumer is not None:
                consumer.close()  # revokes: the batch is empty (or given up)
        finally:
            self._consumer = None
            self._writer = None
            # Giving up: the shutdown deadline has been spent already, do not wait a second time.
            writer.close(0.0 if self._giving_up else self.settings.shutdown_timeout_s)
            self._dlq.close()
            self._sink.close()

    def _drain_quietly(self) -> None:
        try:
            self._drain(self.settings.shutdown_timeout_s)
        except Exception as e:  # already failing: the first error is the one to report
            log.warning("while stopping: %s", e)

    # -- rebalancing --------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain()  # the sink's connection is the writer's until it is idle
        stored = self._retry(lambda: self._sink.load_offsets((p.topic, p.partition) for p in partitions))
        for p in partitions:
            tp = (p.topic, p.partition)
            self._positions[tp] = stored.get(tp)
            p.offset = stored.get(tp, OFFSET_BEGINNING)
        offsets = {(p.topic, p.partition): stored.get((p.topic, p.partition)) for p in partitions}
        self._metrics.assigned(offsets)
        log.info(
            "assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions),
            extra={"offsets": {f"{t}[{p}]": o for (t, p), o in offsets.items()}},
        )
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self._giving_up:
            # Commit what we hold while we still own the partitions (bounded once stopping).
            self._flush(self.settings.shutdown_timeout_s if self._stop.is_set() else None)
        for p in partitions:
            self._positions.pop((p.topic, p.partition), None)
        self._metrics.revoked((p.topic, p.partition) for p in partitions)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: committing would be fenced anyway.
        log.warning("partitions lost; dropping the uncommitted batch")
        self._batch = Batch()
        self._drain()
        for p in partitions:
            self._positions.pop((p.topic, p.partition), None)
        self._metrics.revoked((p.topic, p.partition) for p in partitions)
        consumer.unassign()

    # -- per message --------------------------------------------------------
    def _accept(self, msg: Any) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            denied = self._denied(err, msg.topic())
            if denied is not None:  # an ACL: retrying cannot help
                raise ConfigurationError(denied)
            if not self._kafka_outage(err):
                log.warning("consumer error: %s", err)
            return
        if self._outage is not None:
            self._kafka_back()
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        value = msg.value()
        self.stats.consumed += 1
        if self.stats.first_message_at is None:
            self.stats.first_message_at = time.monotonic()
        self._batch.track(topic, partition, offset, len(value or b""))
        ts_type, ts = msg.timestamp()
        ts_ms = ts if ts_type else None
        table = self._topics[topic]
        transcode = self._transcode.get(table)
        if transcode is not None and value is not None and self._wanted is None:
            try:
                transcoded = transcode(value, ts_ms)
            except (CodecError, InvalidRecordError) as e:
                self._dead(DeadLetter(source_of(msg), table, type(e).__name__, str(e)))
                return
            if transcoded is not None:
                self._limit.good()
                self._batch.add_copy(table, transcoded[0], transcoded[1], msg)  # the message is its source
                return
        source = Source(topic, partition, offset, ts_ms, msg.key(), value, msg.headers())
        try:
            if value is None:
                raise MalformedRecordError("empty message (tombstone)")
            decoded = self._codec.decode(value)
            if decoded.table != table:
                raise MalformedRecordError(f"a {decoded.table} record on the {table} topic")
            fields = validate_record(table, decoded.record) if self._validate else decoded.record
        except (CodecError, InvalidRecordError) as e:
            self._dead(DeadLetter(source, table, type(e).__name__, str(e)))
            return
        if self._wanted is not None and not self._wanted(table, fields):
            return  # outside a replay's selection: its offset still counts as consumed
        if fields.get("real_timestamp", _ABSENT) is None and source.timestamp_ms is not None:
            # No event time sent: the time the producer sent the record is the closest
            # truth we have, closer than the database's NOW() at load time.
            try:
                fields["real_timestamp"] = _EPOCH + timedelta(milliseconds=source.timestamp_ms)
            except OverflowError:  # beyond datetime's years 1 to 9999: never a crash, a dead letter
                e = InvalidRecordError(table, "real_timestamp", None, f"not sent, and the Kafka timestamp "
                                       f"{source.timestamp_ms} ms is outside years 1 to 9999")
                self._dead(DeadLetter(source, table, type(e).__name__, str(e)))
                return
        row = self._row_of[table](fields)
        if not self._validate:
            out_of_range = self._range_error[table](row)
            if out_of_range is not None:
                self._dead(DeadLetter(source, table, "NumericValueOutOfRange", out_of_range))
                return
        self._limit.good()
        self._batch.add(table, row, source)

    def _dead(self, letter: DeadLetter) -> None:
        """Hold a dead letter for the batch, unless the dead-letter limit is passed (then raise)."""
        self._limit.dead(f"{letter.error_class}: {letter.message}")
        self._batch.add_dead(letter)

    # -- flushing -----------------------------------------------------------
    def _hand_over(self) -> None:
        """Give the batch to the writer thread and start a new one."""
        batch = self._batch
        if not batch.next_offsets or self._writer is None:
            return
        expected = {tp: self._positions.get(tp) for tp in batch.next_offsets}
        self._batch = Batch()
        self._metrics.handed_over(batch)
        self._writer.submit(Job(batch, expected), self._stop)
        for tp, next_offset in batch.next_offsets.items():
            if tp in self._positions:
                self._positions[tp] = next_offset

    def _flush(self, timeout: float | None = None) -> None:
        """Hand over the batch in hand and wait until everything is committed."""
        self._hand_over()
        self._drain(timeout)

    def _drain(self, timeout: float | None = None) -> None:
        """Wait for the writer (at most `timeout`) and handle what it finished."""
        if self._writer is None:
            return
        self._handle(self._writer.drain(timeout))
        if self._writer.busy:
            self._giving_up = True
            raise Interrupted(f"the batch being written was not committed within {timeout}s")

    def _write(self, job: Job) -> WriteResult:
        """Runs in the writer thread: transient failures are retried there."""
        try:
            return self._retry(lambda: self._write_once(job))
        finally:
            self._metrics.finished()

    def _write_once(self, job: Job) -> WriteResult:
        started = time.monotonic()
        result = self._sink.write(job.batch, job.expected, self._dlq.publish)
        self._metrics.committed(job.batch, result, time.monotonic() - started)
        return result

    def _handle(self, outcomes: list[Outcome]) -> None:
        fenced = []
        for outcome in outcomes:
            if isinstance(outcome.error, Interrupted):
                # Stopping during an outage: this batch and those after it are given up.
                self._giving_up = True
                raise outcome.error
            if outcome.error is not None:
                raise outcome.error
            if outcome.fenced is not None:
                fenced.append(outcome)
                continue
            assert outcome.result is not None
            self._record(outcome.result)
            self._mirror_offsets(outcome.job.batch.next_offsets)
        if fenced:
            self.stats.fenced += len(fenced)
            log.warning("batch fenced, re-seeking: %s", fenced[0].fenced)
            # Batches after a fenced one expected its offsets: drop them all and start over.
            self._batch = Batch()
            self._drain()
            self._reseek(list(self._positions))

    def _record(self, result: WriteResult) -> None:
        s = self.stats
        s.flushes += 1
        s.last_commit_at = time.monotonic()
        for t in tables.TABLES:
            s.inserted[t] += result.inserted[t]
            s.duplicates[t] += result.duplicates[t]
        s.conflicts += result.conflicts
        s.dead_lettered += len(result.dead)
        for d in result.dead[result.held_dead:]:
            # Rows PostgreSQL rejected: already committed, but they count toward the rate.
            self._limit.dead(f"{d.error_class}: {d.message}", consecutive=False)
        log_committed(log, result)

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
        """Run `action`, retrying TransientError with capped exponential backoff and full jitter.

        The backoff wakes on ``stop()``: a failure after a stop raises Interrupted
        instead of waiting for the service (the work is consumed again later).
        ConfigurationError and other errors are not retried.
        """
        delay = self.settings.retry_initial_s
        while True:
            try:
                value = action()
            except TransientError as e:
                self.stats.retries += 1
                self.stats.degraded = True
                self.stats.last_error = str(e)
                if self._stop.is_set():
                    raise Interrupted(f"waiting on a service that failed ({e})") from e
                log.warning("transient failure, retrying in up to %.1fs: %s", delay, e,
                            extra={"error_class": type(e).__name__, "counts": {"retries": self.stats.retries}})
                if self._stop.wait(random.uniform(0, delay)):
                    raise Interrupted(f"waiting on a service that failed ({e})") from e
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            if self.stats.degraded:
                log.info("recovered")
                self.stats.degraded = False
            return value
