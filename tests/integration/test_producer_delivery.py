"""What the producer and the handler put on real Kafka topics: ids, prefixes, backpressure, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import gc
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from producers import (
    AvroCodec,
    DeliveryError,
    InvalidRecordError,
    KafkaDatabaseHandler,
    ProducerSettings,
    QueueFullError,
    SocietyProducer,
    ids,
    tables,
)
from support.pipeline import producer
from support.topics import topic_messages

pytestmark = pytest.mark.integration


def read_records(bootstrap: str, prefix: str, table: str) -> list[dict[str, Any]]:
    """Every record on `<prefix>.<table>`, decoded."""
    codec = AvroCodec()
    return [codec.decode(m.value()).record for m in topic_messages(bootstrap, prefix, table)]


# --- ids (issue 6, cases 1 and 2) ---------------------------------------------------------------


def step_seven(p: SocietyProducer, queue_full: bool = False) -> list[uuid.UUID]:
    """One step with rejected calls in between; the ids of the records accepted."""
    got = [p.record_memory("a", "one", 7), p.record_memory("b", "two", 7)]
    if queue_full:  # the local queue holds 2 records and Kafka waits linger_ms: full now
        with pytest.raises(QueueFullError):
            p.record_memory("a", "three", 7)
    p.flush()
    with pytest.raises(InvalidRecordError):
        p.record_memory("a", "bad\x00", 7)
    got.append(p.record_memory("a", "three", 7))
    got.append(p.record_event("tick", 7))
    p.flush()
    got.append(p.record_memory("a", "late", 6))
    got.append(p.record_memory("a", "four", 7))  # step 7 again after step 6: numbering continues
    return got


def test_reruns_of_a_step_send_the_same_ids(services, topic_prefix):
    run_id = uuid.uuid4()
    first = producer(services.bootstrap, topic_prefix, queue_max_messages=2, linger_ms=60_000, max_block_seconds=0)
    first.start_run(run_id=run_id)
    first.flush()
    sent = step_seven(first, queue_full=True)
    first.close()
    assert sent == [
        ids.memory_id(run_id, "a", 7, 0), ids.memory_id(run_id, "b", 7, 0), ids.memory_id(run_id, "a", 7, 1),
        ids.event_uid(run_id, 7, "", 0), ids.memory_id(run_id, "a", 6, 0), ids.memory_id(run_id, "a", 7, 2),
    ]
    again = producer(services.bootstrap, topic_prefix)  # a fresh process re-running the step
    again.start_run(run_id=run_id)
    assert step_seven(again) == sent
    again.restart_step(7)
    again.restart_step(6)
    assert step_seven(again) == sent  # the same process, after restart_step
    again.close()

    memories = read_records(services.bootstrap, topic_prefix, tables.AGENT_MEMORIES)
    events = read_records(services.bootstrap, topic_prefix, tables.SIMULATION_EVENTS)
    assert len(memories) == 15 and len(events) == 3  # three runs of the step, nothing else sent
    assert {m["memory_id"] for m in memories} | {e["event_uid"] for e in events} == set(sent)
    by_id = {m["memory_id"]: (m["agent_id_str"], m["step_timestamp"], m["content"]) for m in memories}
    assert [by_id.get(i) for i in sent] == [
        ("a", 7, "one"), ("b", 7, "two"), ("a", 7, "three"), None, ("a", 6, "late"), ("a", 7, "four"),
    ]


# --- details and config_snapshot (issue 6, case 8) -------------------------------------------


class Mood(enum.Enum):
    CALM = "calm"


@dataclasses.dataclass
class Offer:
    price: Decimal
    at: dt.datetime


def test_typed_producer_and_handler_send_converted_json(services, topic_prefix):
    at = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    details = {"offer": Offer(Decimal("2.50"), at), "mood": Mood.CALM, "pos": (3, 4), 7: np.int64(2)}
    expected = '{"offer":{"price":2.50,"at":"2024-05-01T12:00:00+00:00"},"mood":"calm","pos":[3,4],"7":2}'
    p = producer(services.bootstrap, topic_prefix)
    p.start_run({"seed": Decimal("7"), "started": at.date()})
    typed = p.record_event("offer", 1, details=details)
    handler = KafkaDatabaseHandler(producer=p)
    from_handler = uuid.UUID(asyncio.run(handler.save_simulation_event("offer", 1, details=details)))
    p.close()
    (run,) = read_records(services.bootstrap, topic_prefix, tables.SIMULATION_RUNS)
    assert run["config_snapshot"] == '{"seed":7,"started":"2024-05-01"}'
    sent = {e["event_uid"]: e["details"] for e in read_records(services.bootstrap, topic_prefix, tables.SIMULATION_EVENTS)}
    assert sent == {typed: expected, from_handler: expected}


# --- the handler under backpressure (issue 6, case 9) ------------------------------------------

#: No broker listens here: records stay in the local queue.
NOWHERE = "127.0.0.1:9"


@contextlib.asynccontextmanager
async def loop_ticks() -> AsyncIterator[list[int]]:
    """Count 10 ms ticks of another task while the block runs: few ticks mean a frozen event loop."""
    ticks = [0]

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.01)
            ticks[0] += 1

    task = asyncio.create_task(tick())
    await asyncio.sleep(0)  # the ticker is running
    try:
        yield ticks
    finally:
        task.cancel()


def test_handler_waits_for_queue_space_without_blocking_the_event_loop():
    p = SocietyProducer(ProducerSettings(bootstrap_servers=NOWHERE, queue_max_messages=10, max_block_seconds=0.3))
    handler = KafkaDatabaseHandler(producer=p)
    memory = {"content": "m", "importance": 0.5}

    async def scenario() -> None:
        run_id = await handler.start_simulation_run()
        for i in range(9):
            await handler.save_agent_memory("agent_0", memory, i)
        async with loop_ticks() as ticks:
            started = time.monotonic()
            with pytest.raises(QueueFullError, match="queue full for 0.3s"):
                await handler.save_agent_memory("agent_0", memory, 10)
            waited = time.monotonic() - started
        assert 0.3 <= waited < 2.0
        assert ticks[0] >= 10  # the loop kept running while the call waited (it used to freeze for 0.3 s)
        # Space again (the held records are given up): the same id as without the failed attempts.
        assert p._producer.purge() is None and p.poll(0) is None
        assert await handler.save_agent_memory("agent_0", memory, 10) == str(ids.memory_id(run_id, "agent_0", 10, 0))

    asyncio.run(scenario())
    assert p.stats().queue_full_waits == 1
    p.abort()


def test_handler_waits_for_kafka_to_drain_the_queue_and_keeps_order(services, topic_prefix):
    # Two records fill the local queue; Kafka takes them after linger_ms. Meanwhile three calls
    # wait with await (the loop keeps ticking), then go through in call order with their own ids.
    p = producer(services.bootstrap, topic_prefix, queue_max_messages=2, linger_ms=400, max_block_seconds=30)
    handler = KafkaDatabaseHandler(producer=p)

    async def scenario() -> tuple[str, list[str], float, int]:
        run_id = await handler.start_simulation_run()
        await handler.save_agent_memory("agent_0", {"content": "m"}, 1)
        async with loop_ticks() as ticks:
            started = time.monotonic()
            waited = await asyncio.gather(*(
                handler.save_agent_memory("agent_0", {"content": f"waited {i}"}, 1) for i in range(3)))
            elapsed = time.monotonic() - started
        await handler.close()
        return run_id, waited, elapsed, ticks[0]

    run_id, waited, elapsed, ticks = asyncio.run(scenario())
    assert waited == [str(ids.memory_id(run_id, "agent_0", 1, n)) for n in (1, 2, 3)]
    assert elapsed >= 0.2  # they really waited for Kafka (linger_ms)...
    assert ticks >= 10  # ...without freezing the event loop
    assert p.stats().queue_full_waits >= 1
    memories = read_records(services.bootstrap, topic_prefix, tables.AGENT_MEMORIES)
    assert sorted((str(m["memory_id"]), m["content"]) for m in memories) == sorted(
        [(str(ids.memory_id(run_id, "agent_0", 1, 0)), "m")]
        + [(waited[i], f"waited {i}") for i in range(3)]
    )


# --- the handler's topic prefix (issue 6, case 10) ---------------------------------------------


@pytest.mark.parametrize("source", ["keyword", "db_url path", "config url path", "environment"])
def test_handler_sends_to_the_configured_prefix(services, topic_prefix, source, monkeypatch):
    # The simulation constructs the handler itself: a deployment's prefix must reach it.
    monkeypatch.delenv("SOCIETY_TOPIC_PREFIX", raising=False)
    url = f"kafka://{services.bootstrap}/{topic_prefix}"
    if source == "keyword":
        handler = KafkaDatabaseHandler("sqlite:///society.db", None, bootstrap_servers=services.bootstrap,
                                       topic_prefix=topic_prefix)
    elif source == "db_url path":
        handler = KafkaDatabaseHandler(url, None)
    elif source == "config url path":
        handler = KafkaDatabaseHandler(None, {"output": {"database_url": url}})
    else:
        monkeypatch.setenv("SOCIETY_TOPIC_PREFIX", topic_prefix)
        handler = KafkaDatabaseHandler(f"kafka://{services.bootstrap}", None)
    assert handler.producer.settings.topic_prefix == topic_prefix

    async def scenario() -> str:
        await handler.start_simulation_run({"agents": 1})
        memory_id = await handler.save_agent_memory("agent_0", {"content": "where am I?"}, 1)
        await handler.end_simulation_run("completed")
        await handler.close()
        return memory_id

    memory_id = asyncio.run(scenario())
    (memory,) = read_records(services.bootstrap, topic_prefix, tables.AGENT_MEMORIES)
    assert str(memory["memory_id"]) == memory_id
    assert [r["status"] for r in read_records(services.bootstrap, topic_prefix, tables.SIMULATION_RUNS)] == [
        "running", "completed"]


# --- a producer dropped without close (issue 6, case 12) ---------------------------------------


@pytest.mark.parametrize("through", ["producer", "handler"])
def test_a_dropped_producer_delivers_what_it_held_and_warns(services, topic_prefix, through, caplog):
    # linger_ms keeps the records in the local queue: only a flush sends them now.
    if through == "producer":
        p = producer(services.bootstrap, topic_prefix, linger_ms=60_000)
        p.start_run()
        p.record_memory("agent_0", "said before the end", 1)
        del p
    else:
        handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix,
                                       linger_ms=60_000)

        async def scenario() -> None:
            await handler.start_simulation_run()
            await handler.save_agent_memory("agent_0", {"content": "said before the end"}, 1)

        asyncio.run(scenario())
        del handler
    with caplog.at_level(logging.WARNING, logger="producers"):
        gc.collect()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "SocietyProducer dropped without close(): flushed 2 undelivered record(s) for up to 5.0s; "
        "2 delivered, 0 undelivered (failed or still queued); 0 delivery failure(s) never reported"
    ]
    assert len(read_records(services.bootstrap, topic_prefix, tables.SIMULATION_RUNS)) == 1
    (memory,) = read_records(services.bootstrap, topic_prefix, tables.AGENT_MEMORIES)
    assert memory["content"] == "said before the end"


EXITS_WITHOUT_CLOSE = """
import logging, sys
from producers import ProducerSettings, SocietyProducer
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
p = SocietyProducer(ProducerSettings(bootstrap_servers=sys.argv[1], topic_prefix=sys.argv[2], linger_ms=60_000))
p.start_run()
p.record_memory("agent_0", "said at exit", 1)
"""


def test_a_producer_alive_at_interpreter_exit_delivers_and_warns(services, topic_prefix):
    done = subprocess.run([sys.executable, "-c", EXITS_WITHOUT_CLOSE, services.bootstrap, topic_prefix],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "WARNING producers.producer SocietyProducer dropped without close(): flushed 2 undelivered" in done.stderr
    (memory,) = read_records(services.bootstrap, topic_prefix, tables.AGENT_MEMORIES)
    assert memory["content"] == "said at exit"


def test_close_is_idempotent(services, topic_prefix):
    # Nothing listens on port 9: the records stay queued and the first close reports them.
    p = producer(NOWHERE, topic_prefix)
    p.start_run()
    p.record_memory("agent_0", "never delivered", 1)
    with pytest.raises(DeliveryError, match="2 still queued") as info:
        p.close(timeout=0.2)
    assert info.value.pending == 2
    started = time.monotonic()
    stats = p.close()  # reported already: no second wait, no second error
    assert time.monotonic() - started < 1.0
    assert (stats.total_sent, stats.delivered, stats.in_queue) == (2, 0, 2)
    assert p.close() == stats
    assert p.abort() == 2

    q = producer(services.bootstrap, topic_prefix)
    q.start_run()
    first = q.close()
    assert (first.total_sent, first.delivered) == (1, 1)
    assert q.close() == first


def test_a_delivery_error_says_how_long_it_waited_not_the_timeout(topic_prefix):
    # message.timeout.ms fails the record after 0.5 s (librdkafka checks about once a second):
    # the flush ends then, well before its 30 s.
    p = producer(NOWHERE, topic_prefix, message_timeout_ms=500)
    p.start_run()
    waited = r"^1 record\(s\) failed delivery and 0 still queued after [0-5]\.\ds;"
    with pytest.raises(DeliveryError, match=waited) as info:
        p.flush(timeout=30.0)
    assert "30.0s" not in str(info.value)
    p.abort()
