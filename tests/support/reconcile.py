"""Exact reconciliation: every produced record is in its table once, or dead-lettered once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumers import dead_letters
from producers import tables
from support.db import fetch
from support.workload import Produced

KEY_SQL = {
    "agent_memories": "SELECT memory_id FROM agent_memories",
    "simulation_events": "SELECT event_uid FROM simulation_events",
    "market_transactions": "SELECT transaction_sim_id FROM market_transactions",
    "banking_transactions": "SELECT transaction_sim_id FROM banking_transactions",
}


@dataclass(frozen=True)
class Reconciliation:
    produced: int
    loaded: int
    dead_lettered: int

    def line(self) -> str:
        return f"produced={self.produced} loaded={self.loaded} dead-lettered={self.dead_lettered}"


def end_offsets(bootstrap: str, prefix: str) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-reconcile"})
    try:
        out = {}
        for table in tables.TABLES:
            topic = tables.topic_for(prefix, table)
            for p in c.list_topics(topic, timeout=30).topics[topic].partitions:
                out[(topic, p)] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
        return out
    finally:
        c.close()


KEY_FIELD = {
    "agent_memories": "memory_id",
    "simulation_events": "event_uid",
    "market_transactions": "transaction_sim_id",
    "banking_transactions": "transaction_sim_id",
}


def locate_in_kafka(bootstrap: str, prefix: str, table: str, keys: set) -> dict:
    """Where (partition, offset) each key sits in its topic, or 'not in Kafka': tells a lost send from a skip."""
    from confluent_kafka import OFFSET_BEGINNING

    from producers import AvroCodec

    codec = AvroCodec()
    topic = tables.topic_for(prefix, table)
    ends = {p: e for (t, p), e in end_offsets(bootstrap, prefix).items() if t == topic and e > 0}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-locate", "enable.auto.commit": False})
    found: dict = {}
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        remaining = dict(ends)
        while remaining:
            msg = c.poll(30)
            if msg is None:
                break
            if msg.error():
                continue
            key = codec.decode(msg.value()).record[KEY_FIELD[table]]
            if key in keys:
                found[str(key)] = (msg.partition(), msg.offset())
            if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                remaining.pop(msg.partition(), None)
    finally:
        c.close()
    return {str(k): found.get(str(k), "not in Kafka") for k in keys}


def all_committed(url: str, bootstrap: str, prefix: str, group: str) -> bool:
    """True when the group's stored offsets reach the end of every non-empty partition.

    False, not an error, while the broker cannot answer yet (just after a restart).
    """
    try:
        ends = end_offsets(bootstrap, prefix)
    except KafkaException:
        return False
    stored = {(t, p): o for t, p, o in fetch(
        url, "SELECT topic, kafka_partition, next_offset FROM ingest_offsets WHERE consumer_group = %s", (group,))}
    return all(stored.get(tp, 0) == end for tp, end in ends.items() if end > 0)


def reconcile(url: str, bootstrap: str, prefix: str, group: str, produced: Produced) -> Reconciliation:
    """Assert the exact outcome and return the counts."""
    letters = dead_letters.read_dead_letters(bootstrap, prefix)
    assert not letters, f"unexpected dead letters: {[(d.origin, d.error_class, d.message) for d in letters[:5]]}"
    loaded = 0
    for table, sql in KEY_SQL.items():
        rows = [k for (k,) in fetch(url, sql)]
        dupes = [k for k, n in Counter(rows).items() if n > 1]
        assert not dupes, f"{table}: loaded twice: {dupes[:5]}"
        missing = produced.keys[table] - set(rows)
        extra = set(rows) - produced.keys[table]
        if missing or extra:
            where = locate_in_kafka(bootstrap, prefix, table, missing)
            raise AssertionError(
                f"{table}: {len(missing)} missing, {len(extra)} unexpected; missing keys in Kafka: {where}"
            )
        loaded += len(rows)
    assert fetch(url, "SELECT count(*) FROM ingest_conflicts")[0][0] == 0
    assert all_committed(url, bootstrap, prefix, group), "stored offsets do not reach the end of every partition"
    return Reconciliation(produced.total, loaded, len(letters))
