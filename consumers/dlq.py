"""Dead-letter topic: bad records with their reason, origin and original bytes and headers.

A letter's headers are the worker's (``error.*``, ``original.*``, ``worker.id``)
followed by the original message's own, under their own names; an original
header whose name begins with one of the worker's prefixes (RESERVED_PREFIXES)
is left out, so the worker's headers are always the ones that say why and
where from.

A record too large to dead-letter whole (the dead-letter producer's or the
topic's message size limit) is dead-lettered *by reference*: no value, and
headers with its size, SHA-256 and first bytes, next to the usual origin
headers, so an operator can find it in its original topic (which keeps it
for the retention period) and no single message can stop a worker.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

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
#: Only on letters sent by reference (the value is then empty).
H_BY_REFERENCE = "dead.by_reference"
H_SIZE = "original.size"
H_SHA256 = "original.sha256"
H_HEAD = "original.head"
#: Header names the worker writes begin so: an original header named so is left out of the
#: letter (the worker's own say why and where from, and nothing in the message can forge them).
RESERVED_PREFIXES = ("error.", "original.", "worker.", "dead.")

#: How long the worker waits for the broker to acknowledge dead letters.
DLQ_FLUSH_TIMEOUT_S = 30.0
#: librdkafka's default message.max.bytes, set explicitly on the dead-letter producer.
DLQ_MAX_MESSAGE_BYTES = 1_000_000
#: Room kept for headers and record framing when deciding up front to send by reference.
_FRAMING_BYTES = 8 * 1024
#: Bytes of the original kept in a by-reference letter (hex in a header) to help recognize it.
HEAD_BYTES = 64
#: A key longer than this is replaced by its hash in a by-reference letter.
MAX_REFERENCE_KEY_BYTES = 1024
_FLUSH_SLICE_S = 0.2


def original_headers(dead: DeadLetter) -> list[tuple[str, bytes | None]]:
    """The original message's own headers, in order, but for names the worker reserves."""
    return [(k, v) for k, v in dead.source.headers or () if not k.startswith(RESERVED_PREFIXES)]


def dead_letter_headers(dead: DeadLetter, worker_id: str) -> list[tuple[str, bytes]]:
    """Kafka headers that say why `dead` failed and where it came from, then the original's own."""
    return [*_worker_headers(dead, worker_id), *original_headers(dead)]


def _worker_headers(dead: DeadLetter, worker_id: str) -> list[tuple[str, bytes]]:
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


def reference_letter(dead: DeadLetter, worker_id: str) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """(key, headers) of a by-reference letter for `dead`: its value is left out."""
    value = dead.source.value or b""
    key = dead.source.key
    # Not the original's own headers: they may be what made it too large (it keeps them).
    headers = _worker_headers(dead, worker_id) + [
        (H_BY_REFERENCE, b"true"),
        (H_SIZE, str(len(value)).encode()),
        (H_SHA256, hashlib.sha256(value).hexdigest().encode()),
        (H_HEAD, value[:HEAD_BYTES].hex().encode()),
    ]
    if key is not None and len(key) > MAX_REFERENCE_KEY_BYTES:
        headers.append(("original.key.sha256", hashlib.sha256(key).hexdigest().encode()))
        key = None
    return key, headers


def parse_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Header list of a consumed dead letter as a dict of text."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers or []}


def _whole_size(dead: DeadLetter) -> int:
    own = sum(len(k) + len(v or b"") for k, v in original_headers(dead))
    return len(dead.source.value or b"") + len(dead.source.key or b"") + len(dead.message) + own + _FRAMING_BYTES


class DeadLetterPublisher:
    """Publishes dead letters and waits until the broker has them all.

    `stop` (optional) is the worker's stop flag: a wait for the broker gives up
    when it is set, so shutdown never hangs on an unreachable broker.
    """

    def __init__(
        self,
        producer_config: dict[str, Any],
        topic: str,
        worker_id: str,
        stop: threading.Event | None = None,
    ) -> None:
        self._max_bytes = int(producer_config.get("message.max.bytes", DLQ_MAX_MESSAGE_BYTES))
        self._producer = Producer({"message.max.bytes": self._max_bytes, **producer_config})
        self._topic = topic
        self._worker_id = worker_id
        self._stop = stop or threading.Event()

    def publish(self, dead: list[DeadLetter]) -> None:
        """Send `dead`; raise TransientError unless every one is acknowledged.

        A letter the producer or the broker refuses as too large is sent again by reference.
        """
        whole = [d for d in dead if _whole_size(d) <= self._max_bytes]
        too_large = [d for d in dead if _whole_size(d) > self._max_bytes]
        refused = self._send(whole, by_reference=False)
        if refused:
            # The broker checks a whole batch against the topic's max.message.bytes: letters that
            # fit one by one may be refused together. Only a letter refused alone is too large.
            for d in refused:
                too_large += self._send([d], by_reference=False)
        if too_large:
            refused = self._send(too_large, by_reference=True)
            if refused:  # even a bare reference is too large: the topic's limit is absurd
                raise TransientError(f"{len(refused)} dead letter(s) refused as too large even by reference")

    def _send(self, letters: list[DeadLetter], *, by_reference: bool) -> list[DeadLetter]:
        """Produce and wait; return the letters refused as too large (other failures raise)."""
        too_large: list[DeadLetter] = []
        failed: list[str] = []

        def on_delivery(letter: DeadLetter) -> Any:
            def report(err: KafkaError | None, _msg: Any) -> None:
                if err is None:
                    return
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    too_large.append(letter)
                else:
                    failed.append(err.str())
            return report

        for d in letters:
            if by_reference:
                key, headers = reference_letter(d, self._worker_id)
                value = None
            else:
                key, headers, value = d.source.key, dead_letter_headers(d, self._worker_id), d.source.value
            try:
                self._producer.produce(self._topic, value, key, headers=headers, on_delivery=on_delivery(d))
            except BufferError as e:
                raise TransientError("dead-letter queue is full") from e
            except KafkaException as e:
                if e.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise TransientError(f"cannot enqueue a dead letter: {e}") from e
                too_large.append(d)
            self._producer.poll(0)
        pending = self._flush(DLQ_FLUSH_TIMEOUT_S)
        if pending or failed:
            first = failed[0] if failed else "timeout"
            raise TransientError(f"{len(failed)} dead letter(s) failed and {pending} pending: {first}")
        return too_large

    def _flush(self, timeout: float) -> int:
        """flush() in slices that look at the stop flag; returns what is still pending."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self._producer.flush(min(_FLUSH_SLICE_S, max(0.0, deadline - time.monotonic())))
            if not pending or time.monotonic() >= deadline or self._stop.is_set():
                return pending

    def poll(self) -> None:
        """Serve the producer's callbacks and log lines (an idle producer's would pile up)."""
        self._producer.poll(0)

    def close(self) -> None:
        """Wait (bounded, and not past a stop) for anything still in flight."""
        self._flush(DLQ_FLUSH_TIMEOUT_S)
