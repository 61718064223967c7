"""Worker configuration: an explicit, frozen model (only the CLI reads the environment)."""

from __future__ import annotations

import os
import socket
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from consumers.dlq import DLQ_MAX_MESSAGE_BYTES
from consumers.kafka_clients import client_config, with_logging
from producers.kafka_config import KafkaClientSettings, bootstrap_shorthand
from producers.settings import ProducerSettings
from producers.tables import DEFAULT_TOPIC_PREFIX, TABLES

#: A worker that exits without leaving its group (killed) stays a member this long.
SESSION_TIMEOUT_MS = 30_000

DEFAULT_GROUP = "society-ingest"
#: librdkafka's prefetch of records not yet consumed, in KiB. A worker behind its topics fills it,
#: so it bounds how far the worker's memory follows the lag (the soak's RSS bound). librdkafka
#: checks it per partition queue (librdkafka issues 4137, 5140): a worker behind on 12 busy
#: partitions holds up to 12 x 8 MiB. 8 MiB is about 16,000 records of the mix, well above what
#: one batch takes from a partition, so the consuming thread does not wait for fetches.
PREFETCH_KBYTES = 8 * 1024
#: The most one fetch response may carry (at least the brokers' largest message).
FETCH_MAX_BYTES = 8 * 1024 * 1024


def default_worker_id() -> str:
    """host:pid, unique enough to tell workers apart in dead-letter headers."""
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerSettings(BaseModel):
    """Where the worker reads, where it writes, and how it batches.

    ``bootstrap_servers="host:9092"`` is short for ``kafka=KafkaClientSettings(bootstrap_servers="host:9092")``;
    the table consumer and the dead-letter producer are both built from ``kafka``.
    """

    # Errors never quote the input: it holds passwords.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kafka: KafkaClientSettings
    database_url: SecretStr
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, pattern=r"^[A-Za-z0-9._-]+$")
    group_id: str = DEFAULT_GROUP
    tables: tuple[str, ...] = TABLES
    worker_id: str = Field(default_factory=default_worker_id)
    #: Validate decoded records with the pydantic models before loading. Off,
    #: PostgreSQL's constraints alone catch bad rows (isolated by bisection).
    validate_records: bool = True
    # A batch is flushed when any bound is reached. Rows and bytes bound memory
    # and transaction size; linger bounds how stale PostgreSQL may be.
    max_batch_rows: int = Field(default=20_000, ge=1)
    max_batch_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    linger_ms: int = Field(default=500, ge=0)
    # Messages taken per consume() call: large enough to amortize the call.
    poll_batch: int = Field(default=5_000, ge=1)
    # Transient-failure retry: capped exponential backoff with full jitter.
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    # Dead-letter limit (consumers.dlq_limit): past either bound the worker stops. 0 = off.
    # 1,000 in a row is far beyond any poison burst the simulation makes, yet a small
    # fraction of one step of a 2,500-agent society (~5,400 records).
    dead_letter_max_consecutive: int = Field(default=1_000, ge=0)
    dead_letter_max_per_minute: int = Field(default=10_000, ge=0)
    # How long a shutdown may wait for the batch being written before giving it up.
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    consumer_extra: dict[str, Any] = Field(default_factory=dict)

    _bootstrap_shorthand = model_validator(mode="before")(bootstrap_shorthand)

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings of the table consumer."""
        return client_config(self.kafka, {
            "group.id": self.group_id,
            "client.id": f"{self.kafka.client_id}-worker-{self.worker_id}",
            # Offsets live in PostgreSQL with the rows; Kafka only gets a mirror.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "max.poll.interval.ms": 600_000,
            "fetch.max.bytes": FETCH_MAX_BYTES,
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
            **self.consumer_extra,
        })

    def producer_config(self) -> dict[str, Any]:
        """librdkafka settings of the dead-letter producer: the embedded producer's, tuned for small batches."""
        settings = ProducerSettings(
            kafka=self.kafka,
            client_id=f"{self.kafka.client_id}-dlq-{self.worker_id}",
            linger_ms=5,
            message_timeout_ms=60_000,
            max_message_bytes=DLQ_MAX_MESSAGE_BYTES,
        )
        return with_logging(settings.librdkafka())
