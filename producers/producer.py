"""SocietyProducer: the embedded client that turns simulation facts into Kafka records.

Every ``record_*`` call validates, encodes and enqueues one record, then
returns: it never waits for the broker. The local queue is bounded; when it
stays full for ``max_block_seconds`` the call raises QueueFullError. Delivery
failures are counted and reported by ``flush()``/``close()``, never dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer

from producers import _sequences, ids, tables
from producers._json import json_text
from producers.codec import AvroCodec
from producers.errors import DeliveryError, InvalidRecordError, KafkaAuthenticationError, ProducerError, QueueFullError
from producers.kafka_config import KafkaClientSettings
from producers.models import validate_record
from producers.settings import ProducerSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Set around a call by ``without_waiting``: a full local queue then raises QueueFullError at
#: once instead of blocking the thread (the asyncio handler waits with ``await`` instead).
_NO_WAIT: ContextVar[bool] = ContextVar("society_ingest_no_wait", default=False)


def without_waiting(call: Callable[[], T]) -> T:
    """Run `call` (a SocietyProducer call) so that a full local queue raises QueueFullError at once."""
    token = _NO_WAIT.set(True)
    try:
        return call()
    finally:
        _NO_WAIT.reset(token)

#: How many delivery failures are kept for the report (all are counted).
MAX_KEPT_FAILURES = 1000
#: How long a producer dropped without close() (or alive at interpreter exit) tries to deliver
#: what it still holds: long enough for a reachable broker, short enough not to hang an exit.
ABANDONED_FLUSH_SECONDS = 5.0
#: librdkafka's largest per-record overhead (RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD: length, attributes,
#: timestamp and offset deltas, key and value lengths, header count), counted in message.max.bytes.
RECORD_FRAMING_BYTES = 36
#: flush() waits in slices this long, to give up early once Kafka refused the credentials.
_FLUSH_SLICE_S = 0.5
#: Stands in for a memory or event id until the record validated and its number is taken.
_UNNUMBERED = ids.NAMESPACE


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """A record Kafka did not accept, with the broker's reason."""

    topic: str
    key: str | None
    error: str


@dataclass(slots=True)
class ProducerStats:
    """Counters since the producer was created."""

    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(tables.TABLES, 0))
    delivered: int = 0
    failed: int = 0
    queue_full_waits: int = 0
    #: Records (and librdkafka requests) still waiting for the broker.
    in_queue: int = 0

    @property
    def total_sent(self) -> int:
        """Records accepted, all tables together."""
        return sum(self.sent.values())


class _Deliveries:
    """Delivery counters and failures, shared by a producer, librdkafka's callbacks and its finalizer."""

    __slots__ = ("lock", "stats", "failures", "reported", "kafka", "refused", "offsets")

    def __init__(self, kafka: KafkaClientSettings) -> None:
        self.lock = threading.Lock()
        self.stats = ProducerStats()
        self.failures: deque[DeliveryFailure] = deque(maxlen=MAX_KEPT_FAILURES)
        self.reported = 0  # failures already raised in a DeliveryError
        self.kafka = kafka
        #: Why the brokers refused this client (credentials, TLS), once they did.
        self.refused: str | None = None
        #: (topic, partition) -> highest offset delivered there (read-your-writes: ``SocietyProducer.sync``).
        self.offsets: dict[tuple[str, int], int] = {}

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's client-level errors (served by poll/flush): remember a refusal."""
        refusal = self.kafka.refused(err)
        if refusal is not None:
            self.refused = refusal

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """librdkafka's delivery report (served by poll/flush)."""
        with self.lock:
            if err is None:
                self.stats.delivered += 1
                tp = (msg.topic(), msg.partition())
                if msg.offset() > self.offsets.get(tp, -1):
                    self.offsets[tp] = msg.offset()
                return
            self.stats.failed += 1
            key = msg.key()
            self.failures.append(DeliveryFailure(msg.topic(), key.decode("utf-8", "replace") if key else None, err.str()))

    def take_unreported(self) -> tuple[int, list[DeliveryFailure]]:
        """How many failures were not reported yet, and those of them still kept; they count as reported now."""
        with self.lock:
            new = self.stats.failed - self.reported
            self.reported = self.stats.failed
            return new, list(self.failures)[-new:] if new else []


