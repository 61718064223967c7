"""The rows a topic holds, read back and decoded the way the worker decodes them.

The COPY baseline and the SQL alternatives load exactly these rows, so every
measurement writes the same column values into the same tables.
"""

from __future__ import annotations

from operator import itemgetter
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from consumers.kafka_clients import client_config
from consumers.table_specs import SPECS
from consumers.topics import ADMIN_TIMEOUT_S
from producers import tables
from producers.codec import AvroCodec
from producers.kafka_config import KafkaClientSettings
from producers.models import validate_record

Rows = dict[str, list[tuple[Any, ...]]]


def reader(kafka: KafkaClientSettings) -> Consumer:
    """A consumer that commits nothing, for reading topics back and asking for offsets."""
    return Consumer(client_config(kafka, {"group.id": "society-bench-reader", "enable.auto.commit": False,
                                          "enable.partition.eof": False}))


def end_offsets(kafka: KafkaClientSettings, prefix: str) -> dict[tuple[str, int], int]:
    """(topic, partition) → high watermark, for every table topic of `prefix`."""
    consumer = reader(kafka)
    try:
        out = {}
        for table in tables.TABLES:
            topic = tables.topic_for(prefix, table)
            meta = consumer.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics[topic]
            for p in meta.partitions:
                out[(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=ADMIN_TIMEOUT_S)[1]
        return out
    finally:
        consumer.close()


def messages(kafka: KafkaClientSettings, prefix: str) -> Iterator[Message]:
    """Every message of `prefix`'s table topics, up to their end offsets at the call."""
    left = {tp: end for tp, end in end_offsets(kafka, prefix).items() if end > 0}
    consumer = reader(kafka)
    try:
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in left])
        while left:
            for msg in consumer.consume(10_000, timeout=1.0):
                if msg.error():
                    raise RuntimeError(f"reading back {msg.topic()}: {msg.error()}")
                tp = (msg.topic(), msg.partition())
                if tp not in left:
                    continue
                yield msg
                if msg.offset() + 1 >= left[tp]:
                    del left[tp]
    finally:
        consumer.close()


def read_rows(kafka: KafkaClientSettings, prefix: str) -> Rows:
    """Every record of `prefix`'s table topics as table rows; of several records with one
    key (a run's start and end) the last one read, as loading them in order would leave."""
    codec = AvroCodec()
    rows: Rows = {t: [] for t in tables.TABLES}
    upserts: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {t: {} for t in tables.TABLES if SPECS[t].upsert}
    row_of = {t: itemgetter(*SPECS[t].column_names) for t in tables.TABLES}
    key_of = {t: itemgetter(*(SPECS[t].column_names.index(k) for k in SPECS[t].key)) for t in upserts}
    for msg in messages(kafka, prefix):
        decoded = codec.decode(msg.value())
        row = row_of[decoded.table](validate_record(decoded.table, decoded.record))
        if decoded.table in upserts:
            upserts[decoded.table][key_of[decoded.table](row)] = row
        else:
            rows[decoded.table].append(row)
    for table, latest in upserts.items():
        rows[table] = list(latest.values())
    return rows


def row_counts(rows: Rows) -> dict[str, int]:
    """Rows per table."""
    return {t: len(r) for t, r in rows.items()}


def sample(rows: Rows, n: int) -> Rows:
    """About `n` rows: every parent (runs, agents) and the same share of each child table."""
    parents = (tables.SIMULATION_RUNS, tables.AGENTS)
    children = sum(len(r) for t, r in rows.items() if t not in parents)
    share = min(1.0, max(0, n - sum(len(rows[t]) for t in parents)) / max(1, children))
    return {t: r if t in parents else r[:round(len(r) * share)] for t, r in rows.items()}
