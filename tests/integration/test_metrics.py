"""Metrics, probes and JSON logs of real workers against real Kafka and PostgreSQL.

- ``society-ingest consume --metrics-port 0 --log-format json``: after a run
  with dead letters, a duplicate and a conflict, what /metrics says equals
  what PostgreSQL holds (rows per table, the worker's heartbeat row, the
  conflicts table); every log line is JSON with the stable keys, and the
  database password, which the worker has in its environment, is in none.
- A worker in a thread: /readyz is 503 before it starts, while it retries a
  database that does not answer in time (a table locked by someone else), and
  while a batch waits for its commit longer than the ready window; 200 once
  it owns partitions and has committed.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg.conninfo import conninfo_to_dict

from consumers.logs import FIELDS
from consumers.metrics import WorkerMetrics
from consumers.probes import MetricsServer
from producers import tables
from support.db import count, fetch
from support.pipeline import WorkerThread, add_memories, producer, wait_for, worker_settings
from support.reconcile import all_committed
from support.scrape import by_label, probe, scrape, value

pytestmark = pytest.mark.integration

MEMORIES, EVENTS, TRADES, BANK = 300, 200, 40, 40
GARBAGE = {"agent_memories": 7, "simulation_events": 4}
FACT_TABLES = ("agent_memories", "simulation_events", "market_transactions", "banking_transactions")
REQUIRED = ("time", "level", "logger", "message")


def produce_run(bootstrap: str, prefix: str) -> tuple[uuid.UUID, list[uuid.UUID], dict[str, int]]:
    """A run of every table, with garbage bytes on two topics; returns run id, memory ids, records sent per table."""
    p = producer(bootstrap, prefix)
    run_id = p.start_run({"agents": 10})
    for a in range(10):
        p.record_agent(f"agent_{a}", persona="p", step=0)
    ids = [p.record_memory(f"agent_{i % 10}", f"memory {i}", i // 10) for i in range(MEMORIES)]
    for i in range(EVENTS):
        p.record_event("AGENT_MOVED", i // 10, agent_id_primary=f"agent_{i % 10}", details={"i": i})
    for i in range(TRADES):
        p.record_market_transaction(f"mt_{i}", i, market_id="m", resource_type="food", buyer_id="agent_1",
                                    seller_id="agent_2", quantity=1, price_per_unit=2.0, total_cost=2.0)
    for i in range(BANK):
        p.record_bank_transaction(f"bt_{i}", i, account_id="acc_1", agent_id="agent_1", transaction_type="deposit",
                                  amount=1.0, balance_after=float(i))
    p.end_run()
    sent = dict(p.close().sent)
    raw = Producer({"bootstrap.servers": bootstrap})
    for table, n in GARBAGE.items():
        for _ in range(n):
            raw.produce(tables.topic_for(prefix, table), os.urandom(48))
    assert raw.flush(30) == 0
    return run_id, ids, sent


def resend_duplicate_and_conflict(bootstrap: str, prefix: str, run_id: uuid.UUID, ids: list[uuid.UUID]) -> None:
    """The first memory again, unchanged (a duplicate), and the second with other content (a conflict)."""
    p = producer(bootstrap, prefix)
    now = datetime.now(timezone.utc)
    for memory_id, agent, content in ((ids[0], "agent_0", "memory 0"), (ids[1], "agent_1", "rewritten")):
        p.send("agent_memories", {
            "memory_id": memory_id, "agent_id_str": agent, "simulation_run_id": run_id, "step_timestamp": 0,
            "real_timestamp": now, "content": content, "importance": None, "tags": None, "related_agent_id": None,
        })
    p.close()


def metrics_url(log_text: str) -> str | None:
    for line in log_text.splitlines():
        m = re.search(r"on (http://127\.0\.0\.1:\d+)$", json.loads(line)["message"]) if line.startswith("{") else None
        if m:
            return m.group(1)
    return None


def test_metrics_over_http_equal_postgres_after_a_run_with_dead_letters(services, database_url, topic_prefix, spawn):
    password = conninfo_to_dict(database_url).get("password")
    assert password, "the test needs a database password to look for"
    group = f"{topic_prefix}-g"
    w = spawn(database_url, topic_prefix, group, "--metrics-port", "0", "--log-format", "json", "--linger-ms", "200")
    url = wait_for(lambda: w.check_alive() or metrics_url(w.log_tail(100_000)), "the metrics URL in the log")
    assert probe(url, "/healthz")[0] == 200

    run_id, ids, sent = produce_run(services.bootstrap, topic_prefix)
    wait_for(lambda: w.check_alive() or all_committed(database_url, services.bootstrap, topic_prefix, group),
             "the run committed")
    resend_duplicate_and_conflict(services.bootstrap, topic_prefix, run_id, ids)
    sent["agent_memories"] += 2
    wait_for(lambda: w.check_alive() or all_committed(database_url, services.bootstrap, topic_prefix, group),
             "the resent memories committed")
    # The writer's counters land right after COMMIT; the lag follows within its refresh interval.
    consumed_total = sum(sent.values()) + sum(GARBAGE.values())

    def settled():
        s = scrape(url)
        lags = [v for (name, _), v in s.items() if name == "society_ingest_consumer_lag"]
        done = value(s, "society_ingest_batch_rows_sum") == consumed_total
        return s if done and lags and not any(lags) else None

    s = wait_for(settled, "metrics to settle (everything counted, no lag)")

    consumed = by_label(s, "society_ingest_records_consumed_total", "table")
    loaded = by_label(s, "society_ingest_rows_loaded_total", "table")
    duplicates = by_label(s, "society_ingest_duplicates_total", "table")
    conflicts = by_label(s, "society_ingest_conflicts_total", "table")
    dead = by_label(s, "society_ingest_dead_letters_total", "table")
    for table in tables.TABLES:
        assert consumed[table] == sent[table] + GARBAGE.get(table, 0), table
        # Every record consumed ended somewhere, exactly once.
        assert consumed[table] == loaded[table] + duplicates[table] + conflicts[table] + dead.get(table, 0), table
    for table in FACT_TABLES:
        assert loaded[table] == count(database_url, table), table
    assert dead == {t: float(n) for t, n in GARBAGE.items()}
    assert duplicates["agent_memories"] == 1 and conflicts["agent_memories"] == 1
    assert fetch(database_url, "SELECT table_name, count(*) FROM ingest_conflicts GROUP BY 1") == [("agent_memories", 1)]
    (rows_loaded, dead_lettered, batches, retries), = fetch(
        database_url, "SELECT rows_loaded, dead_lettered, batches, retries FROM ingest_workers")
    assert sum(loaded.values()) == rows_loaded
    assert sum(dead.values()) == dead_lettered == sum(GARBAGE.values())
    assert value(s, "society_ingest_batch_rows_count") == value(s, "society_ingest_commit_seconds_count") == batches
    assert value(s, "society_ingest_retries_total") == retries == 0
    assert value(s, "society_ingest_degraded") == 0
    assert value(s, "society_ingest_assigned_partitions") == 3 * len(tables.TABLES)
    for table in FACT_TABLES:
        assert value(s, "society_ingest_end_to_end_seconds_count", table=table) >= 1
    assert value(s, "process_cpu_seconds_total") > 0
    status, body = probe(url, "/readyz")
    assert (status, body) == (200, {"ready": True, "partitions": 3 * len(tables.TABLES)})

    stats = w.terminate()
    assert stats["dead_lettered"] == sum(GARBAGE.values())
    log_text = w.log.read_text()
    assert password not in log_text
    lines = [json.loads(line) for line in log_text.splitlines()]
    assert lines and all(set(REQUIRED) <= set(line) and set(line) <= {*REQUIRED, *FIELDS} for line in lines)
    assert len({line.get("worker_id") for line in lines} - {None}) == 1
    assert all("worker_id" in line for line in lines)
    assigned = [line for line in lines if line["message"].startswith("assigned ")]
    assert assigned and all(isinstance(line["offsets"], dict) for line in assigned)
    # Dead letters: one line each, at most 10 a batch, then one line counting the rest.
    letters = [line for line in lines if line["message"].startswith("dead-lettered ") and "offset" in line]
    summed = [line["counts"] for line in lines if line["message"].startswith("dead-lettered ") and "counts" in line]
    assert len(letters) + sum(n for c in summed for n in c.values()) == sum(GARBAGE.values())
    assert all({"table", "topic", "partition", "offset", "error_class"} <= set(line) for line in letters)


def test_readyz_follows_the_worker(services, database_url, topic_prefix):
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    metrics = WorkerMetrics(ready_window_s=1.0, lag_refresh_s=0.5)
    with MetricsServer(metrics) as server:
        url = server.url
        assert probe(url, "/healthz") == (200, {"alive": True, "state": "starting"})
        assert probe(url, "/readyz") == (503, {"ready": False, "reason": "worker starting"})

        # Someone holds agent_memories: the worker's start-up check times out and is retried.
        locker = psycopg.connect(database_url)
        locker.execute("LOCK TABLE agent_memories IN ACCESS EXCLUSIVE MODE")
        with WorkerThread(settings, metrics=metrics) as w:
            status, body = wait_for(lambda: (r := probe(url, "/readyz"))[1]["reason"].startswith("degraded") and r,
                                    "/readyz to report the retries")
            assert status == 503 and w.worker.stats.degraded
            assert probe(url, "/healthz")[0] == 200  # retrying is alive: a restart would not help
            locker.rollback()

            p = producer(services.bootstrap, topic_prefix)
            p.start_run()
            add_memories(p, 0, 50)
            wait_for(lambda: count(database_url, "agent_memories") == 50, "the first memories")
            wait_for(lambda: probe(url, "/readyz")[0] == 200, "ready after the first commits")

            # Now a batch cannot commit (the table is locked again): not ready once it waited 1 s.
            locker.execute("LOCK TABLE agent_memories IN ACCESS EXCLUSIVE MODE")
            add_memories(p, 50, 10)
            status, body = wait_for(lambda: (r := probe(url, "/readyz"))[0] == 503 and r, "a stale batch")
            assert "for its commit" in body["reason"], body
            assert not w.worker.stats.degraded  # waiting on a lock is not a failure
            locker.rollback()
            wait_for(lambda: count(database_url, "agent_memories") == 60, "the held batch")
            wait_for(lambda: probe(url, "/readyz")[0] == 200, "ready again")
            p.close()
        locker.close()
        status, body = probe(url, "/healthz")
        assert status == 503 and body["state"] == "stopped"
        assert probe(url, "/readyz")[1]["reason"] == "worker stopped"