def _flush_abandoned(producer: Producer, deliveries: _Deliveries) -> None:
    """Finalizer of a SocietyProducer dropped (or left at exit) without close(): deliver, then say so."""
    stats = deliveries.stats
    with deliveries.lock:
        held = stats.total_sent - stats.delivered - stats.failed
        delivered_before = stats.delivered
    if held:
        producer.flush(ABANDONED_FLUSH_SECONDS)
    unreported, _ = deliveries.take_unreported()
    if held or unreported:
        delivered = stats.delivered - delivered_before
        log.warning(
            "SocietyProducer dropped without close(): flushed %d undelivered record(s) for up to %ss; "
            "%d delivered, %d undelivered (failed or still queued); %d delivery failure(s) never reported",
            held,
            ABANDONED_FLUSH_SECONDS,
            delivered,
            held - delivered,
            unreported,
        )


#: The column naming each table's run (read per record: looked up once).
_RUN_COLUMN = {t: d.run_column for t, d in tables.DECLARATIONS.items()}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _text_bytes(value: Any) -> int:
    """UTF-8 size of a text field or a list of texts (0 for other fields): to name the biggest."""
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    return 0


def _json_field(value: Any, table: str, field: str) -> str | None:
    """A jsonb field: text is taken as JSON text, other values are converted (see ``producers._json``)."""
    if value is None or isinstance(value, str):
        return value
    return json_text(value, table, field)


