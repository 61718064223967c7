"""Kafka clients that log through Python logging, and a bounded reachability probe.

Every client the consumer side builds takes its configuration from
:func:`client_config`: the one KafkaClientSettings (brokers, security
protocol, SASL, TLS, client id), then the client's own properties.

librdkafka writes its own log lines to stderr from its threads unless a client
is given a ``logger``; then the lines are queued and handed to that
``logging.Logger`` whenever the client is polled (``poll``, ``consume``,
``flush``). A broker that is down makes librdkafka retry the connection about
20 times a second and log every failure, so the logger drops repeats: each kind
of line passes once per :data:`REPEAT_INTERVAL_S`, and the next one that passes
says how many were dropped.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from consumers.errors import ConfigurationError, TransientError
from producers.kafka_config import KafkaClientSettings, as_client_settings

#: The logger every client's librdkafka lines go to.
LIBRDKAFKA_LOGGER = "society_ingest.librdkafka"
#: One line of each kind per minute is enough to see that an outage goes on.
REPEAT_INTERVAL_S = 60.0
#: Kinds remembered at once; beyond that the memory starts again (a few extra lines).
MAX_KINDS = 512

_NUMBERS = re.compile(r"\d+")
#: Longest single metadata request of the probe: between two, it looks for a refusal (fails at once).
PROBE_SLICE_S = 1.0


class KafkaUnreachableError(TransientError):
    """No broker answered a metadata request within the wait."""


class RepeatFilter(logging.Filter):
    """Passes each kind of record once per `interval_s`; the next to pass counts the dropped ones.

    A record's kind is its message with numbers blanked out, so "after 0ms" and
    "after 3ms", or "9 identical error(s) suppressed" and "12 …", are alike.
    """

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._lock = threading.Lock()
        # kind -> (monotonic time it last passed, records dropped since)
        self._kinds: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _NUMBERS.sub("#", record.getMessage())
        now = time.monotonic()
        with self._lock:
            passed_at, dropped = self._kinds.get(kind, (None, 0))
            if passed_at is not None and now - passed_at < self._interval_s:
                self._kinds[kind] = (passed_at, dropped + 1)
                return False
            if len(self._kinds) >= MAX_KINDS:
                self._kinds.clear()
            self._kinds[kind] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} alike dropped in the last {now - passed_at:.0f}s)"
        return True


def librdkafka_logger() -> logging.Logger:
    """The logger of librdkafka's own lines, with repeats dropped."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger


def with_logging(conf: dict[str, Any]) -> dict[str, Any]:
    """`conf` plus a ``logger``: librdkafka's lines go to Python logging (a ``logger`` already there wins)."""
    return {"logger": librdkafka_logger(), **conf}


def client_config(kafka: KafkaClientSettings | str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings of a client: `kafka`'s (a bare address: PLAINTEXT), then the client's own `conf`.

    Logs through Python logging (see :func:`with_logging`).
    """
    return with_logging({**as_client_settings(kafka).librdkafka(), **(conf or {})})


class _Lines(logging.Handler):
    """Keeps the messages of the records it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _probe_logger() -> tuple[logging.Logger, list[str]]:
    # The probe reports its failure itself; librdkafka's lines about it would only repeat it. Kept
    # apart from logging's hierarchy (never printed), they may still say why (a wrong protocol).
    logger = logging.Logger(f"{LIBRDKAFKA_LOGGER}.probe")
    lines = _Lines()
    logger.addHandler(lines)
    return logger, lines.lines


#: A wrong security protocol, as librdkafka's errors and log lines show it.
_PROTOCOL_HINT = "is the security protocol right? (--security-protocol / KAFKA_SECURITY_PROTOCOL)"


def _reason(errors: list[KafkaError], lines: list[str]) -> str:
    """What librdkafka reported during a failed probe means for a person."""
    if any(e.code() == KafkaError._RESOLVE for e in errors):
        return "its host name does not resolve"
    said = [e.str() for e in errors] + lines
    if any("connecting to a PLAINTEXT broker listener" in text for text in said):  # TLS to a plaintext port
        return f"it does not speak TLS there: {_PROTOCOL_HINT}"
    # A plaintext client at a TLS listener: the broker drops it at its first request.
    if any("Disconnected" in text and "in state APIVERSION_QUERY" in text for text in said):
        return f"it closes the connection at the first request (a TLS listener?): {_PROTOCOL_HINT}"
    return "is it running?"


def probe(kafka: KafkaClientSettings | str, timeout_s: float, extra: dict[str, Any] | None = None) -> set[str]:
    """Return the topics once a broker answers a metadata request.

    KafkaUnreachableError after `timeout_s`; ConfigurationError at once when
    the brokers refuse the credentials or the TLS handshake (retrying cannot help).
    """
    kafka = as_client_settings(kafka)
    errors: list[KafkaError] = []
    logger, lines = _probe_logger()
    admin = AdminClient({**kafka.librdkafka(), **(extra or {}), "logger": logger, "error_cb": errors.append})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            wait = max(0.1, min(PROBE_SLICE_S, deadline - time.monotonic()))
            return set(admin.list_topics(timeout=wait).topics)
        except KafkaException:
            admin.poll(0)  # serves the error callbacks queued meanwhile
        refusal = next((r for r in map(kafka.refused, errors) if r is not None), None)
        if refusal is not None:
            raise ConfigurationError(refusal)
        if time.monotonic() >= deadline:
            break
    reason = _reason(errors, lines)
    raise KafkaUnreachableError(f"cannot reach Kafka at {kafka.bootstrap_servers} within {timeout_s:g}s: {reason}")
