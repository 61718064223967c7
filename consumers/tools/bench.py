"""Throughput of the pipeline against raw SQL loading of the same rows, measured in one run.

The machines are shared and noisy, so every figure that matters is a ratio
against a baseline measured seconds apart on the same rows and table:

- producer: ``record_memory`` calls vs. raw ``Producer.produce`` of the same
  pre-encoded bytes;
- worker: Kafka → PostgreSQL (first message consumed to last commit) vs.
  binary COPY straight into ``agent_memories``, COPY through a staging table
  with ``INSERT … ON CONFLICT DO NOTHING``, and psycopg ``executemany`` of
  ``INSERT … ON CONFLICT`` (the common alternatives).

Each measurement loads its own copy of the rows (fresh memory ids) into the
real table with its indexes and foreign keys, under its own run, after a
CHECKPOINT. An untimed warm-up load comes first; the whole set is repeated and
each figure is the median over the repeats (ratios: the median of the
per-repeat ratios).
"""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import Producer

from consumers._deps import psycopg
from consumers.settings import WorkerSettings
from consumers.table_specs import SPECS
from consumers.topics import admin_client, create_topics
from consumers.worker import Worker
from producers import ProducerSettings, SocietyProducer, tables
from producers.codec import AvroCodec
from producers.kafka_config import KafkaClientSettings, as_client_settings

AGENTS = 2500
WORDS = ("market", "bread", "river", "loan", "friend", "harvest", "tools", "price", "family", "trade")
SPEC = SPECS[tables.AGENT_MEMORIES]
COLUMNS = ", ".join(SPEC.column_names)
#: Rows loaded untimed before the first measurement.
WARM_UP_ROWS = 20_000

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    """Rows per second of each measurement, one sample per repeat."""

    rows: int
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, rate: float) -> None:
        """Record one sample of `name` (rows per second)."""
        self.samples.setdefault(name, []).append(rate)

    def rate(self, name: str) -> float:
        """Median rate of `name` over the repeats."""
        return statistics.median(self.samples[name])

    def ratio(self, name: str, baseline: str) -> float:
        """Median over the repeats of `name`'s rate divided by `baseline`'s in the same repeat."""
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[baseline], strict=True))


def _memories(run_id: uuid.UUID, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 100))]
        out.append({
            "memory_id": uuid.uuid4(), "agent_id_str": f"agent_{i % AGENTS}", "simulation_run_id": run_id,
            "step_timestamp": i // AGENTS, "real_timestamp": now, "content": " ".join(words)[:600],
            "importance": round(rng.random(), 3), "tags": rng.sample(WORDS, rng.randint(0, 3)),
            "related_agent_id": None,
        })
    return out


def _prepare_parents(conn: Any, run_id: uuid.UUID) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO simulation_runs (run_id, status) VALUES (%s, 'bench')", (run_id,))
        conn.execute(
            "INSERT INTO agents (creation_run_id, agent_id_str) SELECT %s, 'agent_' || g FROM generate_series(0, %s) g",
            (run_id, AGENTS - 1),
        )


