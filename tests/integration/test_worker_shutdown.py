"""SIGTERM mid-stream: the worker commits what it holds, exits 0, and a restart resumes."""

from __future__ import annotations

import pytest

from support.db import count, fetch
from support.pipeline import producer, spawn_worker, terminate_worker, wait_for

pytestmark = pytest.mark.integration

RECORDS = 20_000


def start_worker(services, database_url: str, prefix: str):
    # Small batches: many commits, so the signal lands mid-stream.
    return spawn_worker(services.bootstrap, database_url, prefix, f"{prefix}-g", "--max-batch-rows", "250")


def stored_offsets(url: str) -> int:
    return fetch(url, "SELECT coalesce(sum(next_offset), 0) FROM ingest_offsets WHERE topic LIKE %s", ("%.agent_memories",))[0][0]


def test_sigterm_loses_nothing_and_restart_resumes(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    for i in range(RECORDS):
        p.record_memory(f"agent_{i % 50}", f"memory {i}", i // 50)
    p.end_run()
    p.close()

    first = start_worker(services, database_url, topic_prefix)
    wait_for(lambda: count(database_url, "agent_memories") > 0, "the first rows")
    stats = terminate_worker(first)
    loaded = count(database_url, "agent_memories")
    assert 0 < loaded < RECORDS, "the signal should land mid-stream"
    # Rows and stored offsets were committed together: they agree exactly.
    assert stored_offsets(database_url) == loaded == stats["inserted"]["agent_memories"]

    second = start_worker(services, database_url, topic_prefix)
    wait_for(lambda: count(database_url, "agent_memories") == RECORDS, "every row", interval=0.2)
    stats = terminate_worker(second)
    assert stats["inserted"]["agent_memories"] == RECORDS - loaded
    assert stats["duplicates"]["agent_memories"] == 0  # resumed exactly where it stopped
    assert stored_offsets(database_url) == RECORDS
