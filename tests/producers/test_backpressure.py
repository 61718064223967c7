"""A full local queue blocks for a bounded time, then raises a typed error; nothing is dropped.

A record too large for a Kafka message is refused at the call site, naming the size.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from producers import (
    InvalidRecordError,
    ProducerError,
    ProducerSettings,
    QueueFullError,
    SocietyProducer,
    ids,
)

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


def test_the_size_limit_is_librdkafkas_to_the_byte():
    # librdkafka refuses a record over message.max.bytes with an error naming no field; the producer
    # must refuse exactly those records itself, and no others.
    limit = 2000
    p = SocietyProducer(ProducerSettings(bootstrap_servers=NOWHERE, max_message_bytes=limit))
    p.start_run()
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    accepted = 0
    for n in range(1800, limit):
        try:
            p.record_memory("agent_0", "x" * n, 1, timestamp=stamp)
        except InvalidRecordError as e:
            assert e.field == "<record>"
            assert f"encoded record is {limit + 1:,} bytes, over the {limit:,}-byte message limit" in str(e)
            assert "largest field: content" in str(e)
            break
        accepted = n
    else:
        pytest.fail("no record was over the limit")
    assert accepted == n - 1 > 1800
    stats = p.stats()
    assert stats.total_sent == 1 + accepted - 1800 + 1
    with pytest.raises(InvalidRecordError, match=r"^simulation_events.<record>: .* largest field: details"):
        p.record_event("E", 2, details={"text": "x" * limit})
    assert p.record_event("E", 2) == ids.event_uid(p.run_id, 2, "", 0)  # the refused one took no number
    p.abort()


def test_max_message_bytes_reaches_librdkafka_and_cannot_be_shadowed():
    settings = ProducerSettings(bootstrap_servers=NOWHERE, max_message_bytes=5000)
    assert settings.librdkafka()["message.max.bytes"] == 5000
    assert ProducerSettings(bootstrap_servers=NOWHERE).max_message_bytes == 1_000_000
    with pytest.raises(ValueError, match="max_message_bytes"):
        ProducerSettings(bootstrap_servers=NOWHERE, extra={"message.max.bytes": 5000})

