"""The record_* fast path on a real broker: the bytes and keys on the topics are the reference path's.

The reference: each record validated by its pydantic model, keyed by
``tables.message_key`` and encoded by the codec, with the same ids and times.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from producers import AvroCodec, KafkaDatabaseHandler, ids, tables
from producers.models import validate_record
from support.pipeline import producer
from support.topics import topic_messages

pytestmark = pytest.mark.integration

AT = dt.datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)


def raw_messages(bootstrap: str, prefix: str, table: str) -> list[tuple[str, bytes]]:
    """(key, value) of every message on `<prefix>.<table>`."""
    return [(m.key().decode(), m.value()) for m in topic_messages(bootstrap, prefix, table)]


def reference(codec: AvroCodec, table: str, record: dict[str, Any]) -> tuple[str, bytes]:
    fields = validate_record(table, record)
    return tables.message_key(table, fields), codec.encode(table, fields)


def test_records_on_the_topics_are_the_reference_bytes(services, topic_prefix):
    codec = AvroCodec()
    p = producer(services.bootstrap, topic_prefix)
    run = p.start_run({"seed": 1})
    memory = p.record_memory("agent_é", "Sold bread 😀", 3, importance=0.25, tags=["trade", "é"],
                             related_agent_id="agent_2", timestamp=AT)
    event = p.record_event("trade", 3, agent_id_primary="agent_é", details={"price": 2.5, "items": [1, None]},
                           description="a trade", timestamp=AT)
    anonymous = p.record_event("weather", 3, details='{"rain": true}', timestamp=AT)
    p.record_market_transaction("mt_1", 3, market_id="market_food", resource_type="food", buyer_id="agent_1",
                                seller_id="agent_0", quantity=4, price_per_unit=2.5, total_cost=10.0,
                                buy_order_id="b1", timestamp=AT)
    p.record_bank_transaction("bt_1", 3, account_id="acct_1", agent_id="agent_1", transaction_type="deposit",
                              amount=12.75, balance_after=100, description="wage", timestamp=AT)
    p.record_agent("agent_é", persona="a baker", agent_type="trader", step=0)
    p.close()

    assert (memory, event, anonymous) == (ids.memory_id(run, "agent_é", 3, 0), ids.event_uid(run, 3, "agent_é", 0),
                                          ids.event_uid(run, 3, "", 0))
    child = {"simulation_run_id": run, "step_timestamp": 3, "real_timestamp": AT}
    expected = {
        tables.AGENT_MEMORIES: reference(codec, tables.AGENT_MEMORIES, {
            **child, "memory_id": memory, "agent_id_str": "agent_é", "content": "Sold bread 😀", "importance": 0.25,
            "tags": ["trade", "é"], "related_agent_id": "agent_2"}),
        tables.MARKET_TRANSACTIONS: reference(codec, tables.MARKET_TRANSACTIONS, {
            **child, "transaction_sim_id": "mt_1", "market_id": "market_food", "resource_type": "food",
            "buyer_agent_id": "agent_1", "seller_agent_id": "agent_0", "quantity": 4, "price_per_unit": 2.5,
            "total_cost": 10.0, "buy_order_id": "b1"}),
        tables.BANKING_TRANSACTIONS: reference(codec, tables.BANKING_TRANSACTIONS, {
            **child, "transaction_sim_id": "bt_1", "account_id": "acct_1", "agent_id_str": "agent_1",
            "transaction_type": "deposit", "amount": 12.75, "balance_after": 100, "description": "wage"}),
    }
    for table, message in expected.items():
        assert raw_messages(services.bootstrap, topic_prefix, table) == [message], table
    events = sorted(raw_messages(services.bootstrap, topic_prefix, tables.SIMULATION_EVENTS))
    assert events == sorted([
        reference(codec, tables.SIMULATION_EVENTS, {**child, "event_uid": event, "event_type": "trade",
                  "agent_id_primary": "agent_é", "details": '{"price":2.5,"items":[1,null]}',
                  "description": "a trade"}),
        reference(codec, tables.SIMULATION_EVENTS, {**child, "event_uid": anonymous, "event_type": "weather",
                  "details": '{"rain": true}'}),
    ])
    [(key, value)] = raw_messages(services.bootstrap, topic_prefix, tables.AGENTS)
    agent = codec.decode(value).record  # updated_at is the time of the call
    assert key == str(run)
    assert (key, value) == reference(codec, tables.AGENTS, {**agent, "creation_run_id": run})
    assert agent["agent_id_str"] == "agent_é" and agent["creation_step"] == 0


def test_the_handler_sends_the_reference_bytes(services, topic_prefix):
    codec = AvroCodec()
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix)

    async def simulate() -> tuple[uuid.UUID, str, str]:
        run = uuid.UUID(await handler.start_simulation_run({"agents": 1}))
        memory = await handler.save_agent_memory("agent_0", {"content": "hello", "importance": 0.5, "tags": ["x"],
                                                             "timestamp": AT.timestamp()}, 4)
        event = await handler.save_simulation_event("trade", 4, "agent_0", details={"price": 3})
        await handler.end_simulation_run("completed")
        return run, memory, event

    run, memory, event = asyncio.run(simulate())
    assert memory == str(ids.memory_id(run, "agent_0", 4, 0)) and event == str(ids.event_uid(run, 4, "agent_0", 0))
    [message] = raw_messages(services.bootstrap, topic_prefix, tables.AGENT_MEMORIES)
    assert message == reference(codec, tables.AGENT_MEMORIES, {
        "memory_id": uuid.UUID(memory), "agent_id_str": "agent_0", "simulation_run_id": run, "step_timestamp": 4,
        "real_timestamp": AT, "content": "hello", "importance": 0.5, "tags": ["x"]})
    [(key, value)] = raw_messages(services.bootstrap, topic_prefix, tables.SIMULATION_EVENTS)
    decoded = codec.decode(value).record
    assert key == f"{run}/agent_0" and decoded["details"] == '{"price":3}'
    assert (key, value) == reference(codec, tables.SIMULATION_EVENTS, decoded)
