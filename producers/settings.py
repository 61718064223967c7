"""Producer configuration: an explicit, frozen model; the library never reads the environment."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from producers.kafka_config import KafkaClientSettings, bootstrap_shorthand
from producers.tables import DEFAULT_TOPIC_PREFIX, TOPIC_PREFIX_PATTERN


class ProducerSettings(BaseModel):
    """How the embedded producer reaches Kafka and how much it may hold locally.

    ``ProducerSettings(bootstrap_servers="host:9092")`` is short for
    ``ProducerSettings(kafka=KafkaClientSettings(bootstrap_servers="host:9092"))``;
    a secured cluster needs the whole ``kafka`` settings (SASL, TLS).
    """

    # Errors never quote the input: it may hold the Kafka password.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kafka: KafkaClientSettings
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, pattern=TOPIC_PREFIX_PATTERN)
    #: The producer's client.id; None: ``<kafka.client_id>-producer``.
    client_id: str | None = None
    # Batching: a few ms of linger turns per-record calls into large compressed batches.
    linger_ms: int = Field(default=20, ge=0)
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    # The local queue bounds memory while the broker is slow or down.
    queue_max_messages: int = Field(default=500_000, ge=1)
    queue_max_kbytes: int = Field(default=512 * 1024, ge=1)
    # How long a record is held (and retried) before it counts as undeliverable.
    message_timeout_ms: int = Field(default=300_000, ge=1)
    #: Largest record accepted, in bytes on the wire: Avro value + key + Kafka's per-record framing.
    #: Checked at the call site (InvalidRecordError naming the table and the size) and passed to
    #: librdkafka as message.max.bytes. The default is librdkafka's; the broker's limit (1 MiB by
    #: default) applies to compressed batches, so raise both together.
    max_message_bytes: int = Field(default=1_000_000, ge=1000, le=1_000_000_000)
    # How long a call may block when the local queue is full before QueueFullError.
    max_block_seconds: float = Field(default=5.0, ge=0)
    #: Memory and event ids count records per (agent, step); counters are kept for this many most
    #: recently used steps (a few KB each at 2,500 agents). Recording for a step that fell out
    #: restarts its numbering at 0 and logs a warning: ids may repeat (see SocietyProducer).
    sequence_steps: int = Field(default=64, ge=1)
    #: Extra librdkafka properties, applied last (an escape hatch for tuning).
    extra: dict[str, Any] = Field(default_factory=dict)

    _bootstrap_shorthand = model_validator(mode="before")(bootstrap_shorthand)

    @field_validator("extra")
    @classmethod
    def _no_shadowed_limit(cls, extra: dict[str, Any]) -> dict[str, Any]:
        if "message.max.bytes" in extra:
            raise ValueError("set max_message_bytes, not extra['message.max.bytes']: the producer checks it per call")
        return extra

    def librdkafka(self) -> dict[str, Any]:
        """The confluent-kafka Producer configuration."""
        conf: dict[str, Any] = {
            **self.kafka.librdkafka(),
            "client.id": self.client_id or f"{self.kafka.client_id}-producer",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "compression.type": self.compression,
            "queue.buffering.max.messages": self.queue_max_messages,
            "queue.buffering.max.kbytes": self.queue_max_kbytes,
            "message.timeout.ms": self.message_timeout_ms,
            "message.max.bytes": self.max_message_bytes,
        }
        conf.update(self.extra)
        return conf
