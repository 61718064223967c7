"""SIGTERM mid-stream: the worker commits what it holds, exits 0, and a restart resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.db import count, fetch
from support.pipeline import WAIT_TIMEOUT_S, producer, wait_for

pytestmark = pytest.mark.integration

RECORDS = 20_000
CLI = [sys.executable, "-m", "consumers.cli"]


def start_worker(services, database_url: str, prefix: str) -> subprocess.Popen:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": database_url}
    return subprocess.Popen(
        # Small batches: many commits, so the signal lands mid-stream.
        [*CLI, "consume", "--topic-prefix", prefix, "--group", f"{prefix}-g", "--max-batch-rows", "250"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )


def stop_worker(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT_TIMEOUT_S)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


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
    stats = stop_worker(first)
    loaded = count(database_url, "agent_memories")
    assert 0 < loaded < RECORDS, "the signal should land mid-stream"
    # Rows and stored offsets were committed together: they agree exactly.
    assert stored_offsets(database_url) == loaded == stats["inserted"]["agent_memories"]

    second = start_worker(services, database_url, topic_prefix)
    wait_for(lambda: count(database_url, "agent_memories") == RECORDS, "every row", interval=0.2)
    stats = stop_worker(second)
    assert stats["inserted"]["agent_memories"] == RECORDS - loaded
    assert stats["duplicates"]["agent_memories"] == 0  # resumed exactly where it stopped
    assert stored_offsets(database_url) == RECORDS
