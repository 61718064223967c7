"""Reading memories back from PostgreSQL: recent memories and ranked retrieval (producers.reads)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from producers import KafkaDatabaseHandler, MemoryReader, ReadError, ReadUnavailableError, RetrievalWeights

pytestmark = pytest.mark.integration


def plant(url: str, agent: str, memories: list[tuple[int, str, float | None]],
          run: uuid.UUID | None = None) -> uuid.UUID:
    """Store `memories` (step, content, importance) of `agent` in a run (a new one unless given)."""
    run = run or uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO simulation_runs (run_id, status) VALUES (%s, 'running') ON CONFLICT DO NOTHING",
                     (run,))
        conn.execute("INSERT INTO agents (creation_run_id, agent_id_str) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (run, agent))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO agent_memories (memory_id, agent_id_str, simulation_run_id, step_timestamp, content, "
                "importance, tags) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, %s)",
                [(agent, run, step, content, importance, ["t"]) for step, content, importance in memories],
            )
    return run


def filler(steps: range, importance: float = 0.1) -> list[tuple[int, str, float | None]]:
    """Ordinary memories, nothing to do with bread."""
    return [(s, f"walked to the well on day {s} and drew water", importance) for s in steps]


def test_planted_recent_important_relevant_memory_ranks_first(database_url):
    planted = "sold fresh bread to agent_4 at the market for a great price"
    memories = filler(range(0, 400))
    memories += [(50, "baked bread at home", 0.2), (120, "bread prices at the market went up", 0.3)]  # old, relevant
    memories += [(30, "the village elder died", 1.0)]                                                # old, important
    memories += [(399, planted, 0.95)]
    run = plant(database_url, "agent_7", memories)
    with MemoryReader(database_url) as reader:
        best = reader.retrieve_memories("agent_7", "bread market", 5, run_id=run)
    assert best[0].content == planted
    assert best[0].recency == 1.0 and 0 < best[0].relevance <= 1
    assert max(m.relevance for m in best) == 1.0  # divided by the best candidate's rank
    assert best[0].score == pytest.approx(1.0 + 0.95 + best[0].relevance, abs=1e-6)
    assert [m.score for m in best] == sorted((m.score for m in best), reverse=True)


def test_weights_change_the_order_as_documented(database_url):
    run = plant(database_url, "agent_1", [
        (100, "watched the sunset from the hill", 0.0),            # newest
        (10, "traded wheat for tools with the smith", 0.0),      # relevant
        (5, "my daughter was born", 1.0),                         # important
    ] + filler(range(11, 20), importance=0.0))
    with MemoryReader(database_url) as reader:
        def first(**weights: float) -> str:
            return reader.retrieve_memories("agent_1", "wheat trade", 1, run_id=run,
                                            weights=RetrievalWeights(**weights))[0].content

        assert first(recency=1, importance=0, relevance=0) == "watched the sunset from the hill"
        assert first(recency=0, importance=0, relevance=1) == "traded wheat for tools with the smith"
        assert first(recency=0, importance=1, relevance=0) == "my daughter was born"
        # Equal weights: 0.99**90 + 0 + 1 (relevant) beats 1 + 0 + 0 (newest) and 0.99**95 + 1 + 0 (important).
        both = reader.retrieve_memories("agent_1", "wheat trade", 3, run_id=run)
        assert [m.content for m in both][:1] == ["traded wheat for tools with the smith"]
        for m in both:
            assert m.score == pytest.approx(m.recency + m.importance_score + m.relevance)
            assert m.recency == pytest.approx(0.99 ** (100 - m.step))
        # current_step anchors recency: seen from step 200, every memory is old.
        later = reader.retrieve_memories("agent_1", "wheat", 3, run_id=run, current_step=200)
        assert [m.recency for m in later] == pytest.approx([0.99 ** (200 - m.step) for m in later])


def test_query_without_words_ranks_by_recency_and_importance(database_url):
    run = plant(database_url, "agent_2", [(1, "old and vital", 1.0), (9, "new and trivial", 0.0), (5, "middle", 0.5)])
    with MemoryReader(database_url) as reader:
        for query in ("", "the and of"):
            ranked = reader.retrieve_memories("agent_2", query, 3, run_id=run)
            assert {m.relevance for m in ranked} == {0.0}
            # 0.99**8 + 1, 0.99**4 + 0.5, 1 + 0
            assert [m.content for m in ranked] == ["old and vital", "middle", "new and trivial"]


def test_scoped_to_one_run_unless_asked_for_all(database_url):
    first = plant(database_url, "agent_0", [(1, "first run, step 1", 0.5), (2, "first run, step 2", 0.5)])
    second = plant(database_url, "agent_0", [(1, "second run, step 1", 0.5)])
    with MemoryReader(database_url) as reader:
        assert [m.content for m in reader.recent_memories("agent_0", 10, run_id=second)] == ["second run, step 1"]
        assert [m.run_id for m in reader.recent_memories("agent_0", 10, run_id=first)] == [first, first]
        assert len(reader.recent_memories("agent_0", 10, run_id=None)) == 3
        assert {m.run_id for m in reader.retrieve_memories("agent_0", "run", 10, run_id=first)} == {first}


def test_handler_get_recent_agent_memories_has_the_simulations_contract(services, database_url, topic_prefix):
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix,
                                   read_database_url=database_url)
    other_run = plant(database_url, "agent_3", [(7, "from another run", 1.0)])
    run = uuid.UUID(asyncio.run(handler.start_simulation_run({})))
    plant(database_url, "agent_3", [(1, "first", 0.25), (3, "third", None), (2, "second", 1.0)], run=run)

    async def read() -> tuple[list, list, list, list]:
        recent = await handler.get_recent_agent_memories("agent_3", 2)
        everything = await handler.get_recent_agent_memories("agent_3", 10, all_runs=True)
        other = await handler.get_recent_agent_memories("agent_3", 10, run_id=other_run)
        none = await handler.get_recent_agent_memories("agent_3", 0)
        return recent, everything, other, none

    recent, everything, other, none = asyncio.run(read())
    asyncio.run(handler.close())
    assert recent == [
        {"content": "third", "timestamp": 3, "importance": None, "tags": ["t"], "related_agent_id": None},
        {"content": "second", "timestamp": 2, "importance": 1.0, "tags": ["t"], "related_agent_id": None},
    ]
    assert [m["timestamp"] for m in everything] == [7, 3, 2, 1]
    assert [m["content"] for m in other] == ["from another run"]
    assert none == []


def test_unreachable_database_returns_nothing_warns_once_and_fails_fast(services, topic_prefix, caplog):
    # Port 1 on localhost: refused at once. The reader remembers the failure for retry_after seconds.
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix,
                                   read_database_url=unreachable)

    async def read() -> tuple[list, list, float]:
        first = await handler.get_recent_agent_memories("agent_0", 5)
        started = time.monotonic()
        second = await handler.retrieve_memories("agent_0", "bread", 5)
        return first, second, time.monotonic() - started

    with caplog.at_level(logging.WARNING, logger="producers.handler"):
        first, second, second_took = asyncio.run(read())
    asyncio.run(handler.close())
    assert first == [] and second == []
    assert second_took < 0.5, "the outage was not remembered: the second call tried to connect again"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("127.0.0.1:1/none is unavailable" in w and "returning no memories" in w for w in warnings), warnings


def test_no_database_configured_returns_nothing_and_says_how(services, topic_prefix, monkeypatch, caplog):
    for variable in ("SOCIETY_READ_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix)
    with caplog.at_level(logging.WARNING, logger="producers.handler"):
        assert asyncio.run(handler.get_recent_agent_memories("agent_0", 5)) == []
    asyncio.run(handler.close())
    assert "set SOCIETY_READ_DATABASE_URL or DATABASE_URL" in caplog.text


def test_without_psycopg_the_reader_names_the_extra(database_url):
    # A fresh interpreter in which psycopg cannot be imported (as in a producer-only install).
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from producers import MemoryReader, ReadUnavailableError\n"
        f"try:\n    MemoryReader({database_url!r}).recent_memories('a', 1, run_id=None)\n"
        "except ReadUnavailableError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "pip install 'society-ingest[read]'" in out, out
    assert issubclass(ReadUnavailableError, Exception)


def test_any_query_word_counts_and_more_words_rank_higher(database_url):
    run = plant(database_url, "agent_5", [
        (1, "bought bread from the baker", 0.0),
        (2, "bread prices at the market rose", 0.0),
        (3, "went fishing", 0.0),
    ])
    with MemoryReader(database_url) as reader:
        ranked = reader.retrieve_memories("agent_5", "what did I pay for bread at the market?", 3, run_id=run,
                                          weights=RetrievalWeights(recency=0, importance=0))
    assert [(m.content, m.relevance > 0) for m in ranked] == [
        ("bread prices at the market rose", True), ("bought bread from the baker", True), ("went fishing", False)]
    assert ranked[0].relevance == 1.0


def test_only_the_window_of_newest_memories_is_considered(database_url):
    run = plant(database_url, "agent_6", [(0, "the great flood took our house", 1.0)] + filler(range(1, 30)))
    with MemoryReader(database_url) as reader:
        wide = reader.retrieve_memories("agent_6", "flood", 1, run_id=run, window=30)
        narrow = reader.retrieve_memories("agent_6", "flood", 30, run_id=run, window=29)
    assert wide[0].content == "the great flood took our house"
    assert len(narrow) == 29 and "the great flood took our house" not in {m.content for m in narrow}


def test_recency_too_small_for_a_float_counts_as_nothing(database_url):
    # 0.5 ** 2000 is below float8's range: PostgreSQL raises an underflow error rather than rounding to 0.
    run = plant(database_url, "agent_3", [(0, "the first bread I baked", 0.9), (2000, "a quiet day", 0.0)])
    with MemoryReader(database_url) as reader:
        ranked = reader.retrieve_memories("agent_3", "bread", 2, run_id=run, current_step=2000, decay=0.5)
        assert [m.content for m in ranked] == ["the first bread I baked", "a quiet day"]  # 0 + 0.9 + 1 vs 1 + 0 + 0
        assert 0 <= ranked[0].recency < 1e-300 and ranked[1].recency == 1.0
        far = reader.retrieve_memories("agent_3", "bread", 2, run_id=run, current_step=2**31 - 1, decay=1e-300)
        assert [m.content for m in far] == ["the first bread I baked", "a quiet day"]


def test_weights_are_bounded():
    RetrievalWeights(recency=1e6, importance=0, relevance=1e6)
    for bad in (1e6 + 1, 1e308, float("inf"), float("nan"), -1, True, "1"):
        with pytest.raises(ValueError, match="RetrievalWeights.recency must be a number from 0 to 1e"):
            RetrievalWeights(recency=bad)


def test_a_statement_timeout_is_not_retried(database_url):
    run = plant(database_url, "agent_5", [(1, "locked away", 0.5)])
    with MemoryReader(database_url, statement_timeout=2) as reader, \
            psycopg.connect(database_url) as locker:
        assert len(reader.recent_memories("agent_5", 1, run_id=run)) == 1
        locker.execute("LOCK TABLE agent_memories IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(ReadError, match=r"statement timeout \(2 s\)"):
            reader.recent_memories("agent_5", 1, run_id=run)
        # One timeout is 2 s; a retry on another connection would have waited twice as long.
        assert time.monotonic() - started < 3.9
        locker.rollback()
        assert len(reader.recent_memories("agent_5", 1, run_id=run)) == 1
        assert reader._pool._open == 1, "the timed-out connection was kept and reused"
