"""Every table, recorded through the drop-in handler, lands in PostgreSQL column for column."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import uuid

import numpy as np
import pytest

from producers import KafkaDatabaseHandler
from support.db import count, fetch
from support.pipeline import drain, worker_settings

pytestmark = pytest.mark.integration


class Mood(enum.Enum):
    HAPPY = "happy"


class EventType(enum.Enum):
    AGENT_MARRIAGE = "AGENT_MARRIAGE"


T0 = 1_780_000_000.25  # epoch seconds with a fraction, as the simulation sends
#: Columns later migrations added that no record carries (ddl/0008's search_vector, ddl/0009's load time).
ADDED_BY_THE_DATABASE = ("search_vector", "loaded_at")


def seed_columns(url: str, table: str) -> list[tuple]:
    """Every row of `table` with its columns in table order, without those ADDED_BY_THE_DATABASE."""
    (columns,) = fetch(url, "SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) "
                            "FROM information_schema.columns WHERE table_schema = current_schema() "
                            "AND table_name = %s AND column_name <> ALL(%s)", (table, list(ADDED_BY_THE_DATABASE)))[0]
    return fetch(url, f"SELECT {columns} FROM {table}")


def test_every_table_round_trips(services, database_url, topic_prefix):
    # Built before any event loop exists, as the simulation does.
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix)
    when = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)

    async def scenario() -> tuple[str, str, str]:
        run_id = await handler.start_simulation_run({"agents": 2, "mood": Mood.HAPPY, "grid": (10, 10)})
        handler.producer.record_agent("agent_0", persona="a careful farmer", agent_type="farmer", step=0)
        memory_id = await handler.save_agent_memory(
            agent_id="agent_0",
            memory_data={
                "content": "Sold bread to agent_1 at a good price",
                "importance": 0.75,
                "tags": ["trade", "bread"],
                "related_agent_id": "agent_1",
                "timestamp": T0,
                "processed": False,
                "location": (3, 4),
            },
            step=3,
        )
        await handler.save_market_transaction(
            transaction_data={
                "transaction_id": "mt_1",
                "timestamp": T0,
                "market_id": "market_food",
                "resource_type": "food",
                "buyer_id": "agent_1",
                "seller_id": "agent_0",
                "quantity": 4,
                "price_per_unit": 2.5,
                "total_cost": 10.0,
                "buy_order_id": "bo_1",
                "sell_order_id": "so_1",
                "agent_id": "ignored extra key",
            },
            step=3,
        )
        await handler.save_banking_transaction(
            transaction_data={
                "transaction_id": "bt_1",
                "timestamp": T0,
                "account_id": "acct_agent_0",
                "transaction_type": "deposit",
                "amount": 12.5,
                "balance_after": 112.5,
                "description": "bread money",
                "counterparty_id": "agent_1",
                "reference_id": "mt_1",
            },
            step=3,
            agent_id="agent_0",
        )
        event_uid = await handler.save_simulation_event(
            event_type=EventType.AGENT_MARRIAGE,
            step=4,
            agent_id_primary="agent_0",
            agent_id_secondary="agent_1",
            details={"mood": Mood.HAPPY, "place": ("church", 2), "at": when, "score": None},
            description="agent_0 married agent_1",
        )
        await handler.end_simulation_run("completed")
        return run_id, memory_id, event_uid

    run_id, memory_id, event_uid = asyncio.run(scenario())
    handler.producer.close()
    run = uuid.UUID(run_id)

    drain(
        worker_settings(services.bootstrap, database_url, topic_prefix),
        lambda: all(count(database_url, t) == 1 for t in
                    ("agents", "agent_memories", "market_transactions", "banking_transactions", "simulation_events"))
        and fetch(database_url, "SELECT status FROM simulation_runs")[0][0] == "completed",
        "one row in every table and a completed run",
    )

    ts = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    (r,) = fetch(database_url, "SELECT run_id, config_snapshot, start_time, end_time, status, notes, updated_at FROM simulation_runs")
    assert r[0] == run
    assert r[1] == {"agents": 2, "mood": "happy", "grid": [10, 10]}
    assert r[2] <= r[3] and r[3] == r[6]
    assert (r[4], r[5]) == ("completed", None)

    assert fetch(database_url, "SELECT creation_run_id, agent_id_str, persona, initial_agent_type, creation_step, updated_at IS NOT NULL FROM agents") == [
        (run, "agent_0", "a careful farmer", "farmer", 0, True)
    ]
    assert seed_columns(database_url, "agent_memories") == [
        (uuid.UUID(memory_id), "agent_0", run, 3, ts, "Sold bread to agent_1 at a good price", 0.75, ["trade", "bread"], "agent_1")
    ]
    assert fetch(database_url, "SELECT search_vector::text FROM agent_memories") == [
        ("'1':5 'agent':4 'bread':2 'good':8 'price':9 'sold':1",)
    ]
    (m,) = seed_columns(database_url, "market_transactions")
    assert m[1:] == ("mt_1", run, 3, ts, "market_food", "food", "agent_1", "agent_0", 4.0, 2.5, 10.0, "bo_1", "so_1")
    (b,) = seed_columns(database_url, "banking_transactions")
    assert b[1:] == ("bt_1", run, 3, ts, "acct_agent_0", "agent_0", "deposit", 12.5, 112.5, "bread money", "agent_1", "mt_1")
    (e,) = seed_columns(database_url, "simulation_events")
    assert e[1:8] == (uuid.UUID(event_uid), run, 4, e[4], "AGENT_MARRIAGE", "agent_0", "agent_1")
    assert e[8] == {"mood": "happy", "place": ["church", 2], "at": when.isoformat(), "score": None}
    assert e[9] == "agent_0 married agent_1"
    assert e[4] is not None and e[4].tzinfo is not None
    for table in ("agent_memories", "market_transactions", "banking_transactions", "simulation_events"):
        # Loaded by the worker's COPY without the column: its DEFAULT now() stamped the row.
        assert fetch(database_url, f"SELECT loaded_at > real_timestamp FROM {table}") == [(True,)], table
    assert count(database_url, "ingest_conflicts") == 0
    # The stored offsets account for every record consumed: 2 run states + 5 rows.
    assert fetch(database_url, "SELECT sum(next_offset) FROM ingest_offsets")[0][0] == 7
    json.dumps(r[1])  # config_snapshot is real JSON, not a quoted string


def test_handler_tolerates_missing_optional_keys(services, database_url, topic_prefix):
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix)

    async def scenario() -> None:
        await handler.start_simulation_run()
        await handler.save_agent_memory("agent_0", {"content": "only content"}, 0)
        await handler.save_market_transaction(
            {"transaction_id": 17, "market_id": "m", "resource_type": "food", "buyer_id": "a", "seller_id": "b",
             "quantity": 1, "price_per_unit": 1, "total_cost": 1}, 0)
        await handler.save_banking_transaction(
            {"transaction_id": "b1", "account_id": "acct", "transaction_type": "fee", "amount": -1,
             "balance_after": 0}, 0, "agent_0")
        await handler.save_simulation_event("AGENT_BORN", 0)
        await handler.end_simulation_run()

    asyncio.run(scenario())
    handler.producer.close()
    drain(worker_settings(services.bootstrap, database_url, topic_prefix),
          lambda: count(database_url, "simulation_events") == 1 and count(database_url, "banking_transactions") == 1
          and count(database_url, "market_transactions") == 1 and count(database_url, "agent_memories") == 1,
          "the minimal records")
    assert fetch(database_url, "SELECT importance, tags, related_agent_id FROM agent_memories") == [(None, None, None)]
    assert fetch(database_url, "SELECT transaction_sim_id, buy_order_id FROM market_transactions") == [("17", None)]
    assert fetch(database_url, "SELECT description, counterparty_id FROM banking_transactions") == [(None, None)]
    assert fetch(database_url, "SELECT agent_id_primary, details FROM simulation_events") == [(None, None)]


def test_a_record_written_with_an_older_schema_version_loads(services, database_url, topic_prefix):
    from confluent_kafka import Producer

    from producers import AvroCodec
    from support.pipeline import producer

    p = producer(services.bootstrap, topic_prefix)
    run_id = p.start_run()
    p.close()
    codec = AvroCodec()
    memory_id = uuid.uuid4()
    v1 = codec.encode("agent_memories", {
        "memory_id": memory_id, "agent_id_str": "agent_0", "simulation_run_id": run_id, "step_timestamp": 1,
        "real_timestamp": None, "content": "written by v1", "importance": None, "tags": ["old"],
    }, version=1)
    assert codec.decode(v1).version == 1
    raw = Producer({"bootstrap.servers": services.bootstrap})
    raw.produce(f"{topic_prefix}.agent_memories", v1, key=b"agent_0")
    assert raw.flush(30) == 0
    drain(worker_settings(services.bootstrap, database_url, topic_prefix),
          lambda: count(database_url, "agent_memories") == 1, "the v1 record")
    assert fetch(database_url, "SELECT memory_id, content, tags, related_agent_id FROM agent_memories") == [
        (memory_id, "written by v1", ["old"], None)
    ]
    # A missing event time is filled with the time the producer sent the record.
    (filled,) = fetch(database_url, "SELECT real_timestamp FROM agent_memories")[0]
    assert filled is not None and abs((dt.datetime.now(dt.timezone.utc) - filled).total_seconds()) < 60


def test_numpy_values_from_the_simulation_land_as_plain_numbers(services, database_url, topic_prefix):
    # Mesa models compute with numpy: steps, quantities, prices and event details arrive as numpy types.
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix)

    async def scenario() -> None:
        await handler.start_simulation_run({"seed": np.int64(7), "grid": np.array([[0, 1], [2, 3]])})
        await handler.save_agent_memory("agent_0", {"content": "numpy", "importance": np.float32(0.5),
                                                    "timestamp": np.float64(T0)}, np.int64(2))
        await handler.save_market_transaction(
            {"transaction_id": np.int64(9), "market_id": "m", "resource_type": "food", "buyer_id": "a",
             "seller_id": "b", "quantity": np.int32(3), "price_per_unit": np.float64(1.25),
             "total_cost": np.float32(3.75)}, np.int64(2))
        await handler.save_banking_transaction(
            {"transaction_id": "b1", "account_id": "acct", "transaction_type": "interest",
             "amount": np.float64(0.5), "balance_after": np.float16(100.5)}, np.int32(2), "agent_0")
        await handler.save_simulation_event(
            "RESOURCE_FOUND", np.int64(2), agent_id_primary="agent_0",
            details={"amount": np.int64(4), "ratio": np.float32(0.25), "found": np.bool_(True),
                     "missing": None, np.int64(5): "key", "where": np.array([1.5, 2.5])})
        await handler.end_simulation_run()

    asyncio.run(scenario())
    handler.producer.close()
    drain(worker_settings(services.bootstrap, database_url, topic_prefix),
          lambda: all(count(database_url, t) == 1 for t in
                      ("agent_memories", "market_transactions", "banking_transactions", "simulation_events")),
          "one row in every child table")
    assert fetch(database_url, "SELECT config_snapshot FROM simulation_runs") == [({"seed": 7, "grid": [[0, 1], [2, 3]]},)]
    ts = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    assert fetch(database_url, "SELECT step_timestamp, real_timestamp, importance FROM agent_memories") == [(2, ts, 0.5)]
    assert fetch(database_url, "SELECT transaction_sim_id, step_timestamp, quantity, price_per_unit, total_cost "
                               "FROM market_transactions") == [("9", 2, 3.0, 1.25, 3.75)]
    assert fetch(database_url, "SELECT step_timestamp, amount, balance_after FROM banking_transactions") == [(2, 0.5, 100.5)]
    assert fetch(database_url, "SELECT step_timestamp, details FROM simulation_events") == [
        (2, {"amount": 4, "ratio": 0.25, "found": True, "missing": None, "5": "key", "where": [1.5, 2.5]})
    ]
