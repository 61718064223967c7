"""Reading and redriving the dead-letter topic (``society-ingest dlq``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from consumers import dlq
from consumers._deps import psycopg
from consumers.errors import ConfigurationError, TransientError
from consumers.kafka_clients import client_config
from producers import tables
from producers.codec import AvroCodec
from producers.errors import CodecError
from producers.kafka_config import KafkaClientSettings

READ_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """One message of the dead-letter topic."""

    partition: int
    offset: int
    headers: dict[str, str]
    key: bytes | None
    value: bytes | None

    @property
    def origin(self) -> tuple[str, str, str]:
        """(topic, partition, offset) of the original record: its identity."""
        h = self.headers
        return (h.get(dlq.H_TOPIC, ""), h.get(dlq.H_PARTITION, ""), h.get(dlq.H_OFFSET, ""))

    @property
    def by_reference(self) -> bool:
        """True for a letter of a record too large to dead-letter whole (it has no value)."""
        return self.headers.get(dlq.H_BY_REFERENCE) == "true"

    @property
    def table(self) -> str:
        return self.headers.get(dlq.H_TABLE, "")

    @property
    def error_class(self) -> str:
        return self.headers.get(dlq.H_ERROR_CLASS, "")

    @property
    def message(self) -> str:
        return self.headers.get(dlq.H_ERROR_MESSAGE, "")


def read_dead_letters(
    kafka: KafkaClientSettings | str, prefix: str, extra: dict[str, Any] | None = None, *,
    timeout_s: float = READ_TIMEOUT_S,
) -> list[StoredDeadLetter]:
    """Every dead letter currently in ``<prefix>.dlq``, once per original record.

    Each request to the broker (metadata, watermarks, a poll) may take `timeout_s`.
    """
    topic = tables.dlq_topic(prefix)
    consumer = Consumer(client_config(kafka, {
        "group.id": f"{prefix}-dlq-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        **(extra or {}),
    }))
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if meta.error is not None:
            return []
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[StoredDeadLetter] = []
        seen: set[tuple[str, str, str]] = set()
        remaining = set(ends)
        while remaining:
            msg = consumer.poll(timeout_s)
            if msg is None:
                raise TransientError(f"timed out reading {topic}")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition())
                    continue
                raise TransientError(f"reading {topic}: {msg.error()}")
            if msg.offset() + 1 >= ends[msg.partition()]:
                remaining.discard(msg.partition())
            d = StoredDeadLetter(msg.partition(), msg.offset(), dlq.parse_headers(msg.headers()), msg.key(), msg.value())
            # A worker that crashes after publishing but before committing publishes again.
            if d.origin not in seen:
                seen.add(d.origin)
                out.append(d)
        return out
    finally:
        consumer.close()


def summarize(letters: list[StoredDeadLetter]) -> list[tuple[str, str, int]]:
    """(table, error class, count), most frequent first."""
    counts = Counter((d.table, d.error_class) for d in letters)
    return [(t, e, n) for (t, e), n in counts.most_common()]


def decode_for_display(letter: StoredDeadLetter, codec: AvroCodec) -> dict[str, Any] | str:
    """The decoded record, or a short description of bytes that do not decode."""
    if letter.by_reference:
        h = letter.headers
        return (f"<too large to dead-letter whole: {h.get(dlq.H_SIZE)} bytes, sha256 {h.get(dlq.H_SHA256)}, "
                f"first bytes {h.get(dlq.H_HEAD, '')[:32]}…; the record is in its original topic at that offset>")
    if letter.value is None:
        return "<no value>"
    try:
        return codec.decode(letter.value).record
    except CodecError as e:
        return f"<{len(letter.value)} undecodable bytes: {letter.value[:24].hex()}…> ({e})"


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """What a redrive sent (or would send, with --dry-run)."""

    selected: int
    already_redriven: int
    sent: int
    #: Letters sent by reference: their bytes are only in the original topic, so they are not redriven.
    by_reference: int = 0


def _require_redrive_privileges(database_url: str, dry_run: bool) -> None:
    """Raise ConfigurationError unless this role may read (and, unless `dry_run`, add to) ``dlq_redrives``.

    Checked before anything is sent: a role that could send but not record
    what it sent would send the same letters again on every redrive.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        user, can_select, can_insert = conn.execute(
            "SELECT current_user, has_table_privilege(current_user, 'dlq_redrives', 'SELECT'), "
            "has_table_privilege(current_user, 'dlq_redrives', 'INSERT')"
        ).fetchone()
    missing = [p for p, ok in (("SELECT", can_select), ("INSERT", can_insert or dry_run)) if not ok]
    if missing:
        raise ConfigurationError(
            f"role {user} may not {' or '.join(missing)} dlq_redrives, where redrive records what it sent "
            f"(else it would send the same letters again): nothing sent; run it as a loader "
            f"(GRANT society_loader TO {user})"
        )


def redrive(
    kafka: KafkaClientSettings | str,
    database_url: str,
    prefix: str,
    *,
    table: str | None = None,
    error_class: str | None = None,
    dry_run: bool = False,
    timeout_s: float = READ_TIMEOUT_S,
) -> RedriveResult:
    """Send dead letters back to their original topics, each at most once.

    Sent letters are remembered in ``dlq_redrives`` after the broker
    acknowledged them; a crash in between only re-sends records whose loading
    is idempotent anyway.
    """
    dlq_topic = tables.dlq_topic(prefix)
    _require_redrive_privileges(database_url, dry_run)
    letters = [
        d for d in read_dead_letters(kafka, prefix, timeout_s=timeout_s)
        if (table is None or d.table == table) and (error_class is None or d.error_class == error_class)
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = {
            (p, o)
            for p, o in conn.execute(
                "SELECT dlq_partition, dlq_offset FROM dlq_redrives WHERE dlq_topic = %s", (dlq_topic,)
            )
        }
        by_reference = sum(d.by_reference for d in letters)
        todo = [d for d in letters if (d.partition, d.offset) not in done and d.origin[0] and not d.by_reference]
        if dry_run or not todo:
            return RedriveResult(len(letters), len(letters) - len(todo) - by_reference, 0, by_reference)
        producer = Producer(client_config(kafka, {"enable.idempotence": True, "acks": "all"}))
        failed: list[str] = []
        for d in todo:
            producer.produce(
                d.origin[0], d.value, d.key,
                on_delivery=lambda err, _m: failed.append(err.str()) if err else None,
            )
            producer.poll(0)
        pending = producer.flush(READ_TIMEOUT_S)
        if pending or failed:
            raise TransientError(f"redrive: {len(failed)} failed, {pending} pending; nothing marked as redriven")
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO dlq_redrives (dlq_topic, dlq_partition, dlq_offset, target_topic) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(dlq_topic, d.partition, d.offset, d.origin[0]) for d in todo],
                )
    return RedriveResult(len(letters), len(letters) - len(todo) - by_reference, len(todo), by_reference)
