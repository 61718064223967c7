"""Bad input raises at the call site, names the field, and sends nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import math

import pytest
from confluent_kafka import Consumer, TopicPartition

from producers import InvalidRecordError, KafkaDatabaseHandler, tables
from support.pipeline import producer

pytestmark = pytest.mark.integration

GOOD_MEMORY = {"content": "ok", "importance": 0.5, "tags": ["a"], "related_agent_id": None, "timestamp": 1.0}


def end_offsets(bootstrap: str, prefix: str) -> dict[str, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-probe"})
    try:
        out = {}
        for table in tables.TABLES:
            topic = tables.topic_for(prefix, table)
            parts = c.list_topics(topic, timeout=30).topics[topic].partitions
            out[table] = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts)
        return out
    finally:
        c.close()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda p: p.record_memory("agent_0", "x", "3"), "step_timestamp"),
        (lambda p: p.record_memory("agent_0", "x", -1), "step_timestamp"),
        (lambda p: p.record_memory("agent_0", None, 1), "content"),
        (lambda p: p.record_memory("agent_0", "x", 1, importance=math.nan), "importance"),
        (lambda p: p.record_memory("agent_0", "x", 1, importance=1.5), "importance"),
        (lambda p: p.record_memory("a" * 256, "x", 1), "agent_id_str"),
        (lambda p: p.record_memory("agent_0", "x", 1, tags=["ok", 7]), "tags.1"),
        (lambda p: p.record_memory("agent_0", "x", 1, timestamp=dt.datetime(2026, 1, 1)), "real_timestamp"),
        (lambda p: p.record_memory("agent_0", "nul\x00byte", 1), "content"),
        (lambda p: p.record_market_transaction("t1", 1, market_id="m", resource_type="f" * 51, buyer_id="a",
                                               seller_id="b", quantity=1, price_per_unit=1, total_cost=1),
         "resource_type"),
        (lambda p: p.record_market_transaction("t1", 1, market_id="m", resource_type="food", buyer_id="a",
                                               seller_id="b", quantity="1", price_per_unit=1, total_cost=1),
         "quantity"),
        (lambda p: p.record_bank_transaction("t1", 1, account_id="x", agent_id="a", transaction_type="deposit",
                                             amount=math.inf, balance_after=1), "amount"),
        (lambda p: p.record_event("E" * 101, 1), "event_type"),
        (lambda p: p.record_event("E", 1, details="{not json"), "details"),
        (lambda p: p.record_agent("agent_0", step=True), "creation_step"),
    ],
)
def test_bad_record_raises_and_sends_nothing(services, topic_prefix, call, field):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    with pytest.raises(InvalidRecordError) as info:
        call(p)
    assert info.value.field == field
    assert field.split(".")[0] in str(info.value)
    p.flush()
    sent = p.stats().sent
    p.close()
    assert sum(sent.values()) == 1  # the run start only
    assert end_offsets(services.bootstrap, topic_prefix) == {**dict.fromkeys(tables.TABLES, 0), "simulation_runs": 1}


def test_handler_rejects_bad_simulation_data(services, topic_prefix):
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix)

    async def scenario() -> list[str]:
        await handler.start_simulation_run()
        fields = []
        for bad in ({"importance": 2.0}, {"content": None}, {"tags": [None]}):
            with pytest.raises(InvalidRecordError) as info:
                await handler.save_agent_memory(agent_id="agent_0", memory_data={**GOOD_MEMORY, **bad}, step=1)
            fields.append(info.value.field)
        with pytest.raises(InvalidRecordError) as info:
            await handler.save_market_transaction({"transaction_id": "t"}, step=1)
        fields.append(info.value.field)
        return fields

    assert asyncio.run(scenario()) == ["importance", "content", "tags.0", "market_id"]
    handler.producer.close()
    assert end_offsets(services.bootstrap, topic_prefix)["agent_memories"] == 0
