"""Rows per table, consumer lag per partition, and whether a run has fully landed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from consumers import dead_letters
from consumers._deps import psycopg
from consumers.kafka_clients import client_config
from consumers.table_specs import RUN_COLUMN
from producers import tables
from producers.codec import AvroCodec
from producers.kafka_config import KafkaClientSettings

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
    kafka: KafkaClientSettings | str,
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
    consumer = Consumer(client_config(kafka, {"group.id": f"{group}-status", **(extra or {})}))
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


#: Answers of ``run_completeness``.
COMPLETE, NOT_YET, INCOMPLETE = "complete", "not yet", "incomplete"


@dataclass(frozen=True, slots=True)
class RunCompleteness:
    """Has a run fully landed? Per table: recorded by its producer, loaded, dead-lettered, missing."""

    run_id: uuid.UUID
    status: str | None
    recorded: dict[str, int] | None
    loaded: dict[str, int]
    dead_lettered: dict[str, int]
    #: Records in the group's partitions not committed yet (all runs: Kafka cannot tell them apart).
    lag: int
    state: str

    @property
    def missing(self) -> int:
        """Recorded records not in their tables (dead-lettered ones included)."""
        if self.recorded is None:
            return 0
        return sum(max(0, n - self.loaded.get(t, 0)) for t, n in self.recorded.items())


def recent_runs(database_url: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs: id, status, times and what their producers recorded (None: not ended yet)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT run_id, status, start_time, end_time, record_counts FROM simulation_runs "
            "ORDER BY start_time DESC NULLS LAST LIMIT %s",
            (limit,),
        ).fetchall()
    return [dict(zip(("run_id", "status", "start_time", "end_time", "recorded"), r)) for r in rows]


def run_completeness(
    kafka: KafkaClientSettings | str, database_url: str, prefix: str, group: str, run_id: uuid.UUID,
    *, timeout_s: float = KAFKA_TIMEOUT_S,
) -> RunCompleteness:
    """Compare what the run's producer recorded (sent with its final status) with what landed.

    complete: every recorded record is in its table. not yet: the run has not
    ended, or the group still has records to consume. incomplete: nothing is
    left to consume and records are missing (dead-lettered, or lost upstream).
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT status, record_counts FROM simulation_runs WHERE run_id = %s", (run_id,)
        ).fetchone()
    status, recorded = row if row else (None, None)
    loaded = row_counts(database_url, run_id)
    dead = dict.fromkeys(tables.TABLES, 0)
    codec = AvroCodec()
    for letter in dead_letters.read_dead_letters(kafka, prefix, timeout_s=timeout_s):
        record = dead_letters.decode_for_display(letter, codec)
        table = letter.table
        if isinstance(record, dict) and table in RUN_KEY_COLUMN and record.get(RUN_KEY_COLUMN[table]) == run_id:
            dead[table] += 1
    lag = sum(p.lag for p in consumer_lag(kafka, database_url, prefix, group, timeout_s=timeout_s))
    if recorded is not None and all(loaded.get(t, 0) >= n for t, n in recorded.items()):
        state = COMPLETE
    elif recorded is None or lag > 0:
        state = NOT_YET
    else:
        state = INCOMPLETE
    return RunCompleteness(run_id, status, recorded, loaded, dead, lag, state)
