"""A worker whose partition was committed by another owner is fenced, re-seeks, and duplicates nothing."""

from __future__ import annotations

import pytest

from support.db import count, fetch
from support.pipeline import WorkerThread, producer, wait_for, worker_settings

pytestmark = pytest.mark.integration


def test_a_fenced_worker_reseeks_to_the_new_owners_offset(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    for step in range(10):
        p.record_memory("agent_0", f"memory {step}", step)  # one key: one partition
    p.flush()
    settings = worker_settings(services.bootstrap, database_url, topic_prefix, tables=("agent_memories",))
    with WorkerThread(settings) as w:
        wait_for(lambda: count(database_url, "agent_memories") == 10, "the first ten memories")
        [(partition, stored)] = fetch(database_url, "SELECT kafka_partition, next_offset FROM ingest_offsets")
        assert stored == 10
        # Another owner commits offsets 10-14 (as after a rebalance this worker has not seen yet).
        fetch(database_url, "UPDATE ingest_offsets SET next_offset = 15 RETURNING 1")
        for step in range(10, 20):
            p.record_memory("agent_0", f"memory {step}", step)
        p.flush()
        wait_for(lambda: fetch(database_url, "SELECT next_offset FROM ingest_offsets")[0][0] == 20
                 and count(database_url, "agent_memories") == 15, "the worker to continue after offset 15")
        stats = w.stop()
    assert stats.fenced >= 1
    steps = sorted(s for (s,) in fetch(database_url, "SELECT step_timestamp FROM agent_memories"))
    assert steps == list(range(10)) + list(range(15, 20))  # 10-14 are the other owner's: not loaded twice
    p.close()
