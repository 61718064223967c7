"""The memory reads under hostile use: cancellation, starvation, secrets in logs, dead connections,
log floods, ties and odd arguments (real Kafka and PostgreSQL; no worker: nothing ever lands)."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import sys
import time
import uuid

import psycopg
import pytest

from producers import KafkaDatabaseHandler, MemoryReader

pytestmark = pytest.mark.integration


def handler_for(services, prefix: str, url: str | None) -> KafkaDatabaseHandler:
    return KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=prefix,
                                read_database_url=url, loader_group=f"{prefix}-workers")


def plant(url: str, agent: str, rows: list[tuple[uuid.UUID, int, str]], when: str | None = None) -> uuid.UUID:
    """Store (memory_id, step, content) rows of `agent` in a new run, in list order; one real_timestamp if `when`."""
    run = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO simulation_runs (run_id, status) VALUES (%s, 'running')", (run,))
        conn.execute("INSERT INTO agents (creation_run_id, agent_id_str) VALUES (%s, %s)", (run, agent))
        for memory_id, step, content in rows:
            conn.execute("INSERT INTO agent_memories (memory_id, agent_id_str, simulation_run_id, step_timestamp, "
                         "content, real_timestamp) VALUES (%s, %s, %s, %s, %s, coalesce(%s::timestamptz, now()))",
                         (memory_id, agent, run, step, content, when))
    return run


def as_url(database_url: str, scheme: str = "postgresql://", dbname: str | None = None) -> str:
    """`database_url` (a URL or key=value string) as a URL with `scheme`."""
    p = psycopg.conninfo.conninfo_to_dict(database_url)
    return f"{scheme}{p['user']}:{p.get('password', '')}@{p['host']}:{p['port']}/{dbname or p['dbname']}"


def waiting_threads() -> list[str]:
    """Threads whose stack is inside a landed wait (a blocking poll loop)."""
    return [str(tid) for tid, frame in sys._current_frames().items()
            if any(f.f_code.co_name == "wait_until_landed" for f in _stack(frame))]


def _stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def test_cancelling_wait_until_landed_stops_the_wait(services, database_url, topic_prefix):
    handler = handler_for(services, topic_prefix, database_url)

    async def scenario() -> None:
        await handler.start_simulation_run({})
        await handler.save_agent_memory("agent_0", {"content": "never loaded"}, 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(handler.wait_until_landed(timeout=40), 1)
        assert waiting_threads() == [], "a thread is still polling after the wait was cancelled"

    started = time.monotonic()
    asyncio.run(scenario())
    asyncio.run(handler.close())
    assert time.monotonic() - started < 15, "the event loop could not shut down until the timeout passed"


@pytest.mark.parametrize("timeout", [math.nan, None, "3", True, -1])
def test_wait_until_landed_rejects_a_bad_timeout_and_reads_warn_instead(services, database_url, topic_prefix,
                                                                        timeout, caplog):
    handler = handler_for(services, topic_prefix, database_url)
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        asyncio.run(handler.wait_until_landed(timeout))
    handler.landed_timeout = timeout
    with caplog.at_level(logging.WARNING, logger="producers.handler"):
        assert asyncio.run(handler.get_recent_agent_memories("agent_0", 3, wait_for_landed=True)) == []
    assert "timeout must be a number of seconds" in caplog.text
    asyncio.run(handler.close())


def test_waiting_reads_leave_the_default_executor_free(services, database_url, topic_prefix):
    handler = handler_for(services, topic_prefix, database_url)
    handler.landed_timeout = 4.0
    waiters = min(32, (os.cpu_count() or 1) + 4) + 2  # more than the default executor's threads

    async def scenario() -> float:
        await handler.start_simulation_run({})
        await handler.save_agent_memory("agent_0", {"content": "never loaded"}, 1)
        await handler.flush()
        tasks = [asyncio.create_task(handler.get_recent_agent_memories("agent_0", 3, wait_for_landed=True))
                 for _ in range(waiters)]
        deadline = time.monotonic() + 10
        while not (getattr(handler, "_offsets_query", None) or waiting_threads()):  # the waiters poll
            assert time.monotonic() < deadline, "the waiters never started polling"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(lambda: None)
        took = time.monotonic() - started
        await asyncio.gather(*tasks)
        return took

    took = asyncio.run(scenario())
    asyncio.run(handler.close())
    assert took < 1.0, f"an unrelated asyncio.to_thread waited {took:.2f}s for a thread"


SECRET_URLS = [
    "postgresql://postgres:S3CRETpw@[::1:bad/x",
    "postgresql://u:S3CRETb%ZZ@127.0.0.1:1/x",
    "mysql://u:S3CRETpw@h/x",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_an_unparseable_url_never_logs_its_password(services, topic_prefix, url, caplog):
    handler = handler_for(services, topic_prefix, url)
    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(handler.get_recent_agent_memories("agent_0", 3)) == []
        assert asyncio.run(handler.retrieve_memories("agent_0", "bread", 3)) == []
    asyncio.run(handler.close())
    assert "invalid connection URL" in caplog.text
    assert "S3CRET" not in caplog.text


def test_sqlalchemy_style_urls_are_read(services, database_url, topic_prefix, caplog):
    run = plant(database_url, "agent_0", [(uuid.uuid4(), 1, "hello")])
    for scheme in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        url = as_url(database_url, scheme)
        with MemoryReader(url) as reader:
            assert [m.content for m in reader.recent_memories("agent_0", 3, run_id=run)] == ["hello"], scheme
    # A SQLAlchemy URL of a database that does not exist: reported without the password.
    wrong = as_url(database_url, "postgresql+asyncpg://", "no_such_db")
    password = psycopg.conninfo.conninfo_to_dict(database_url).get("password")
    handler = handler_for(services, topic_prefix, wrong)
    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(handler.get_recent_agent_memories("agent_0", 3)) == []
    asyncio.run(handler.close())
    assert "no_such_db" in caplog.text
    assert not password or password not in caplog.text


def test_an_outage_and_missing_tables_warn_once_not_per_call(services, database_url, topic_prefix, caplog):
    no_tables = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")

    async def many(handler: KafkaDatabaseHandler, n: int) -> list:
        return await asyncio.gather(*[handler.get_recent_agent_memories(f"agent_{i}", 3) for i in range(n)])

    for url in ("postgresql://nobody@127.0.0.1:1/none", no_tables):
        handler = handler_for(services, topic_prefix, url)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="producers.handler"):
            results = asyncio.run(many(handler, 300))
            started = time.monotonic()
            asyncio.run(handler.get_recent_agent_memories("agent_x", 3))
            again = time.monotonic() - started
        asyncio.run(handler.close())
        assert all(r == [] for r in results)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, (url, [w.getMessage()[:120] for w in warnings[:5]])
        assert "unavailable" in warnings[0].getMessage()
        assert again < 0.5, "no backoff: the next call went to the database again"


def test_reads_survive_terminated_connections(services, database_url, topic_prefix):
    run = plant(database_url, "agent_0", [(uuid.uuid4(), 1, "still here")])
    handler = handler_for(services, topic_prefix, database_url)

    async def scenario() -> list:
        await asyncio.gather(*[handler.get_recent_agent_memories("agent_0", 3, run_id=run) for _ in range(12)])
        with psycopg.connect(database_url, autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                                   "AND backend_type = 'client backend'").fetchone()[0]
        assert killed >= 1
        return [await handler.get_recent_agent_memories("agent_0", 3, run_id=run) for _ in range(3)]

    reads = asyncio.run(scenario())
    asyncio.run(handler.close())
    assert [[m["content"] for m in r] for r in reads] == [["still here"]] * 3


def test_memories_of_one_instant_come_back_in_a_stable_order(database_url):
    ids = sorted(uuid.uuid4() for _ in range(6))  # planted in ascending order: table order is not the answer
    run = plant(database_url, "agent_0", [(i, 5, f"m{n}") for n, i in enumerate(ids)], when="2026-01-01T00:00Z")
    with MemoryReader(database_url) as reader:
        recent = reader.recent_memories("agent_0", 10, run_id=run)
        ranked = reader.retrieve_memories("agent_0", "nothing", 10, run_id=run)
    assert [m.memory_id for m in recent] == ids[::-1]
    assert [m.memory_id for m in ranked] == ids[::-1]


class Agent(enum.Enum):
    FIVE = 5


def test_odd_arguments_never_raise_into_the_simulation(services, database_url, topic_prefix, caplog):
    import numpy as np

    run = plant(database_url, "5", [(uuid.uuid4(), 1, "five's memory")])
    handler = handler_for(services, topic_prefix, database_url)

    async def scenario() -> dict:
        out = {}
        for count in (2.5, True, None, "3"):
            out[f"count={count!r}"] = await handler.get_recent_agent_memories("5", count, run_id=run)
            out[f"k={count!r}"] = await handler.retrieve_memories("5", "five", count, run_id=run)
        out["run_id"] = await handler.get_recent_agent_memories("5", 3, run_id="not-a-uuid")
        out["current_step"] = await handler.retrieve_memories("5", "five", 3, run_id=run, current_step=2**31)
        for agent in (5, np.int64(5), Agent.FIVE):
            out[f"agent={agent!r}"] = await handler.get_recent_agent_memories(agent, 3, run_id=run)
        out["count=2**63"] = await handler.get_recent_agent_memories("5", 2**63, run_id=run)
        out["window=2**63"] = await handler.retrieve_memories("5", "five", 2**63, run_id=run, window=2**63)
        return out

    with caplog.at_level(logging.DEBUG, logger="producers.handler"):
        out = asyncio.run(scenario())
    asyncio.run(handler.close())
    for key in ("count=2.5", "count=True", "count=None", "count='3'", "k=2.5", "k=True", "run_id", "current_step"):
        assert out[key] == [], key
    for key in ("agent=5", "agent=np.int64(5)", "agent=<Agent.FIVE: 5>", "count=2**63", "window=2**63"):
        assert [m["content"] for m in out[key]] == ["five's memory"], key
    assert "run_id must be a UUID" in caplog.text and "current_step must fit" in caplog.text
    with MemoryReader(database_url) as reader, pytest.raises(ValueError, match="run_id"):
        reader.recent_memories("5", 3, run_id="not-a-uuid")
