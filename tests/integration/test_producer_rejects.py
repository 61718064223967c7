"""Bad input raises at the call site, names the field, and sends nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re

import pytest
from confluent_kafka import Consumer, TopicPartition

from producers import InvalidRecordError, KafkaDatabaseHandler, ids, tables
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
        # Issue 6, case 8: call shapes that used to raise errors naming no field.
        (lambda p: p.record_memory("agent_\ud800", "x", 1), "agent_id_str"),  # UnicodeEncodeError in the id
        (lambda p: p.record_event("E", 1, agent_id_primary="\udc00"), "agent_id_primary"),
        (lambda p: p.record_memory(["agent_0"], "x", 1), "agent_id_str"),  # TypeError: unhashable
        (lambda p: p.record_event("E", 1, agent_id_primary={"a": 1}), "agent_id_primary"),
        (lambda p: p.record_memory("agent_0", "x", 1, tags={"b", "a"}), "tags"),  # was listed in hash order
        (lambda p: p.record_event("E", 1, details={"price": math.nan}), "details"),  # ValueError from json
        (lambda p: p.record_event("E", 1, details={"raw": b"x"}), "details"),  # TypeError from json
        (lambda p: p.record_event("E", 1, details={"seen": {1, 2}}), "details"),
        (lambda p: p.record_event("E", 1, details=cyclic()), "details"),
        (lambda p: p.record_event("E", 1, details=deep(5000)), "details"),  # RecursionError
        (lambda p: p.record_event("E", 1, details={"when": object()}), "details"),
        (lambda p: p.send("nope", {}), "table"),  # KeyError
        # Case 4b: valid fields, but over Kafka's message size (was librdkafka's MSG_SIZE_TOO_LARGE).
        (lambda p: p.record_memory("agent_0", "x", 1, tags=["t" * 255] * 10_000), "<record>"),
        (lambda p: p.send(["agent_memories"], {}), "table"),
        (lambda p: p.send("agent_memories", ["x"]), "record"),
    ],
)
def test_bad_record_raises_and_sends_nothing(services, topic_prefix, call, field):
    p = producer(services.bootstrap, topic_prefix)
    run_id = p.start_run()
    with pytest.raises(InvalidRecordError) as info:
        call(p)
    assert info.value.field == field
    assert field.split(".")[0] in str(info.value)
    if field == "<record>":
        assert re.search(r"encoded record is [\d,]{9,} bytes, over the 1,000,000-byte message limit "
                         r"\(max_message_bytes\); largest field: tags", str(info.value))
    p.flush()
    assert sum(p.stats().sent.values()) == 1  # the run start only
    assert end_offsets(services.bootstrap, topic_prefix) == {**dict.fromkeys(tables.TABLES, 0), "simulation_runs": 1}
    # ...and took no sequence number: the next good records are numbered 0.
    assert p.record_memory("agent_0", "ok", 1) == ids.memory_id(run_id, "agent_0", 1, 0)
    assert p.record_event("E", 1) == ids.event_uid(run_id, 1, "", 0)
    p.close()


def cyclic() -> dict:
    d: dict = {"a": []}
    d["a"].append(d)
    return d


def deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("snapshot", "where"),
    [({"seed": math.inf}, 'config_snapshot["seed"]'), ({"models": {"gpt"}}, 'config_snapshot["models"]'),
     (cyclic(), 'config_snapshot["a"][0]'), ({"when": dt.timezone.utc}, 'config_snapshot["when"]')],
)
def test_bad_config_snapshot_raises_and_starts_no_run(services, topic_prefix, snapshot, where):
    p = producer(services.bootstrap, topic_prefix)
    with pytest.raises(InvalidRecordError, match=f"^simulation_runs.config_snapshot: .* at {re.escape(where)}"):
        p.start_run(snapshot)
    assert p.run_id is None
    p.close()
    assert end_offsets(services.bootstrap, topic_prefix) == dict.fromkeys(tables.TABLES, 0)


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


@pytest.mark.parametrize(
    ("call", "field"),
    [
        # Issue 6, case 8: AttributeError, UnicodeEncodeError, RecursionError... used to name no field.
        (lambda h: h.save_agent_memory("agent_0", ["content"], 1), "memory_data"),
        (lambda h: h.save_agent_memory("agent_0", None, 1), "memory_data"),
        (lambda h: h.save_agent_memory("agent_0", "content", 1), "memory_data"),
        (lambda h: h.save_agent_memory("agent_\ud800", GOOD_MEMORY, 1), "agent_id_str"),
        (lambda h: h.save_agent_memory(["agent_0"], GOOD_MEMORY, 1), "agent_id_str"),  # was sent as "['agent_0']"
        (lambda h: h.save_agent_memory("agent_0", {**GOOD_MEMORY, "tags": {"a", "b"}}, 1), "tags"),
        (lambda h: h.save_agent_memory("agent_0", {**GOOD_MEMORY, "content": b"bytes"}, 1), "content"),
        (lambda h: h.save_market_transaction(None, 1), "transaction_data"),
        (lambda h: h.save_banking_transaction([], 1, "agent_0"), "transaction_data"),
        (lambda h: h.save_simulation_event("E", 1, details=cyclic()), "details"),
        (lambda h: h.save_simulation_event("E", 1, details=deep(5000)), "details"),
        (lambda h: h.save_simulation_event("E", 1, details={"x": math.nan}), "details"),  # was sent as null
        (lambda h: h.save_simulation_event("E", 1, details={"x": {3, 1}}), "details"),  # was a list in any order
        (lambda h: h.save_simulation_event("E", 1, details={"x": b"raw"}), "details"),  # was "b'raw'"
        (lambda h: h.save_simulation_event("E", 1, agent_id_primary=object()), "agent_id_primary"),
    ],
)
def test_handler_rejects_bad_call_shapes_naming_the_field(services, topic_prefix, call, field):
    handler = KafkaDatabaseHandler(bootstrap_servers=services.bootstrap, topic_prefix=topic_prefix)

    async def scenario() -> InvalidRecordError:
        run_id = await handler.start_simulation_run()
        with pytest.raises(InvalidRecordError) as info:
            await call(handler)
        # Nothing taken: the next good records are numbered 0.
        assert await handler.save_agent_memory("agent_0", GOOD_MEMORY, 1) == str(ids.memory_id(run_id, "agent_0", 1, 0))
        assert await handler.save_simulation_event("E", 1) == str(ids.event_uid(run_id, 1, "", 0))
        return info.value

    error = asyncio.run(scenario())
    assert error.field == field and field in str(error)
    handler.producer.close()
    assert end_offsets(services.bootstrap, topic_prefix) == {
        **dict.fromkeys(tables.TABLES, 0), "simulation_runs": 1, "agent_memories": 1, "simulation_events": 1}
