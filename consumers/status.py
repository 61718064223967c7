"""Rows per table and consumer lag per partition."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from consumers._deps import psycopg
from consumers.kafka_clients import with_logging
from consumers.table_specs import RUN_COLUMN
from producers import tables

RUN_KEY_COLUMN = {tables.SIMULATION_RUNS: "run_id", **RUN_COLUMN}
#: How long each metadata or watermark request may take.
KAFKA_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """How far the stored offset of one partition is behind its end."""

    topic: str
    partition: int
    stored_offset: int | None
    high_watermark: int
    lag: int


def row_counts(database_url: str, run_id: uuid.UUID | None = None) -> dict[str, int]:
    """Rows per table, optionally only those of one run."""
    counts = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in tables.TABLES:
            if run_id is None:
                sql, params = f"SELECT count(*) FROM {table}", ()
            else:
                sql, params = f"SELECT count(*) FROM {table} WHERE {RUN_KEY_COLUMN[table]} = %s", (run_id,)
            counts[table] = conn.execute(sql, params).fetchone()[0]
    return counts


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """What a worker last reported with a committed batch."""

    worker_id: str
    consumer_group: str
    last_commit_at: Any
    seconds_since_commit: float
    batches: int
    rows_loaded: int
    dead_lettered: int
    retries: int
    last_error: str | None


def worker_health(database_url: str) -> list[WorkerHealth]:
    """Every worker that ever committed, most recent first."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT worker_id, consumer_group, last_commit_at, extract(epoch FROM NOW() - last_commit_at)::float8, "
            "batches, rows_loaded, dead_lettered, retries, last_error FROM ingest_workers ORDER BY last_commit_at DESC"
        ).fetchall()
    return [WorkerHealth(*r) for r in rows]


def consumer_lag(
    bootstrap_servers: str,
    database_url: str,
    prefix: str,
    group: str,
    extra: dict[str, Any] | None = None,
    *,
    timeout_s: float = KAFKA_TIMEOUT_S,
) -> list[PartitionLag]:
    """Lag of `group` per partition, from the offsets stored in PostgreSQL (the truth)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = {
            (t, p): o
            for t, p, o in conn.execute(
                "SELECT topic, kafka_partition, next_offset FROM ingest_offsets WHERE consumer_group = %s",
                (group,),
            )
        }
    consumer = Consumer(
        with_logging({"bootstrap.servers": bootstrap_servers, "group.id": f"{group}-status", **(extra or {})})
    )
    try:
        meta = consumer.list_topics(timeout=timeout_s).topics
        out = []
        for table in tables.TABLES:
            topic = tables.topic_for(prefix, table)
            if topic not in meta:
                continue
            for p in sorted(meta[topic].partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                done = stored.get((topic, p))
                lag = high - max(done if done is not None else low, low)
                out.append(PartitionLag(topic, p, done, high, lag))
        return out
    finally:
        consumer.close()
