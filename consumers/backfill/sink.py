"""Where a backfill's records go: the embedded producer, flushed until Kafka acknowledged a whole batch."""

from __future__ import annotations

import time
from typing import Any, Final, Protocol

from consumers.backfill.errors import BackfillDeliveryError
from producers.errors import DeliveryError
from producers.producer import SocietyProducer


class Sink(Protocol):
    """Where validated records go: the embedded producer (``ProducerSink``), or a fake in unit tests."""

    max_message_bytes: int
    #: The id of the Kafka cluster the records go to (the checkpoint records it; None: unknown).
    kafka_cluster: str | None

    def send(self, table: str, fields: dict[str, Any]) -> None:
        """Validate, encode and enqueue one record."""

    def deliver(self) -> None:
        """Return once Kafka acknowledged every record sent; BackfillDeliveryError otherwise."""


#: How long one flush waits before Python gets to handle a signal (Ctrl-C).
FLUSH_SLICE_S: Final = 0.5


class ProducerSink:
    """A SocietyProducer as a backfill's sink: ``send`` is ``SocietyProducer.send`` (keys, encoding, checks).

    `kafka_cluster` is the cluster id its brokers report (``list_topics().cluster_id``).
    """

    def __init__(self, producer: SocietyProducer, kafka_cluster: str | None) -> None:
        self._producer = producer
        self.max_message_bytes = producer.settings.max_message_bytes
        self.kafka_cluster = kafka_cluster
        #: librdkafka gives a record up after message.timeout.ms; flushing longer cannot help.
        self._delivery_timeout_s = producer.settings.message_timeout_ms / 1000 + 5

    def send(self, table: str, fields: dict[str, Any]) -> None:
        self._producer.send(table, fields)

    def deliver(self) -> None:
        started = time.monotonic()
        deadline = started + self._delivery_timeout_s
        while True:
            try:
                self._producer.flush(FLUSH_SLICE_S)  # in slices: a signal handler runs in between
                return
            except DeliveryError as e:
                if e.failures or time.monotonic() >= deadline:
                    raise BackfillDeliveryError(f"Kafka did not acknowledge the batch within "
                                                f"{time.monotonic() - started:.1f}s: {_undelivered(e)}") from e


def _undelivered(e: DeliveryError) -> str:
    parts = []
    if e.failures:
        first = e.failures[0]
        parts.append(f"{len(e.failures):,} record(s) failed (the first: {first.topic} key={first.key}: {first.error})")
    if e.pending:
        parts.append(f"{e.pending:,} still queued")
    return " and ".join(parts)


__all__ = ["FLUSH_SLICE_S", "ProducerSink", "Sink"]
