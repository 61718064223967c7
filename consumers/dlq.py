"""Dead-letter topic: bad records with their reason, origin and original bytes."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Producer

from consumers.batch import DeadLetter
from consumers.errors import TransientError

#: Header names of a dead letter (values are UTF-8 text).
H_ERROR_CLASS = "error.class"
H_ERROR_MESSAGE = "error.message"
H_TABLE = "original.table"
H_TOPIC = "original.topic"
H_PARTITION = "original.partition"
H_OFFSET = "original.offset"
H_TIMESTAMP = "original.timestamp"
H_WORKER = "worker.id"

#: How long the worker waits for the broker to acknowledge dead letters.
DLQ_FLUSH_TIMEOUT_S = 30.0


def dead_letter_headers(dead: DeadLetter, worker_id: str) -> list[tuple[str, bytes]]:
    """Kafka headers that say why `dead` failed and where it came from."""
    src = dead.source
    return [
        (H_ERROR_CLASS, dead.error_class.encode()),
        (H_ERROR_MESSAGE, dead.message[:4096].encode("utf-8", "replace")),
        (H_TABLE, (dead.table or "").encode()),
        (H_TOPIC, src.topic.encode()),
        (H_PARTITION, str(src.partition).encode()),
        (H_OFFSET, str(src.offset).encode()),
        (H_TIMESTAMP, str(src.timestamp_ms or "").encode()),
        (H_WORKER, worker_id.encode()),
    ]


def parse_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Header list of a consumed dead letter as a dict of text."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers or []}


class DeadLetterPublisher:
    """Publishes dead letters and waits until the broker has them all."""

    def __init__(self, producer_config: dict[str, Any], topic: str, worker_id: str) -> None:
        self._producer = Producer(producer_config)
        self._topic = topic
        self._worker_id = worker_id

    def publish(self, dead: list[DeadLetter]) -> None:
        """Send `dead`; raise TransientError unless every one is acknowledged."""
        failed: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                failed.append(err.str())

        for d in dead:
            try:
                self._producer.produce(
                    self._topic,
                    d.source.value,
                    d.source.key,
                    headers=dead_letter_headers(d, self._worker_id),
                    on_delivery=on_delivery,
                )
            except BufferError as e:
                raise TransientError("dead-letter queue is full") from e
            self._producer.poll(0)
        pending = self._producer.flush(DLQ_FLUSH_TIMEOUT_S)
        if pending or failed:
            first = failed[0] if failed else "timeout"
            raise TransientError(
                f"{len(failed)} dead letter(s) failed and {pending} pending: {first}"
            )

    def close(self) -> None:
        """Wait for anything still in flight."""
        self._producer.flush(DLQ_FLUSH_TIMEOUT_S)
