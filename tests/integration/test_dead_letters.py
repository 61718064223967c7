"""Poison records cost one dead letter each, with the reason; every good record loads."""

from __future__ import annotations

import datetime as dt
import os
import uuid

import pytest
from confluent_kafka import Producer

from consumers import dead_letters, dlq
from producers import AvroCodec, tables
from producers.codec import MAGIC
from support.db import count
from support.pipeline import codec_lacking_newest_memory_schema, drain, producer, record_memories, worker_settings

pytestmark = pytest.mark.integration

GOOD = 200


def _memory(run_id: uuid.UUID, **overrides) -> dict:
    rec = {
        "memory_id": uuid.uuid4(), "agent_id_str": "agent_0", "simulation_run_id": run_id, "step_timestamp": 1,
        "real_timestamp": dt.datetime.now(dt.timezone.utc), "content": "fine", "importance": 0.5,
        "tags": None, "related_agent_id": None,
    }
    rec.update(overrides)
    return rec


def poison_messages(codec: AvroCodec, run_id: uuid.UUID) -> dict[str, tuple[str, bytes, set[str], set[str]]]:
    """name -> (table, bytes, error classes with validation, error classes without)."""
    good = codec.encode("agent_memories", _memory(run_id))
    bad_event = {
        "event_uid": uuid.uuid4(), "simulation_run_id": run_id, "step_timestamp": 1, "real_timestamp": None,
        "event_type": "X", "agent_id_primary": None, "agent_id_secondary": None,
        "details": '{"text": "\\u0000"}', "description": None,
    }
    invalid = {"InvalidRecordError"}
    return {
        "random bytes": ("agent_memories", os.urandom(64), {"MalformedRecordError"}, {"MalformedRecordError"}),
        "truncated avro": ("agent_memories", good[:-7], {"MalformedRecordError"}, {"MalformedRecordError"}),
        "unknown fingerprint": ("agent_memories", MAGIC + b"\x01" * 8 + good[10:], {"UnknownSchemaError"},
                                {"UnknownSchemaError"}),
        "check violation": ("agent_memories", codec.encode("agent_memories", _memory(run_id, importance=1.5)),
                            invalid, {"CheckViolation"}),
        "nul byte": ("agent_memories", codec.encode("agent_memories", _memory(run_id, content="a\x00b")),
                     invalid, {"CharacterNotInRepertoire", "UntranslatableCharacter"}),
        "oversized value": ("agent_memories", codec.encode("agent_memories", _memory(run_id, agent_id_str="x" * 300)),
                            invalid, {"StringDataRightTruncation"}),
        "jsonb nul escape": ("simulation_events", codec.encode("simulation_events", bad_event),
                             invalid, {"UntranslatableCharacter"}),
        "wrong topic": ("market_transactions", good, {"MalformedRecordError"}, {"MalformedRecordError"}),
    }


@pytest.mark.parametrize("validate", [True, False], ids=["validating", "database-only"])
def test_poison_records_are_isolated(services, database_url, topic_prefix, validate):
    codec = AvroCodec()
    p = producer(services.bootstrap, topic_prefix)
    run_id = p.start_run()
    raw = Producer({"bootstrap.servers": services.bootstrap})
    poison = poison_messages(codec, run_id)
    for i in range(GOOD):
        p.record_memory(f"agent_{i % 10}", f"memory {i}", i // 10)
        p.record_event("AGENT_MOVED", i // 10, agent_id_primary=f"agent_{i % 10}")
        if i % 25 == 0:  # poison spread through the stream
            name = list(poison)[i // 25]
            table, value, _, _ = poison[name]
            raw.produce(tables.topic_for(topic_prefix, table), value, key=name.encode())
    assert raw.flush(30) == 0
    p.end_run()
    p.close()

    settings = worker_settings(services.bootstrap, database_url, topic_prefix, validate_records=validate)
    stats = drain(
        settings,
        lambda: count(database_url, "agent_memories") == GOOD and count(database_url, "simulation_events") == GOOD
        and len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == len(poison),
        "good rows loaded and poison dead-lettered",
    )
    assert stats.dead_lettered == len(poison)
    letters = {d.key.decode(): d for d in dead_letters.read_dead_letters(services.bootstrap, topic_prefix)}
    assert set(letters) == set(poison)
    for name, (table, value, with_validation, without) in poison.items():
        d = letters[name]
        assert d.error_class in (with_validation if validate else without), (name, d.error_class, d.message)
        assert d.message
        assert d.value == value  # the original bytes, for a later redrive
        assert d.headers[dlq.H_TOPIC] == tables.topic_for(topic_prefix, table)
        assert d.headers[dlq.H_PARTITION].isdigit() and d.headers[dlq.H_OFFSET].isdigit()
        assert d.headers[dlq.H_WORKER] == settings.worker_id
    summary = dict(((t, e), n) for t, e, n in dead_letters.summarize(list(letters.values())))
    assert sum(summary.values()) == len(poison)
    loaded = count(database_url, "agent_memories") + count(database_url, "simulation_events")
    print(f"\n[poison, {'validating' if validate else 'database-only'}] produced={2 * GOOD + len(poison)} "
          f"loaded={loaded} dead-lettered={len(letters)}")


def test_redrive_after_a_fix(services, database_url, topic_prefix, tmp_path):
    # A worker deployed without the newest memory schema dead-letters v2 records...
    record_memories(services.bootstrap, topic_prefix, 20)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    drain(settings, lambda: len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == 20,
          "20 dead letters", codec=codec_lacking_newest_memory_schema(tmp_path))
    assert count(database_url, "agent_memories") == 0

    dry = dead_letters.redrive(services.bootstrap, database_url, topic_prefix, dry_run=True)
    assert (dry.selected, dry.already_redriven, dry.sent) == (20, 0, 0)
    sent = dead_letters.redrive(services.bootstrap, database_url, topic_prefix, table="agent_memories")
    assert sent.sent == 20
    again = dead_letters.redrive(services.bootstrap, database_url, topic_prefix)
    assert (again.selected, again.already_redriven, again.sent) == (20, 20, 0)
    # ...and after the fix (the current schemas), the redriven records load.
    drain(settings, lambda: count(database_url, "agent_memories") == 20, "redriven rows")
