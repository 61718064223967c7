"""librdkafka's own lines go through Python logging, and a down broker makes a few of them, not hundreds.

Against a real closed port: librdkafka retries the connection many times a
second and logs every failure; the client's error callback counts the failures.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import KafkaError, Producer

from consumers.kafka_clients import LIBRDKAFKA_LOGGER, RepeatFilter, librdkafka_logger, with_logging

CLOSED = "127.0.0.1:1"
#: Connection failures to wait for: without the filter each is a log line.
FAILURES = 20
WAIT_S = 30.0


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def filtered() -> Iterator[Callable[[float], tuple[logging.Logger, Keep]]]:
    """Factory of a fresh logger with a RepeatFilter of the given interval, and what it let through."""
    made: list[tuple[logging.Logger, Keep]] = []

    def factory(interval_s: float) -> tuple[logging.Logger, Keep]:
        logger = logging.getLogger(f"{LIBRDKAFKA_LOGGER}.test_{uuid.uuid4().hex[:8]}")
        keep = Keep()
        logger.addHandler(keep)
        logger.propagate = False
        logger.addFilter(RepeatFilter(interval_s))
        made.append((logger, keep))
        return logger, keep

    yield factory
    for logger, keep in made:
        logger.removeHandler(keep)


def _poll_until(logger: logging.Logger, done: Callable[[list[KafkaError]], bool], what: str, **conf: object) -> None:
    """Poll a producer for the closed port, logging to `logger`, until `done(connection failures so far)`."""
    failures: list[KafkaError] = []
    p = Producer({
        "bootstrap.servers": CLOSED,
        "logger": logger,
        "error_cb": lambda e: failures.append(e) if e.code() == KafkaError._TRANSPORT else None,
        **conf,
    })
    deadline = time.monotonic() + WAIT_S
    while not done(failures):
        assert time.monotonic() < deadline, f"no {what} in {WAIT_S}s ({len(failures)} connection failures)"
        p.poll(0.1)


def test_a_down_broker_logs_each_kind_of_line_once_per_interval(filtered):
    logger, keep = filtered(3600)
    _poll_until(logger, lambda failures: len(failures) >= FAILURES, f"{FAILURES} connection failures")
    refused = [line for line in keep.lines if "Connect to" in line]
    assert 1 <= len(refused) <= 2, keep.lines  # with and without "N identical error(s) suppressed"


def test_the_next_line_that_passes_counts_the_dropped_ones(filtered):
    # librdkafka itself logs an identical connection error again only after 30 s: its debug lines
    # about each attempt, every 100-200 ms here, repeat alike well within the filter's interval.
    logger, keep = filtered(0.5)
    logger.setLevel(logging.DEBUG)
    _poll_until(logger, lambda _: any("alike dropped" in line for line in keep.lines), "count of dropped lines",
                debug="broker", **{"reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 200})
    counted = next(line for line in keep.lines if "alike dropped" in line)
    assert "127.0.0.1:1" in counted, counted


def test_with_logging_adds_the_shared_logger_once_and_keeps_a_given_one():
    conf = with_logging({"bootstrap.servers": CLOSED})
    assert conf["logger"] is librdkafka_logger() and conf["bootstrap.servers"] == CLOSED
    with_logging({})
    assert sum(isinstance(f, RepeatFilter) for f in librdkafka_logger().filters) == 1
    mine = logging.getLogger("mine")
    assert with_logging({"logger": mine})["logger"] is mine
