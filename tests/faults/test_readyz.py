"""/readyz goes not-ready while PostgreSQL is stopped and ready again once it is back.

Stops the local stack's PostgreSQL: run it against a stack of its own
(``scripts/stack`` with SOCIETY_STACK_DIR and free SOCIETY_*_PORT), never one
that others are using.
"""

from __future__ import annotations

import pytest

from consumers.metrics import WorkerMetrics
from consumers.probes import MetricsServer
from support.db import count
from support.pipeline import WorkerThread, add_memories, producer, wait_for, worker_settings
from support.reconcile import all_committed
from support.scrape import probe, scrape, value

pytestmark = pytest.mark.fault


def test_readyz_while_postgres_is_stopped(services, stack, database_url, topic_prefix):
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    metrics = WorkerMetrics(ready_window_s=30.0, lag_refresh_s=0.5)
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    with MetricsServer(metrics) as server, WorkerThread(settings, metrics=metrics) as w:
        url = server.url
        add_memories(p, 0, 100)
        wait_for(lambda: count(database_url, "agent_memories") == 100, "rows before the outage")
        wait_for(lambda: probe(url, "/readyz")[0] == 200, "ready before the outage")

        stack.stop_postgres("fast")
        add_memories(p, 100, 100)  # something to write, so the worker meets the outage
        status, body = wait_for(lambda: (r := probe(url, "/readyz"))[0] == 503 and r, "not ready during the outage")
        assert body["reason"].startswith("degraded"), body
        assert probe(url, "/healthz")[0] == 200  # alive: it retries, a restart would not help
        assert value(scrape(url), "society_ingest_degraded") == 1

        stack.start_postgres()
        wait_for(lambda: probe(url, "/readyz")[0] == 200, "ready again after the outage")
        wait_for(lambda: count(database_url, "agent_memories") == 200, "the held rows")
        p.end_run()
        p.close()
        wait_for(lambda: all_committed(database_url, services.bootstrap, topic_prefix, settings.group_id),
                 "everything committed")
        s = scrape(url)
        assert value(s, "society_ingest_degraded") == 0
        assert value(s, "society_ingest_retries_total") == w.worker.stats.retries > 0
