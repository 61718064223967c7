"""No single message, however large, stops a worker: too large to dead-letter whole, it goes by reference."""

from __future__ import annotations

import hashlib
import os

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from consumers import dead_letters, dlq
from consumers.topics import admin_client
from producers import AvroCodec, tables
from support.db import count
from support.pipeline import drain, producer, worker_settings

pytestmark = pytest.mark.integration

GOOD = 30


def _stream_with_poison(services, prefix: str, poison: bytes) -> None:
    """GOOD memories, the poison in the middle of the memories topic, then GOOD more."""
    p = producer(services.bootstrap, prefix)
    p.start_run()
    raw = Producer({"bootstrap.servers": services.bootstrap, "message.max.bytes": 2_000_000})
    for i in range(2 * GOOD):
        if i == GOOD:
            p.flush()
            raw.produce(tables.topic_for(prefix, "agent_memories"), poison, key=b"agent_0")
            assert raw.flush(30) == 0
        p.record_memory("agent_0", f"memory {i}", i)
    p.end_run()
    p.close()


def _check_reference(letter: dead_letters.StoredDeadLetter, poison: bytes, prefix: str) -> None:
    h = letter.headers
    assert letter.value is None
    assert h[dlq.H_BY_REFERENCE] == "true"
    assert int(h[dlq.H_SIZE]) == len(poison)
    assert h[dlq.H_SHA256] == hashlib.sha256(poison).hexdigest()
    assert h[dlq.H_HEAD] == poison[: dlq.HEAD_BYTES].hex()
    assert h[dlq.H_TOPIC] == tables.topic_for(prefix, "agent_memories")
    assert h[dlq.H_OFFSET].isdigit() and letter.error_class == "MalformedRecordError"


def test_a_message_too_large_to_dead_letter_goes_by_reference(services, database_url, topic_prefix):
    # 1,020,000 bytes: the broker's default limit (1,048,588) accepts it on the table topic,
    # the dead-letter producer's (1,000,000) cannot send it whole.
    poison = os.urandom(1_020_000)
    _stream_with_poison(services, topic_prefix, poison)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    stats = drain(settings, lambda: count(database_url, "agent_memories") == 2 * GOOD
                  and len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == 1,
                  "every good memory loaded and one dead letter")
    assert stats.dead_lettered == 1
    [letter] = dead_letters.read_dead_letters(services.bootstrap, topic_prefix)
    _check_reference(letter, poison, topic_prefix)
    shown = dead_letters.decode_for_display(letter, AvroCodec())
    assert f"{len(poison)} bytes" in shown and hashlib.sha256(poison).hexdigest() in shown
    # Its bytes are only in the original topic: a redrive leaves it alone rather than send an empty message.
    result = dead_letters.redrive(services.bootstrap, database_url, topic_prefix)
    assert (result.selected, result.by_reference, result.sent) == (1, 1, 0)


def test_a_dead_letter_topic_with_a_smaller_limit_gets_a_reference(services, database_url, topic_prefix):
    # The broker refuses the letter (the DLQ topic allows 50,000 bytes): the worker sends a reference.
    admin = admin_client(services.bootstrap)
    resource = ConfigResource(
        ConfigResource.Type.TOPIC, tables.dlq_topic(topic_prefix),
        incremental_configs=[ConfigEntry("max.message.bytes", "50000",
                                         incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    poison = b"\x00" * 10 + os.urandom(200_000)
    _stream_with_poison(services, topic_prefix, poison)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    drain(settings, lambda: count(database_url, "agent_memories") == 2 * GOOD
          and len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == 1,
          "every good memory loaded and one dead letter")
    [letter] = dead_letters.read_dead_letters(services.bootstrap, topic_prefix)
    _check_reference(letter, poison, topic_prefix)


def test_letters_that_fit_one_by_one_are_sent_whole_when_their_batch_does_not(services, database_url, topic_prefix):
    # 100 letters of ~1 KB against a 20,000-byte DLQ topic: one batch of them is refused, each alone fits.
    admin = admin_client(services.bootstrap)
    resource = ConfigResource(
        ConfigResource.Type.TOPIC, tables.dlq_topic(topic_prefix),
        incremental_configs=[ConfigEntry("max.message.bytes", "20000", incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    raw = Producer({"bootstrap.servers": services.bootstrap, "linger.ms": 50})
    for i in range(100):
        raw.produce(tables.topic_for(topic_prefix, "agent_memories"), os.urandom(1000), key=b"agent_0")
    assert raw.flush(30) == 0
    for i in range(20):
        p.record_memory("agent_0", f"memory {i}", i)
    p.end_run()
    p.close()
    drain(worker_settings(services.bootstrap, database_url, topic_prefix),
          lambda: count(database_url, "agent_memories") == 20
          and len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == 100,
          "every good memory loaded and 100 dead letters")
    letters = dead_letters.read_dead_letters(services.bootstrap, topic_prefix)
    assert not any(d.by_reference for d in letters)
    assert all(len(d.value) == 1000 for d in letters)
