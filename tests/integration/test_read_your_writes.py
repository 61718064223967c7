"""Read-your-writes: wait until everything the handler recorded is loaded, or fail clearly."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from producers import KafkaDatabaseHandler, MemoryReader, NotLandedError
from support.db import fetch
from support.pipeline import WorkerThread, worker_settings

pytestmark = pytest.mark.integration


def handler_for(services, database_url: str, prefix: str) -> KafkaDatabaseHandler:
    return KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=prefix,
                                read_database_url=database_url, loader_group=f"{prefix}-workers")


async def remember(handler: KafkaDatabaseHandler, steps: range) -> None:
    for step in steps:
        await handler.save_agent_memory(f"agent_{step % 3}", {"content": f"memory of step {step}"}, step)


def test_wait_until_landed_returns_after_the_last_memory_is_visible(services, database_url, topic_prefix):
    handler = handler_for(services, database_url, topic_prefix)
    # A worker that holds its batches for a second: without the wait the newest rows are not there yet.
    with WorkerThread(worker_settings(services.bootstrap, database_url, topic_prefix, linger_ms=1000)):
        async def scenario() -> tuple[int, list, list]:
            run = await handler.start_simulation_run({})
            await remember(handler, range(300))
            await handler.wait_until_landed(timeout=60)
            loaded = fetch(database_url, "SELECT count(*) FROM agent_memories WHERE simulation_run_id = %s", (run,))
            newest = await handler.get_recent_agent_memories("agent_2", 1)
            await remember(handler, range(300, 301))  # agent_0, step 300
            fresh = await handler.get_recent_agent_memories("agent_0", 1, wait_for_landed=True)
            return loaded[0][0], newest, fresh

        loaded, newest, fresh = asyncio.run(scenario())
    asyncio.run(handler.close())
    assert loaded == 300
    assert newest == [{"content": "memory of step 299", "timestamp": 299, "importance": None, "tags": [],
                       "related_agent_id": None}]
    assert [m["timestamp"] for m in fresh] == [300]


def test_wait_until_landed_times_out_clearly_when_the_worker_is_stopped(services, database_url, topic_prefix, caplog):
    handler = handler_for(services, database_url, topic_prefix)
    handler.landed_timeout = 1.0
    with WorkerThread(worker_settings(services.bootstrap, database_url, topic_prefix)):
        asyncio.run(handler.start_simulation_run({}))
        asyncio.run(remember(handler, range(6)))
        asyncio.run(handler.wait_until_landed(timeout=60))
    # The worker is stopped: three more memories (agent_0, agent_1, agent_2) are delivered but never loaded.
    asyncio.run(remember(handler, range(6, 9)))
    started = time.monotonic()
    with pytest.raises(NotLandedError) as caught:
        asyncio.run(handler.wait_until_landed(timeout=2))
    waited = time.monotonic() - started
    assert 2 <= waited < 10
    assert sum(caught.value.behind.values()) == 3
    message = str(caught.value)
    assert f"records not loaded after 2s by consumer group '{topic_prefix}-workers'" in message
    assert f"{topic_prefix}.agent_memories[" in message and "record(s) behind" in message

    # The simulation's read does not raise: it warns and returns what has landed.
    with caplog.at_level(logging.WARNING, logger="producers.handler"):
        landed = asyncio.run(handler.get_recent_agent_memories("agent_0", 10, wait_for_landed=True))
    assert [m["timestamp"] for m in landed] == [3, 0]
    assert "wait_for_landed: records not loaded after 1s" in caplog.text and "reading what has landed" in caplog.text

    # A group that never stored an offset: said so, partition by partition.
    positions = handler.producer.sync()
    with MemoryReader(database_url, loader_group="nobody") as reader, pytest.raises(NotLandedError) as none:
        reader.wait_until_landed(positions, timeout=0.2)
    assert set(none.value.behind.values()) == {None} and "no offset stored yet" in str(none.value)
    asyncio.run(handler.close())


def test_records_not_yet_in_kafka_are_not_landed_either(database_url, topic_prefix):
    with socket.socket() as s:  # a port nothing listens on: the broker is "down" for the whole test
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    handler = KafkaDatabaseHandler(bootstrap_servers=dead, topic_prefix=topic_prefix, read_database_url=database_url)
    asyncio.run(handler.start_simulation_run({}))
    asyncio.run(remember(handler, range(2)))
    with pytest.raises(NotLandedError) as caught:
        asyncio.run(handler.wait_until_landed(timeout=1))
    assert "3 record(s) not yet delivered to Kafka after 1s" in str(caught.value)  # the run and two memories
    assert caught.value.behind == {}
    assert handler.producer.abort() == 3
    asyncio.run(handler.close())
