"""WorkerMetrics and its HTTP endpoints without services: the worker's hooks driven by hand."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pytest

from consumers.batch import Batch, DeadLetter, Source
from consumers.errors import MetricsServerError
from consumers.metrics import WorkerMetrics
from consumers.probes import MetricsServer
from consumers.settings import WorkerSettings
from consumers.sink import WriteResult
from consumers.worker import WorkerStats
from support.pipeline import wait_for
from support.scrape import get, parse

PREFIX = "unit"
MEMORIES = f"{PREFIX}.agent_memories"
EVENTS = f"{PREFIX}.simulation_events"


def settings(**overrides: Any) -> WorkerSettings:
    base: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:1", "database_url": "postgresql://u:pw@h/db",
                            "topic_prefix": PREFIX, "worker_id": "host:7"}
    return WorkerSettings(**{**base, **overrides})


def bound(**kw: Any) -> tuple[WorkerMetrics, WorkerStats]:
    m, stats = WorkerMetrics(**kw), WorkerStats()
    m.bind(settings(), stats)
    return m, stats


def samples(m: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse(m.scrape()[0].decode())


def value(m: WorkerMetrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def batch_of(memories: int, events: int, dead: int, ts_ms: int) -> Batch:
    b = Batch()
    offset = 0
    for topic, table, n in ((MEMORIES, "agent_memories", memories), (EVENTS, "simulation_events", events)):
        for _ in range(n):
            b.track(topic, 0, offset, 10)
            b.add(table, (offset,), Source(topic, 0, offset, ts_ms, None, b"x"))
            offset += 1
    for _ in range(dead):
        b.track(MEMORIES, 1, offset, 3)
        b.add_dead(DeadLetter(Source(MEMORIES, 1, offset, ts_ms, None, b"bad"), "agent_memories", "CodecError", "x"))
        offset += 1
    return b


def test_counts_per_table_after_a_committed_batch() -> None:
    m, _ = bound()
    ts_ms = int(time.time() * 1000) - 2_000  # sent two seconds ago
    b = batch_of(memories=5, events=3, dead=2, ts_ms=ts_ms)
    m.handed_over(b)
    result = WriteResult(dead=list(b.dead), held_dead=2)
    result.inserted.update(agent_memories=3, simulation_events=3)
    result.duplicates["agent_memories"] = 1
    result.conflicts = 1
    result.table_conflicts["agent_memories"] = 1
    m.committed(b, result, 0.25)
    m.finished()
    assert value(m, "society_ingest_records_consumed_total", table="agent_memories") == 7
    assert value(m, "society_ingest_records_consumed_total", table="simulation_events") == 3
    assert value(m, "society_ingest_records_consumed_total", table="agents") == 0  # present from the start
    assert value(m, "society_ingest_rows_loaded_total", table="agent_memories") == 3
    assert value(m, "society_ingest_duplicates_total", table="agent_memories") == 1
    assert value(m, "society_ingest_conflicts_total", table="agent_memories") == 1
    assert value(m, "society_ingest_conflicts_total", table="simulation_events") == 0
    assert value(m, "society_ingest_dead_letters_total", table="agent_memories", error_class="CodecError") == 2
    assert value(m, "society_ingest_batch_rows_count") == 1 and value(m, "society_ingest_batch_rows_sum") == 10
    assert value(m, "society_ingest_commit_seconds_sum") == 0.25
    assert value(m, "society_ingest_batch_latency_seconds_count") == 1
    # One end-to-end sample per table with rows, about two seconds old.
    assert value(m, "society_ingest_end_to_end_seconds_count", table="agent_memories") == 1
    assert 2.0 <= value(m, "society_ingest_end_to_end_seconds_sum", table="agent_memories") < 60
    assert ("society_ingest_end_to_end_seconds_count", (("table", "agents"),)) not in samples(m)
    assert value(m, "society_ingest_last_commit_timestamp_seconds") == pytest.approx(time.time(), abs=60)
    info = value(m, "society_ingest_worker_info", worker_id="host:7", group="society-ingest",
                 topic_prefix=PREFIX, version=metadata.version("society-ingest"))
    assert info == 1


def test_worker_stats_are_read_at_scrape_time() -> None:
    m, stats = bound()
    assert value(m, "society_ingest_retries_total") == 0 and value(m, "society_ingest_degraded") == 0
    stats.retries, stats.fenced, stats.degraded = 4, 1, True
    assert value(m, "society_ingest_retries_total") == 4
    assert value(m, "society_ingest_fenced_batches_total") == 1
    assert value(m, "society_ingest_degraded") == 1


def test_two_workers_in_one_process_keep_their_own_registries() -> None:
    a, _ = bound()
    b, _ = bound()
    a.handed_over(batch_of(memories=2, events=0, dead=0, ts_ms=0))
    assert value(a, "society_ingest_records_consumed_total", table="agent_memories") == 2
    assert value(b, "society_ingest_records_consumed_total", table="agent_memories") == 0
    names = {name for name, _ in samples(a)}
    assert {n for n in names if not n.startswith(("process_", "python_"))} == {
        n for n in names if n.startswith("society_ingest_")}
    assert "process_cpu_seconds_total" in names and "python_info" in names


class FakeConsumer:
    """Cached watermarks as librdkafka hands them out (-1001 before the first fetch)."""

    def __init__(self, watermarks: dict[tuple[str, int], tuple[int, int]]) -> None:
        self.watermarks = watermarks

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        assert cached, "the lag must never cost a broker request"
        return self.watermarks.get((tp.topic, tp.partition), (-1001, -1001))


def test_lag_per_partition_from_cached_watermarks_and_committed_offsets() -> None:
    m, _ = bound(lag_refresh_s=0)
    consumer = FakeConsumer({(MEMORIES, 0): (0, 100), (MEMORIES, 1): (10, 50)})
    m.assigned({(MEMORIES, 0): 40, (MEMORIES, 1): None, (EVENTS, 0): None})
    m.tick(consumer)
    assert value(m, "society_ingest_consumer_lag", table="agent_memories", topic=MEMORIES, partition="0") == 60
    assert value(m, "society_ingest_consumer_lag", table="agent_memories", topic=MEMORIES, partition="1") == 40
    assert ("society_ingest_consumer_lag", (("partition", "0"), ("table", "simulation_events"), ("topic", EVENTS))) \
        not in samples(m)  # nothing fetched yet: unknown, not zero
    assert value(m, "society_ingest_assigned_partitions") == 3
    b = Batch()
    b.track(MEMORIES, 0, 99, 1)
    m.committed(b, WriteResult(), 0.01)
    m.tick(consumer)
    assert value(m, "society_ingest_consumer_lag", table="agent_memories", topic=MEMORIES, partition="0") == 0
    m.revoked([(MEMORIES, 0), (EVENTS, 0)])
    remaining = [k for k in samples(m) if k[0] == "society_ingest_consumer_lag"]
    assert remaining == [("society_ingest_consumer_lag", (("partition", "1"), ("table", "agent_memories"),
                                                          ("topic", MEMORIES)))]
    assert value(m, "society_ingest_assigned_partitions") == 1


def test_lag_is_refreshed_at_most_every_interval() -> None:
    m, _ = bound(lag_refresh_s=3600)
    consumer = FakeConsumer({(MEMORIES, 0): (0, 10)})
    m.assigned({(MEMORIES, 0): 0})
    m.tick(consumer)  # the first pass after an assignment measures
    consumer.watermarks[(MEMORIES, 0)] = (0, 20)
    m.tick(consumer)
    assert value(m, "society_ingest_consumer_lag", table="agent_memories", topic=MEMORIES, partition="0") == 10


def run_in_thread(m: WorkerMetrics) -> tuple[threading.Event, threading.Thread]:
    """What the worker does around its loop: started() in its thread, stopped() at the end."""
    stop, running = threading.Event(), threading.Event()

    def loop() -> None:
        m.started()
        running.set()
        stop.wait()
        m.stopped()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    running.wait(10)
    return stop, t


def test_liveness_and_readiness_follow_the_worker() -> None:
    m, stats = bound(ready_window_s=3600)
    assert m.liveness()[0] and not m.readiness()[0]
    assert m.readiness()[1] == {"ready": False, "reason": "worker starting"}
    stop, t = run_in_thread(m)
    assert m.readiness()[1] == {"ready": False, "reason": "no partitions assigned"}
    m.assigned({(MEMORIES, 0): None})
    assert m.readiness() == (True, {"ready": True, "partitions": 1})
    stats.degraded, stats.last_error = True, "PostgreSQL at u@h/db: connection refused"
    ok, body = m.readiness()
    assert not ok and body["reason"].startswith("degraded") and "connection refused" in body["reason"]
    stats.degraded = False
    assert m.readiness()[0]
    stop.set()
    t.join(10)
    alive, body = m.liveness()
    assert not alive and body["state"] == "stopped"
    assert m.readiness()[1]["reason"] == "worker stopped"


def test_not_ready_while_a_batch_waits_for_its_commit_beyond_the_window() -> None:
    m, _ = bound(ready_window_s=0.05)
    stop, t = run_in_thread(m)
    m.assigned({(MEMORIES, 0): None})
    m.handed_over(batch_of(memories=1, events=0, dead=0, ts_ms=0))
    body = wait_for(lambda: not m.readiness()[0] and m.readiness()[1], "the batch to outwait the window", timeout=10)
    assert "waited" in body["reason"] and "for its commit" in body["reason"]
    m.finished()  # committed (or fenced): nothing waits any more
    assert m.readiness()[0]
    stop.set()
    t.join(10)


def test_a_dead_loop_thread_is_not_alive() -> None:
    m, _ = bound()
    t = threading.Thread(target=m.started)  # started, then the thread ended without stopped()
    t.start()
    t.join()
    assert m.liveness()[0] is False


# -- HTTP ---------------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[tuple[WorkerMetrics, WorkerStats, MetricsServer]]:
    m, stats = bound()
    with MetricsServer(m, "127.0.0.1", 0, scrub=lambda s: s.replace("pw", "***")) as server:
        yield m, stats, server


def test_http_endpoints(served) -> None:
    m, stats, server = served
    status, ctype, body = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain") and "society_ingest_records_consumed_total" in body
    assert get(server.url + "/healthz")[:2] == (200, "application/json")
    status, ctype, body = get(server.url + "/readyz")
    assert status == 503 and body.endswith("\n") and body.count("\n") == 1
    assert json.loads(body) == {"ready": False, "reason": "worker starting"}
    stop, t = run_in_thread(m)
    m.assigned({(MEMORIES, 0): 3})
    assert get(server.url + "/readyz/")[0] == 200
    stats.degraded, stats.last_error = True, "password pw rejected"
    status, _, body = get(server.url + "/readyz")
    assert status == 503 and "pw" not in body and "***" in body  # the CLI passes its password scrubber
    assert get(server.url + "/nope")[0] == 404
    stop.set()
    t.join(10)
    assert get(server.url + "/healthz")[0] == 503


def test_openmetrics_when_the_scraper_asks(served) -> None:
    _, _, server = served
    req = urllib.request.Request(server.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert r.read().decode().rstrip().endswith("# EOF")


def test_a_port_in_use_is_one_clear_error(served) -> None:
    _, _, server = served
    with pytest.raises(MetricsServerError, match=rf"cannot serve metrics on 127\.0\.0\.1:{server.port}: the port is in use"):
        MetricsServer(WorkerMetrics(), "127.0.0.1", server.port)


def test_close_releases_the_port() -> None:
    server = MetricsServer(WorkerMetrics(), "127.0.0.1", 0).start()
    port = server.port
    server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_consume_with_a_port_in_use_exits_1_with_one_line() -> None:
    import os
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
        done = subprocess.run(
            [sys.executable, "-m", "consumers.cli", "consume", "--metrics-port", str(port)],
            env=env, capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1, done.stderr
    # Before any service is tried: the metrics port is the mistake reported.
    assert done.stderr == (f"error: cannot serve metrics on 127.0.0.1:{port}: the port is in use "
                           "(--metrics-host / --metrics-port)\n")
