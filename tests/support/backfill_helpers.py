"""Helpers of the backfill and export tests: the CLI, NDJSON files, messages in Kafka, rows compared by SQL."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from consumers import status
from producers import tables
from producers.columns import COLUMNS
from support.pipeline import WAIT_TIMEOUT_S, drain, worker_settings
from support.reconcile import end_offsets


def cli_env(services: Any, database_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap}
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def society_ingest(services: Any, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess:
    """``society-ingest ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], env=cli_env(services, database_url),
                          capture_output=True, text=True, timeout=WAIT_TIMEOUT_S * 2)


def consumed_all(services: Any, database_url: str, prefix: str, group: str) -> bool:
    """Has `group` committed every message of `prefix`'s topics (offsets stored with the rows)?"""
    lags = status.consumer_lag(services.bootstrap, database_url, prefix, group)
    return bool(lags) and sum(p.lag for p in lags) == 0


def load_everything(services: Any, database_url: str, prefix: str) -> Any:
    """Run a worker until it committed every message of `prefix`; its stats."""
    settings = worker_settings(services.bootstrap, database_url, prefix)
    return drain(settings, lambda: consumed_all(services, database_url, prefix, settings.group_id),
                 f"every message of {prefix} consumed")


def write_ndjson(path: Path, objs: list[Any], compress: bool = False) -> Path:
    """One JSON object per line (a str item is written as the line itself: for bad lines)."""
    data = "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def messages(bootstrap: str, prefix: str) -> dict[str, int]:
    """Messages in each table topic of `prefix` (they start empty: the end offsets)."""
    counts = dict.fromkeys(tables.TABLES, 0)
    for (topic, _), end in end_offsets(bootstrap, prefix).items():
        counts[topic.rpartition(".")[2]] += end
    return counts


def rows_of_run_differ(url_a: str, url_b: str, run_id: Any) -> dict[str, tuple[int, int, int]]:
    """Per table: (rows of the run in A, rows only in A, rows only in B), by SQL EXCEPT ALL both ways.

    B's rows are copied (binary COPY) into a temporary table in A, so PostgreSQL compares every
    column with its own equality (jsonb, text[], REAL, timestamptz), duplicates counted.
    """
    out = {}
    with psycopg.connect(url_a, autocommit=True) as a, psycopg.connect(url_b, autocommit=True) as b:
        for table in tables.TABLES:
            cols = ", ".join(c.name for c in COLUMNS[table])
            mine = f"SELECT {cols} FROM {table} WHERE {tables.DECLARATIONS[table].run_column} = %s"
            a.execute(f"CREATE TEMP TABLE other_{table} AS SELECT {cols} FROM {table} WITH NO DATA")
            with b.cursor().copy(f"COPY ({mine}) TO STDOUT (FORMAT BINARY)", (run_id,)) as source, \
                    a.cursor().copy(f"COPY other_{table} FROM STDIN (FORMAT BINARY)") as target:
                for chunk in source:
                    target.write(chunk)
            only_a = f"SELECT count(*) FROM ({mine} EXCEPT ALL SELECT * FROM other_{table}) d"
            only_b = f"SELECT count(*) FROM (SELECT * FROM other_{table} EXCEPT ALL {mine}) d"
            out[table] = (a.execute(f"SELECT count(*) FROM ({mine}) d", (run_id,)).fetchone()[0],
                          a.execute(only_a, (run_id,)).fetchone()[0], a.execute(only_b, (run_id,)).fetchone()[0])
    return out


def message_keys(bootstrap: str, prefix: str, table: str) -> list[str]:
    """The keys of every message in `table`'s topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = tables.topic_for(prefix, table)
    ends = {p: e for (t, p), e in end_offsets(bootstrap, prefix).items() if t == topic and e > 0}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-keys", "enable.auto.commit": False})
    keys: list[str] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while len(keys) < sum(ends.values()):
            msg = consumer.poll(WAIT_TIMEOUT_S)
            assert msg is not None, f"timed out reading {topic}"
            if not msg.error():
                keys.append(msg.key().decode())
    finally:
        consumer.close()
    return keys
