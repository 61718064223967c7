"""Reading a table topic back whole, as the tests check what producers put there."""

from __future__ import annotations

from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from producers import tables


def topic_messages(bootstrap: str, prefix: str, table: str) -> list[Any]:
    """Every message on `<prefix>.<table>` (confluent-kafka Messages), read until each partition's end offset."""
    topic = tables.topic_for(prefix, table)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-read", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
        remaining = {p: end for p, end in ends.items() if end > 0}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        out = []
        while remaining:
            msg = c.poll(30)
            assert msg is not None, f"{topic}: nothing to read before the end offsets {ends}"
            assert msg.error() is None, msg.error()
            out.append(msg)
            if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                remaining.pop(msg.partition(), None)
        return out
    finally:
        c.close()