class SocietyProducer:
    """Records a simulation run's facts into one Kafka topic per table.

    Use as a context manager, or call ``close()``; thread-safe. Ids that the
    simulation does not give (memories, events) are derived deterministically
    from run, agent (an event's primary agent, or none), step and a sequence
    number counted per (agent, step) in the order records are enqueued, in
    any order of steps (late asyncio tasks may record for an earlier step).
    Counters live for the ``sequence_steps`` most recently used steps; see
    ``restart_step`` for re-running a step.

    `metrics_registry`: a prometheus-client ``CollectorRegistry`` that gets a
    collector reading ``stats()`` at scrape time (``producers._metrics``:
    ``society_ingest_producer_*``); nothing is counted twice, nothing per record.
    """

    def __init__(
        self, settings: ProducerSettings, codec: AvroCodec | None = None, *, metrics_registry: Any = None
    ) -> None:
        self.settings = settings
        self._codec = codec or AvroCodec()
        # Delivery reports go to a separate object, not to self: librdkafka's queued records
        # then hold no reference to this producer, so a producer dropped without close() is
        # collected and its finalizer can deliver what it still holds.
        self._deliveries = deliveries = _Deliveries(settings.kafka)
        self._producer = Producer(
            {**settings.librdkafka(), "on_delivery": deliveries.on_delivery, "error_cb": deliveries.on_error}
        )
        self._topics = {t: tables.topic_for(settings.topic_prefix, t) for t in tables.TABLES}
        self._lock = deliveries.lock
        self._stats = deliveries.stats
        self._failures = deliveries.failures
        self._run: dict[str, Any] | None = None
        self._run_key = ""  # str(run_id), formatted once: keys and ids use it per record
        #: Records of the current run enqueued per table, sent with its final status (record_counts).
        self._run_counts: dict[str, int] = dict.fromkeys(tables.TABLES, 0)
        self._sequences = _sequences.StepSequences(settings.sequence_steps)
        self._max_payload = settings.max_message_bytes - RECORD_FRAMING_BYTES  # value + key
        self._closed = False
        self._finalizer = weakref.finalize(self, _flush_abandoned, self._producer, deliveries)
        if metrics_registry is not None:
            from producers import _metrics  # prometheus-client only for those who ask for metrics

            _metrics.register(metrics_registry, self.stats)

    # -- runs ---------------------------------------------------------------
    @property
    def run_id(self) -> uuid.UUID | None:
        """The current run's id, or None before ``start_run``."""
        return None if self._run is None else self._run["run_id"]

    def start_run(
        self,
        config_snapshot: Any = None,
        *,
        run_id: uuid.UUID | None = None,
        notes: str | None = None,
        start_time: datetime | None = None,
    ) -> uuid.UUID:
        """Start a run (status ``running``) and return its id.

        `config_snapshot` is JSON text (a str) or a JSON-representable value,
        converted as listed in ``producers._json`` (enums, numpy, datetimes,
        dataclasses...); anything else raises InvalidRecordError naming the path.
        """
        now = _now()
        run = {
            "run_id": run_id or uuid.uuid4(),
            "config_snapshot": _json_field(config_snapshot, tables.SIMULATION_RUNS, "config_snapshot"),
            "start_time": start_time or now,
            "end_time": None,
            "status": "running",
            "notes": notes,
            "updated_at": now,
        }
        fields = self._send(tables.SIMULATION_RUNS, run)
        self._run = fields
        self._run_key = str(fields["run_id"])
        with self._lock:
            self._run_counts = dict.fromkeys(tables.TABLES, 0)
        self._sequences.clear()
        return fields["run_id"]

    def end_run(self, status: str = "completed", *, end_time: datetime | None = None, notes: str | None = None) -> None:
        """Record the end of the current run with its final status."""
        run = dict(self._require_run())
        now = _now()
        with self._lock:
            counts = {**self._run_counts, tables.SIMULATION_RUNS: 1}  # one row, however many states
        run.update(status=status, end_time=end_time or now, updated_at=now,
                   record_counts=json.dumps(counts, separators=(",", ":")))
        if notes is not None:
            run["notes"] = notes
        self._run = self._send(tables.SIMULATION_RUNS, run)

    def restart_step(self, step: int) -> None:
        """Forget `step`'s id counters, to re-run the step in this process with the same ids.

        Memory and event ids are UUIDv5 of run, agent, step and the number of
        records that agent already recorded at that step, counted only for
        records enqueued (a call that raised takes no number). A re-run of a
        step with the same calls in the same order therefore yields the same
        ids, whether it happens in a fresh producer given the same ``run_id``
        or here after ``restart_step(step)``; the workers then count the
        re-sent records as duplicates. Counters are kept for the
        ``sequence_steps`` most recently used steps (ProducerSettings); going
        back to an older step without ``restart_step`` logs a warning and
        restarts its numbering at 0 too.
        """
        if type(step) is not int:
            raise InvalidRecordError("restart_step", "step", step, "must be an int")
        self._sequences.restart(step)

    # -- records ------------------------------------------------------------
    def record_agent(
        self,
        agent_id: str,
        *,
        persona: str | None = None,
        agent_type: str | None = None,
        step: int | None = None,
    ) -> None:
        """Record an agent created in the current run."""
        run_id = self._require_run()["run_id"]
        record = {
            "creation_run_id": run_id,
            "agent_id_str": agent_id,
            "persona": persona,
            "initial_agent_type": agent_type,
            "creation_step": step,
            "updated_at": _now(),
        }
        self._send(tables.AGENTS, record)

    def record_memory(
        self,
        agent_id: str,
        content: str,
        step: int,
        *,
        importance: float | None = None,
        tags: list[str] | None = None,
        related_agent_id: str | None = None,
        timestamp: datetime | None = None,
        memory_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Record one memory of `agent_id`; return its id."""
        record = self._child(
            step, timestamp,
            memory_id=_UNNUMBERED if memory_id is None else memory_id,
            agent_id_str=agent_id,
            content=content,
            importance=importance,
            tags=tags,
            related_agent_id=related_agent_id,
        )
        if memory_id is not None:
            self._send(tables.AGENT_MEMORIES, record)
            return memory_id
        return self._send_numbered(tables.AGENT_MEMORIES, record, _sequences.MEMORIES)

    def record_market_transaction(
        self,
        transaction_id: str,
        step: int,
        *,
        market_id: str,
        resource_type: str,
        buyer_id: str,
        seller_id: str,
        quantity: float,
        price_per_unit: float,
        total_cost: float,
        buy_order_id: str | None = None,
        sell_order_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Record one completed trade."""
        self._send(tables.MARKET_TRANSACTIONS, self._child(
            step, timestamp,
            transaction_sim_id=transaction_id,
            market_id=market_id,
            resource_type=resource_type,
            buyer_agent_id=buyer_id,
            seller_agent_id=seller_id,
            quantity=quantity,
            price_per_unit=price_per_unit,
            total_cost=total_cost,
            buy_order_id=buy_order_id,
            sell_order_id=sell_order_id,
        ))

    def record_bank_transaction(
        self,
        transaction_id: str,
        step: int,
        *,
        account_id: str,
        agent_id: str,
        transaction_type: str,
        amount: float,
        balance_after: float,
        description: str | None = None,
        counterparty_id: str | None = None,
        reference_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Record one banking transaction."""
        self._send(tables.BANKING_TRANSACTIONS, self._child(
            step, timestamp,
            transaction_sim_id=transaction_id,
            account_id=account_id,
            agent_id_str=agent_id,
            transaction_type=transaction_type,
            amount=amount,
            balance_after=balance_after,
            description=description,
            counterparty_id=counterparty_id,
            reference_id=reference_id,
        ))

    def record_event(
        self,
        event_type: str,
        step: int,
        *,
        agent_id_primary: str | None = None,
        agent_id_secondary: str | None = None,
        details: Any = None,
        description: str | None = None,
        timestamp: datetime | None = None,
        event_uid: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Record one simulation event; return its idempotency id.

        `details` is JSON text (a str) or a JSON-representable value, converted
        like ``start_run``'s `config_snapshot`.
        """
        record = self._child(
            step, timestamp,
            event_uid=_UNNUMBERED if event_uid is None else event_uid,
            event_type=event_type,
            agent_id_primary=agent_id_primary,
            agent_id_secondary=agent_id_secondary,
            details=_json_field(details, tables.SIMULATION_EVENTS, "details"),
            description=description,
        )
        if event_uid is not None:
            self._send(tables.SIMULATION_EVENTS, record)
            return event_uid
        return self._send_numbered(tables.SIMULATION_EVENTS, record, _sequences.EVENTS)

    def send(self, table: str, record: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Validate and send a complete record of `table` (used by backfills and tests).

        Without `key`, the message is keyed like the ``record_*`` calls key it
        (``producers.tables.message_key``).
        """
        if not isinstance(table, str) or table not in self._topics:
            raise InvalidRecordError("send", "table", table, f"unknown table; expected one of {', '.join(tables.TABLES)}")
        if not isinstance(record, Mapping):
            raise InvalidRecordError(table, "record", record, "must be a mapping of field names to values")
        if key is not None and not isinstance(key, str):
            raise InvalidRecordError(table, "key", key, "must be a str or None")
        return self._send(table, dict(record), key)

    # -- delivery -----------------------------------------------------------
    def poll(self, timeout: float = 0) -> None:
        """Serve delivery reports (called for you after every record)."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> ProducerStats:
        """Wait until every queued record is delivered or failed.

        Returns the stats; raises DeliveryError when records failed since the
        last flush or are still queued after `timeout`, KafkaAuthenticationError
        at once when records are queued and Kafka refused the credentials or
        the TLS handshake (waiting cannot deliver them).
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            pending = self._producer.flush(max(0.0, min(_FLUSH_SLICE_S, deadline - time.monotonic())))
            if not pending or time.monotonic() >= deadline:
                break
            if self._deliveries.refused is not None:
                raise KafkaAuthenticationError(f"{self._deliveries.refused}; {pending} record(s) not delivered")
        stats = self.stats()
        new_failures, kept = self._deliveries.take_unreported()
        if pending or new_failures:
            raise DeliveryError(
                # The time waited, not `timeout`: failed records (message.timeout.ms) end the wait sooner.
                f"{new_failures} record(s) failed delivery and {pending} still queued "
                f"after {time.monotonic() - started:.1f}s"
                + (f"; first failure: {kept[0].topic} key={kept[0].key}: {kept[0].error}" if kept else ""),
                kept,
                pending,
            )
        return stats

    def sync(self, timeout: float = 30.0) -> dict[tuple[str, int], int]:
        """Flush (raising like ``flush``), then return where everything delivered so far ends.

        Per (topic, partition) this producer delivered to: the offset after the
        last record delivered there. Once the workers' stored offsets reach these,
        every record recorded before this call is loaded: pass the result to
        ``producers.reads.MemoryReader.wait_until_landed`` (read-your-writes).
        """
        self.flush(timeout)
        with self._lock:
            return {tp: offset + 1 for tp, offset in self._deliveries.offsets.items()}

    def close(self, timeout: float = 30.0) -> ProducerStats:
        """Flush and stop accepting records (raises DeliveryError like ``flush``).

        Idempotent: a second call returns the stats at once and does not raise
        again for what the first one reported. A producer dropped without
        ``close()`` (or left at interpreter exit) still flushes for up to
        ABANDONED_FLUSH_SECONDS and logs a warning with what it delivered.
        """
        if self._closed:
            return self.stats()
        self._closed = True
        self._finalizer.detach()
        return self.flush(timeout)

    def abort(self) -> int:
        """Close without waiting: drop what is still queued and return how many records that was."""
        self._closed = True
        self._finalizer.detach()
        dropped = len(self._producer)
        self._producer.purge()
        self._producer.flush(0)
        return dropped

    def stats(self) -> ProducerStats:
        """A snapshot of the counters."""
        with self._lock:
            snap = ProducerStats(
                sent=dict(self._stats.sent),
                delivered=self._stats.delivered,
                failed=self._stats.failed,
                queue_full_waits=self._stats.queue_full_waits,
            )
        snap.in_queue = len(self._producer)
        return snap

    def __enter__(self) -> SocietyProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Do not hide the exception in flight behind a delivery report.
        try:
            self.close()
        except (DeliveryError, KafkaAuthenticationError) as e:
            log.error("while handling %s: %s", exc_type.__name__, e)

    # -- internals ----------------------------------------------------------
    def _require_run(self) -> dict[str, Any]:
        if self._run is None:
            raise ProducerError("no run started: call start_run() first")
        return self._run

    def _count_queue_full_wait(self) -> None:
        with self._lock:
            self._stats.queue_full_waits += 1

    def _child(self, step: int, timestamp: datetime | None, **fields: Any) -> dict[str, Any]:
        """A record of the current run at `step` (event time: `timestamp`, else now)."""
        return {
            "simulation_run_id": self._require_run()["run_id"],
            "step_timestamp": step,
            "real_timestamp": timestamp or _now(),
            **fields,
        }

    def _key(self, table: str, fields: dict[str, Any]) -> str:
        # The current run's key is formatted once (str(UUID) per record costs).
        run = self._run_key if self._run is not None and table != tables.SIMULATION_RUNS else None
        return tables.message_key(table, fields, run)

    def _send(self, table: str, record: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        if self._closed:
            raise ProducerError("producer is closed")
        fields = validate_record(table, record)
        self._enqueue(table, fields, key if key is not None else self._key(table, fields))
        return fields

    def _send_numbered(self, table: str, record: dict[str, Any], kind: int) -> uuid.UUID:
        """Send a memory or event whose id is derived from the next number of its (subject, step).

        The number is taken only after the record validated, and given back
        when encoding or enqueueing fails, so a failed call leaves no gap.
        """
        if self._closed:
            raise ProducerError("producer is closed")
        fields = validate_record(table, record)
        step = fields["step_timestamp"]
        if kind == _sequences.MEMORIES:
            subject = fields["agent_id_str"]
            numbers, seq = self._sequences.take(kind, subject, step)
            uid = fields["memory_id"] = ids.memory_id(self._run_key, subject, step, seq)
        else:
            subject = fields["agent_id_primary"] or ""
            numbers, seq = self._sequences.take(kind, subject, step)
            uid = fields["event_uid"] = ids.event_uid(self._run_key, step, subject, seq)
        try:
            self._enqueue(table, fields, self._key(table, fields))
        except BaseException:
            self._sequences.give_back(numbers, subject, seq)
            raise
        return uid

    def _enqueue(self, table: str, fields: dict[str, Any], key: str | None) -> None:
        value = self._codec.encode(table, fields)
        # A key is at most 4 UTF-8 bytes a character: measure exactly only near the limit.
        if len(value) + (len(key) << 2 if key else 0) > self._max_payload:
            self._check_size(table, fields, key, value)
        self._produce(self._topics[table], key, value)
        with self._lock:
            self._stats.sent[table] += 1
            if self._run is not None and fields.get(_RUN_COLUMN[table]) == self._run["run_id"]:
                self._run_counts[table] += 1

    def _check_size(self, table: str, fields: dict[str, Any], key: str | None, value: bytes) -> None:
        """Raise InvalidRecordError when the record would exceed librdkafka's message.max.bytes."""
        size = len(value) + (len(key.encode("utf-8")) if key else 0) + RECORD_FRAMING_BYTES
        limit = self.settings.max_message_bytes
        if size <= limit:
            return
        biggest, biggest_size = max(((name, _text_bytes(v)) for name, v in fields.items()), key=lambda f: f[1])
        raise InvalidRecordError(
            table,
            "<record>",
            fields[biggest],
            f"encoded record is {size:,} bytes, over the {limit:,}-byte message limit (max_message_bytes); "
            f"largest field: {biggest} ({biggest_size:,} bytes)",
        )

    def _produce(self, topic: str, key: str | None, value: bytes) -> None:
        deadline = None
        while True:
            try:
                self._producer.produce(topic, value, key)
                break
            except BufferError:
                if _NO_WAIT.get():
                    self._producer.poll(0)  # serve delivery reports: that is what frees the queue
                    raise QueueFullError(f"local queue full ({len(self._producer)} records waiting for the broker)") from None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.settings.max_block_seconds
                    self._count_queue_full_wait()
                elif now >= deadline:
                    raise QueueFullError(
                        f"local queue full for {self.settings.max_block_seconds}s "
                        f"({len(self._producer)} records waiting for the broker)"
                    ) from None
                self._producer.poll(0.05)
            except KafkaException as e:
                raise ProducerError(f"cannot enqueue record for {topic}: {e}") from e
        self._producer.poll(0)
