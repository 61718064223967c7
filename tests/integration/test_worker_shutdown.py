"""SIGTERM mid-stream: the worker commits what it holds, exits 0, and a restart resumes."""

from __future__ import annotations

import pytest

from support.db import count, fetch
from support.pipeline import producer, wait_for

pytestmark = pytest.mark.integration

RECORDS = 20_000


def stored_offsets(url: str) -> int:
    return fetch(url, "SELECT coalesce(sum(next_offset), 0) FROM ingest_offsets WHERE topic LIKE %s", ("%.agent_memories",))[0][0]


def record_memories(p, start: int, n: int) -> None:
    for i in range(start, start + n):
        p.record_memory(f"agent_{i % 50}", f"memory {i}", i // 50)
    p.flush()


def test_sigterm_loses_nothing_and_restart_resumes(services, database_url, topic_prefix, spawn):
    # Small batches: many commits, so the signal usually lands mid-stream. Whether it does is
    # timing; the half recorded after the first worker exits makes "the restart resumes" certain.
    args = (database_url, topic_prefix, f"{topic_prefix}-g", "--max-batch-rows", "250")
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    record_memories(p, 0, RECORDS // 2)

    first = spawn(*args)
    wait_for(lambda: first.check_alive() or count(database_url, "agent_memories") > 0, "the first rows")
    stats = first.terminate()
    loaded = count(database_url, "agent_memories")
    assert 0 < loaded <= RECORDS // 2
    # Rows and stored offsets were committed together: they agree exactly.
    assert stored_offsets(database_url) == loaded == stats["inserted"]["agent_memories"]

    record_memories(p, RECORDS // 2, RECORDS - RECORDS // 2)
    p.end_run()
    p.close()
    second = spawn(*args)
    wait_for(lambda: second.check_alive() or count(database_url, "agent_memories") == RECORDS, "every row")
    stats = second.terminate()
    assert stats["inserted"]["agent_memories"] == RECORDS - loaded
    assert stats["duplicates"]["agent_memories"] == 0  # resumed exactly where it stopped
    assert stored_offsets(database_url) == RECORDS
