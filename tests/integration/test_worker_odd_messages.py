"""Messages a producer other than ours may send: a Kafka timestamp past year 9999, custom headers."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from consumers import dead_letters, dlq
from consumers.topics import admin_client
from producers import AvroCodec, tables
from producers.codec import MAGIC
from support.db import count
from support.pipeline import drain, wait_for, worker_settings

pytestmark = pytest.mark.integration

#: 10000-01-01T00:00:00Z in ms: one past what Python's datetime holds.
YEAR_10000_MS = 253_402_300_800_000


def _memory(run_id: uuid.UUID, content: str, real_timestamp: dt.datetime | None) -> dict:
    return {"memory_id": uuid.uuid4(), "agent_id_str": "agent_0", "simulation_run_id": run_id, "step_timestamp": 1,
            "real_timestamp": real_timestamp, "content": content, "importance": 0.5, "tags": None,
            "related_agent_id": None}


def _allow_any_timestamp(bootstrap: str, topic: str) -> None:
    admin = admin_client(bootstrap)
    entry = ConfigEntry("message.timestamp.after.max.ms", str(2**63 - 1),
                        incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def _deliver(raw: Producer, topic: str, value: bytes, key: bytes, **kwargs) -> None:
    """Produce until the broker takes it (a topic's new config reaches the partition leaders a bit later)."""
    errors: list = []

    def sent() -> bool:
        errors.clear()
        raw.produce(topic, value, key, on_delivery=lambda err, _msg: errors.append(err), **kwargs)
        raw.flush(30)
        return errors == [None]

    wait_for(sent, f"the broker to take {key!r}")


@pytest.mark.parametrize("validate", [True, False], ids=["validating", "database-only"])
def test_a_kafka_timestamp_past_year_9999_without_real_timestamp_is_dead_lettered(
        services, database_url, topic_prefix, validate):
    codec = AvroCodec()
    run_id = uuid.uuid4()
    topic = tables.topic_for(topic_prefix, "agent_memories")
    _allow_any_timestamp(services.bootstrap, topic)
    raw = Producer({"bootstrap.servers": services.bootstrap})
    now = dt.datetime.now(dt.timezone.utc)
    _deliver(raw, topic, codec.encode("agent_memories", _memory(run_id, "future", None)), b"future",
             partition=0, timestamp=YEAR_10000_MS)
    # The same time sent as real_timestamp is not needed: a record that has one loads whatever its Kafka time.
    _deliver(raw, topic, codec.encode("agent_memories", _memory(run_id, "dated", now)), b"dated",
             partition=0, timestamp=YEAR_10000_MS)
    for i in range(20):
        raw.produce(topic, codec.encode("agent_memories", _memory(run_id, f"good {i}", None if i % 2 else now)),
                    f"good {i}".encode(), partition=i % 3)
    assert raw.flush(30) == 0

    settings = worker_settings(services.bootstrap, database_url, topic_prefix, validate_records=validate)
    stats = drain(settings, lambda: count(database_url, "agent_memories") == 21
                  and len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == 1,
                  "good rows loaded and the future one dead-lettered")
    assert stats.dead_lettered == 1
    [letter] = dead_letters.read_dead_letters(services.bootstrap, topic_prefix)
    assert letter.key == b"future"
    assert letter.headers[dlq.H_ERROR_CLASS] == "InvalidRecordError"
    assert "real_timestamp" in letter.headers[dlq.H_ERROR_MESSAGE]
    assert str(YEAR_10000_MS) in letter.headers[dlq.H_ERROR_MESSAGE]
    assert letter.headers[dlq.H_TIMESTAMP] == str(YEAR_10000_MS)


@pytest.mark.parametrize("version", ["current", "older"])
def test_dead_letters_carry_the_original_headers(services, database_url, topic_prefix, version):
    """Both paths: the transcoder (current schema) and the general one (an older schema version)."""
    codec = AvroCodec()
    topic = tables.topic_for(topic_prefix, "agent_memories")
    raw = Producer({"bootstrap.servers": services.bootstrap})
    if version == "current":
        bad = codec.encode("agent_memories", {**_memory(uuid.uuid4(), "fine", None), "importance": 0.5})
        bad = bad.replace(b"\x08fine", b"\x08f\x00ne", 1)  # a NUL in the content: invalid, once decoded
    else:
        old = next(v for v in codec.versions["agent_memories"] if v is not codec.current["agent_memories"])
        bad = MAGIC + old.fingerprint + b"\xff"  # an older version's payload, corrupt
    headers = [("trace-id", b"abc-123"), ("binary", b"\x00\xff"), ("trace-id", b"second"),
               ("error.class", b"forged"), ("original.topic", b"forged"), ("worker.id", b"forged")]
    raw.produce(topic, bad, b"bad", headers=headers)
    raw.produce(topic, codec.encode("agent_memories", _memory(uuid.uuid4(), "good", None)), b"good")
    assert raw.flush(30) == 0

    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    drain(settings, lambda: count(database_url, "agent_memories") == 1
          and len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == 1, "one row, one letter")
    consumer = _dlq_consumer(services.bootstrap, topic_prefix)
    [letter] = wait_for(lambda: _poll_all(consumer), "the dead letter")
    got = letter.headers()
    names = [k for k, _ in got]
    assert names[:8] == [dlq.H_ERROR_CLASS, dlq.H_ERROR_MESSAGE, dlq.H_TABLE, dlq.H_TOPIC, dlq.H_PARTITION,
                         dlq.H_OFFSET, dlq.H_TIMESTAMP, dlq.H_WORKER]
    assert got[8:] == [("trace-id", b"abc-123"), ("binary", b"\x00\xff"), ("trace-id", b"second")]
    own = dict(got[:8])
    assert own[dlq.H_TOPIC] == topic.encode() and own[dlq.H_WORKER] == settings.worker_id.encode()
    assert own[dlq.H_ERROR_CLASS] == {"current": b"InvalidRecordError", "older": b"MalformedRecordError"}[version]
    assert letter.value() == bad
    consumer.close()


def _dlq_consumer(bootstrap: str, prefix: str):
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-headers",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([tables.dlq_topic(prefix)])
    return consumer


def _poll_all(consumer) -> list | None:
    messages = [m for m in consumer.consume(10, timeout=1.0) if m.error() is None]
    return messages or None