def _fresh(rows: list[dict[str, Any]], run_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return [tuple({**r, "memory_id": uuid.uuid4(), "simulation_run_id": run_id}[c] for c in SPEC.column_names)
            for r in rows]


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _settle(conn: Any) -> None:
    """Checkpoint, so no measurement pays for dirty pages another one left behind."""
    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        log.info("no CHECKPOINT privilege: measurements may pay for each other's writes")


def _copy_into(conn: Any, table: str, data: list[tuple[Any, ...]]) -> None:
    with conn.cursor().copy(f"COPY {table} ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(SPEC.copy_types)
        for row in data:
            cp.write_row(row)


def _warm_up(conn: Any, rows: list[dict[str, Any]]) -> None:
    """Load some rows untimed: the first load into a fresh database pays for catalogs,
    relation extension and cold caches, which would make the first baseline look slow."""
    run_id = uuid.uuid4()
    _prepare_parents(conn, run_id)
    with conn.transaction():
        _copy_into(conn, SPEC.name, _fresh(rows, run_id))


def _sql_baselines(conn: Any, rows: list[dict[str, Any]], result: BenchResult) -> None:
    def direct(data: list[tuple[Any, ...]]) -> None:
        with conn.transaction():
            _copy_into(conn, SPEC.name, data)

    def staging(data: list[tuple[Any, ...]]) -> None:
        with conn.transaction():
            conn.execute(f"CREATE TEMP TABLE bench_stage (LIKE {SPEC.name}) ON COMMIT DROP")
            _copy_into(conn, "bench_stage", data)
            conn.execute(f"INSERT INTO {SPEC.name} ({COLUMNS}) SELECT {COLUMNS} FROM bench_stage ON CONFLICT DO NOTHING")

    def executemany(data: list[tuple[Any, ...]]) -> None:
        marks = ", ".join(["%s"] * len(SPEC.column_names))
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {SPEC.name} ({COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING", data)

    for name, fn in (("copy", direct), ("copy_staging_on_conflict", staging), ("executemany_on_conflict", executemany)):
        run_id = uuid.uuid4()
        _prepare_parents(conn, run_id)
        data = _fresh(rows, run_id)
        _settle(conn)
        result.add(name, len(data) / _timed(lambda: fn(data)))


def _producer_rates(kafka: KafkaClientSettings, prefix: str, codec: AvroCodec, sample: list[dict[str, Any]],
                    encoded: list[bytes], result: BenchResult) -> uuid.UUID:
    """record_memory vs raw produce of the same pre-encoded bytes; returns the run recorded."""
    raw = Producer(ProducerSettings(kafka=kafka).librdkafka())
    start = time.perf_counter()
    for value in encoded:
        raw.produce(tables.dlq_topic(prefix), value)  # a topic no worker reads
        raw.poll(0)
    result.add("raw_produce", len(encoded) / (time.perf_counter() - start))
    raw.flush(120)
    producer = SocietyProducer(ProducerSettings(kafka=kafka, topic_prefix=prefix), codec)
    run_id = producer.start_run({"bench": len(sample)})
    start = time.perf_counter()
    for r in sample:
        producer.record_memory(r["agent_id_str"], r["content"], r["step_timestamp"], importance=r["importance"],
                               tags=r["tags"], timestamp=r["real_timestamp"])
    result.add("record_memory", len(sample) / (time.perf_counter() - start))
    producer.end_run()
    producer.close(timeout=120)
    return run_id


def _pipeline_rate(kafka: KafkaClientSettings, database_url: str, prefix: str, codec: AvroCodec, conn: Any,
                   run_id: uuid.UUID, rows: int) -> float:
    """Consume the run just recorded, from the first message consumed to the last commit.

    Every repeat's worker joins the same group, so it starts where the previous one stopped.
    """
    worker = Worker(WorkerSettings(kafka=kafka, database_url=database_url,
                                   topic_prefix=prefix, group_id=f"{prefix}-bench"), codec)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    done = 0
    while time.monotonic() < deadline and thread.is_alive():
        done = conn.execute("SELECT count(*) FROM agent_memories WHERE simulation_run_id = %s", (run_id,)).fetchone()[0]
        if done == rows:
            break
        time.sleep(0.2)
    worker.stop()
    thread.join()
    s = worker.stats
    if s.first_message_at is None or s.last_commit_at is None or done != rows:
        raise RuntimeError(f"the worker loaded {done} of {rows} rows")
    return rows / (s.last_commit_at - s.first_message_at)


def run_bench(kafka: KafkaClientSettings | str, database_url: str, rows: int, repeats: int = 3,
              seed: int = 11) -> BenchResult:
    """Measure everything on `rows` agent memories, `repeats` times (see module doc)."""
    kafka = as_client_settings(kafka)
    result = BenchResult(rows)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    create_topics(admin_client(kafka), prefix, kafka, partitions=6)
    codec = AvroCodec()
    sample = _memories(uuid.uuid4(), rows, seed)
    encoded = [codec.encode(tables.AGENT_MEMORIES, r) for r in sample]
    with psycopg.connect(database_url, autocommit=True) as conn:
        _warm_up(conn, sample[:WARM_UP_ROWS])
        for _ in range(repeats):
            _sql_baselines(conn, sample, result)
            run_id = _producer_rates(kafka, prefix, codec, sample, encoded, result)
            _settle(conn)
            result.add("pipeline", _pipeline_rate(kafka, database_url, prefix, codec, conn, run_id, rows))
    return result
