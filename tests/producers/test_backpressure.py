"""A full local queue blocks for a bounded time, then raises a typed error; nothing is dropped."""

from __future__ import annotations

import time

import pytest

from producers import ProducerError, ProducerSettings, QueueFullError, SocietyProducer

#: No broker listens here: records stay queued.
NOWHERE = "127.0.0.1:9"


def test_full_queue_raises_after_the_bound():
    p = SocietyProducer(ProducerSettings(bootstrap_servers=NOWHERE, queue_max_messages=10, max_block_seconds=0.3))
    p.start_run()
    for i in range(9):
        p.record_memory("agent_0", f"m{i}", i)
    started = time.monotonic()
    with pytest.raises(QueueFullError, match="queue full"):
        p.record_memory("agent_0", "one too many", 10)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 2.0
    stats = p.stats()
    assert stats.total_sent == 10 and stats.queue_full_waits == 1  # the run and nine memories, all still held
    assert stats.in_queue >= 10
    assert p.abort() >= 10  # the held records are reported as dropped, not lost silently
    with pytest.raises(ProducerError, match="closed"):
        p.record_memory("agent_0", "after abort", 11)
