"""Redelivery and out-of-order arrival never duplicate or lose rows."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from producers import tables
from support.db import count, fetch
from support.pipeline import drain, producer, worker_settings

pytestmark = pytest.mark.integration

CHILD_TABLES = ("agent_memories", "market_transactions", "banking_transactions", "simulation_events")


def record_small_run(p, agents: int = 5, steps: int = 4) -> uuid.UUID:
    """A run with every kind of record; returns its id."""
    run_id = p.start_run({"steps": steps})
    for a in range(agents):
        p.record_agent(f"agent_{a}", agent_type="farmer", step=0)
    n = 0
    for step in range(steps):
        for a in range(agents):
            n += 1
            p.record_memory(f"agent_{a}", f"memory {n}", step, importance=0.5, tags=["x"])
            p.record_event("AGENT_MOVED", step, agent_id_primary=f"agent_{a}", details={"n": n})
            p.record_market_transaction(
                f"mt_{n}", step, market_id="market_food", resource_type="food", buyer_id=f"agent_{a}",
                seller_id="agent_0", quantity=1, price_per_unit=2.0, total_cost=2.0,
            )
            p.record_bank_transaction(
                f"bt_{n}", step, account_id=f"acct_{a}", agent_id=f"agent_{a}", transaction_type="deposit",
                amount=1.0, balance_after=float(n),
            )
    p.end_run("completed")
    p.flush()
    return run_id


def counts(url: str) -> dict[str, int]:
    return {t: count(url, t) for t in tables.TABLES}


def test_consuming_twice_leaves_no_duplicates(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    record_small_run(p)
    expected = {"simulation_runs": 1, "agents": 5, **dict.fromkeys(CHILD_TABLES, 20)}
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    first = drain(settings, lambda: counts(database_url) == expected, "first load")
    assert sum(first.inserted.values()) == 1 + 5 + 80

    # Offsets reset: forget the stored offsets, as a replay or a lost offset store would.
    with_reset = fetch(database_url, "DELETE FROM ingest_offsets RETURNING next_offset")
    assert sum(o for (o,) in with_reset) == 2 + 5 + 80
    second = drain(
        settings,
        lambda: fetch(database_url, "SELECT coalesce(sum(next_offset), 0) FROM ingest_offsets")[0][0] == 87,
        "second pass over every record",
    )
    assert counts(database_url) == expected
    assert second.consumed == 87
    assert {t: second.inserted[t] for t in CHILD_TABLES} == dict.fromkeys(CHILD_TABLES, 0)
    assert {t: second.duplicates[t] for t in CHILD_TABLES} == dict.fromkeys(CHILD_TABLES, 20)
    assert count(database_url, "ingest_conflicts") == 0

    # A memory re-sent with its id stays one row; a different payload under that id is flagged.
    (memory_id, agent, step, content) = fetch(
        database_url, "SELECT memory_id, agent_id_str, step_timestamp, content FROM agent_memories LIMIT 1"
    )[0]
    p.record_memory(agent, content, step, importance=0.5, tags=["x"], memory_id=memory_id,
                    timestamp=fetch(database_url, "SELECT real_timestamp FROM agent_memories WHERE memory_id = %s", (memory_id,))[0][0])
    p.record_memory(agent, content + " (edited)", step, importance=0.5, tags=["x"], memory_id=memory_id)
    p.flush()
    third = drain(settings, lambda: count(database_url, "ingest_conflicts") >= 1, "the divergent duplicate")
    assert count(database_url, "agent_memories") == 20
    assert third.duplicates["agent_memories"] == 1 and third.conflicts == 1
    (key, incoming) = fetch(database_url, "SELECT record_key, incoming FROM ingest_conflicts")[0]
    assert key == str(memory_id) and incoming["content"] == content + " (edited)"
    p.close()


def test_children_before_their_run_still_land(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    run_id = record_small_run(p, agents=3, steps=2)
    children = worker_settings(services.bootstrap, database_url, topic_prefix, tables=CHILD_TABLES)
    drain(children, lambda: all(count(database_url, t) == 6 for t in CHILD_TABLES), "children without parents")
    # Parents exist as stubs so the foreign keys hold.
    assert fetch(database_url, "SELECT run_id, status, updated_at FROM simulation_runs") == [(run_id, None, None)]
    assert count(database_url, "agents") == 3

    parents = worker_settings(
        services.bootstrap, database_url, topic_prefix, tables=("simulation_runs", "agents"), group_id=f"{topic_prefix}-p"
    )
    drain(parents, lambda: fetch(database_url, "SELECT status FROM simulation_runs")[0][0] == "completed", "the run")
    (status, end_time, config) = fetch(database_url, "SELECT status, end_time, config_snapshot FROM simulation_runs")[0]
    assert status == "completed" and end_time is not None and config == {"steps": 2}
    assert fetch(database_url, "SELECT count(*) FROM agents WHERE updated_at IS NULL")[0][0] == 0

    # A stale state replayed later (older updated_at) never overwrites the final one.
    stale = {
        "run_id": run_id, "config_snapshot": "{}", "start_time": end_time - dt.timedelta(hours=1),
        "end_time": None, "status": "running", "notes": None, "updated_at": end_time - dt.timedelta(hours=1),
    }
    p.send("simulation_runs", stale, str(run_id))
    p.close()
    drain(
        parents,
        lambda: fetch(database_url, "SELECT sum(next_offset) FROM ingest_offsets WHERE topic LIKE %s",
                      ("%.simulation_runs",))[0][0] == 3,
        "the stale run state",
    )
    assert fetch(database_url, "SELECT status, end_time FROM simulation_runs") == [("completed", end_time)]


def test_a_rerun_step_is_a_duplicate_not_a_conflict(services, database_url, topic_prefix):
    # A re-run step sends the same facts under the same ids, recorded at a later time.
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()

    def record_step(content: str = "sold bread") -> tuple:
        mid = p.record_memory("agent_1", content, 3, importance=0.5, tags=["trade"], memory_id=memory_id)
        uid = p.record_event("TRADE", 3, agent_id_primary="agent_1", details={"q": 4}, event_uid=event_uid)
        p.record_market_transaction("mt_1", 3, market_id="m", resource_type="food", buyer_id="agent_1",
                                    seller_id="agent_2", quantity=4, price_per_unit=2.5, total_cost=10.0)
        p.record_bank_transaction("bt_1", 3, account_id="acct_1", agent_id="agent_1", transaction_type="deposit",
                                  amount=10.0, balance_after=10.0)
        p.flush()
        return mid, uid

    memory_id, event_uid = uuid.uuid4(), uuid.uuid4()
    record_step()
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    drain(settings, lambda: all(count(database_url, t) == 1 for t in CHILD_TABLES), "the step")
    first_times = fetch(database_url, "SELECT real_timestamp FROM agent_memories")

    record_step()  # the re-run: every real_timestamp differs
    rerun = drain(settings, lambda: fetch(database_url, "SELECT sum(next_offset) FROM ingest_offsets")[0][0]
                  == 1 + 2 * len(CHILD_TABLES), "the re-run step")
    assert {t: rerun.duplicates[t] for t in CHILD_TABLES} == dict.fromkeys(CHILD_TABLES, 1)
    assert rerun.conflicts == 0 and count(database_url, "ingest_conflicts") == 0
    assert fetch(database_url, "SELECT real_timestamp FROM agent_memories") == first_times  # the first one stays

    # A different fact under an existing id is still a conflict.
    record_step("sold fish")
    drain(settings, lambda: count(database_url, "ingest_conflicts") == 1, "the conflicting memory")
    assert fetch(database_url, "SELECT table_name FROM ingest_conflicts") == [("agent_memories",)]
    p.close()
