"""librdkafka's own lines go through Python logging, and a down broker makes a few of them, not hundreds.

Against a real closed port: librdkafka retries the connection many times a
second and logs every failure; the client's error callback counts them.
"""

from __future__ import annotations

import logging
import time

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


def _fail_to_connect(conf: dict, failures: int = FAILURES) -> int:
    """Poll a producer of `conf` until librdkafka has reported `failures` failed connections."""
    seen: list[KafkaError] = []
    p = Producer({**conf, "error_cb": lambda e: seen.append(e) if e.code() == KafkaError._TRANSPORT else None})
    deadline = time.monotonic() + WAIT_S
    while len(seen) < failures:
        assert time.monotonic() < deadline, f"only {len(seen)} connection failures in {WAIT_S}s"
        p.poll(0.1)
    return len(seen)


def test_a_down_broker_logs_each_kind_of_line_once_per_interval():
    logger = logging.getLogger(f"{LIBRDKAFKA_LOGGER}.test")
    keep = Keep()
    logger.addHandler(keep)
    logger.propagate = False
    logger.addFilter(RepeatFilter(interval_s=3600))
    try:
        failures = _fail_to_connect({"bootstrap.servers": CLOSED, "logger": logger})
    finally:
        logger.removeHandler(keep)
    refused = [line for line in keep.lines if "Connect to" in line]
    assert failures >= FAILURES and 1 <= len(refused) <= 2, keep.lines  # with and without "N identical … suppressed"


def test_the_next_line_that_passes_counts_the_dropped_ones():
    logger = logging.getLogger(f"{LIBRDKAFKA_LOGGER}.test_counts")
    keep = Keep()
    logger.addHandler(keep)
    logger.propagate = False
    logger.addFilter(RepeatFilter(interval_s=0.5))
    p = Producer({"bootstrap.servers": CLOSED, "logger": logger})
    deadline = time.monotonic() + WAIT_S
    try:
        while not any("alike dropped" in line for line in keep.lines):
            assert time.monotonic() < deadline, keep.lines
            p.poll(0.1)
    finally:
        logger.removeHandler(keep)
    counted = next(line for line in keep.lines if "alike dropped" in line)
    assert "Connect to ipv4#127.0.0.1:1 failed" in counted or "brokers are down" in counted, counted


def test_with_logging_adds_the_shared_logger_once_and_keeps_a_given_one():
    conf = with_logging({"bootstrap.servers": CLOSED})
    assert conf["logger"] is librdkafka_logger() and conf["bootstrap.servers"] == CLOSED
    with_logging({})
    assert sum(isinstance(f, RepeatFilter) for f in librdkafka_logger().filters) == 1
    mine = logging.getLogger("mine")
    assert with_logging({"logger": mine})["logger"] is mine
