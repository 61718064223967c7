"""JSON log lines: one object per line, stable keys, UTC times, no password anywhere."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator

import pytest

from consumers.cli._redact import ScrubFilter, Secrets
from consumers.kafka_clients import LIBRDKAFKA_LOGGER
from consumers.logs import FIELDS, JsonFormatter, bind_fields

PASSWORD = "S3cret-pw"
DSN = f"postgresql://ingest:{PASSWORD}@db.example:5432/society"
REQUIRED = ("time", "level", "logger", "message")


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, JsonFormatter]]:
    """A fresh logger writing JSON lines, scrubbed like the CLI's handler, into a buffer."""
    secrets = Secrets()
    secrets.add_dsn(DSN)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    formatter = JsonFormatter({"worker_id": "host:1"}, scrub=secrets.scrub)
    handler.setFormatter(formatter)
    handler.addFilter(ScrubFilter(secrets))
    logger = logging.getLogger(f"test_logs.{uuid.uuid4().hex[:8]}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, out, formatter
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_object_per_line_with_the_stable_keys(capture) -> None:
    logger, out, _ = capture
    logger.info("assigned %s", "t.agent_memories[0]@5", extra={"offsets": {"t.agent_memories[0]": 5}})
    logger.warning(
        "dead-lettered %s", "x\ny",  # a newline in the message stays inside the JSON string
        extra={"table": "agent_memories", "topic": "t.agent_memories", "partition": 2, "offset": 41,
               "error_class": "MalformedRecordError", "not_a_field": "left out"},
    )
    first, second = lines(out)
    assert list(first) == [*REQUIRED, "worker_id", "offsets"]
    assert first["level"] == "INFO" and first["message"] == "assigned t.agent_memories[0]@5"
    assert first["offsets"] == {"t.agent_memories[0]": 5} and first["worker_id"] == "host:1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["message"] == "dead-lettered x\ny"
    assert {k: second[k] for k in ("table", "partition", "offset", "error_class")} == {
        "table": "agent_memories", "partition": 2, "offset": 41, "error_class": "MalformedRecordError"}
    assert "not_a_field" not in second
    assert set(second) <= {*REQUIRED, *FIELDS}


def test_counts_and_exceptions(capture) -> None:
    logger, out, _ = capture
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"counts": {"loaded": 3, "dead_lettered": 1}})
    (line,) = lines(out)
    assert line["counts"] == {"loaded": 3, "dead_lettered": 1}
    assert "ValueError: boom" in line["exception"] and line["level"] == "ERROR"


def test_no_password_in_message_extra_or_traceback(capture) -> None:
    logger, out, _ = capture
    logger.warning("connecting to %s", DSN, extra={"counts": {DSN: 1}, "error_class": f"x password={PASSWORD}"})
    try:
        raise RuntimeError(f'invalid percent-encoded token: "{PASSWORD}"')
    except RuntimeError:
        logger.exception("cannot parse %s", f"password={PASSWORD}")
    text = out.getvalue()
    assert PASSWORD not in text
    assert "postgresql://ingest:***@db.example:5432/society" in text
    assert len(lines(out)) == 2


def test_bound_fields_and_values_json_cannot_hold(capture) -> None:
    logger, out, formatter = capture
    formatter.bind(worker_id="other:2")
    logger.info("x", extra={"offsets": {("t", 0): uuid.UUID(int=1)}, "table": b"raw"})
    formatter.bind(worker_id=None)
    logger.info("y")
    first, second = lines(out)
    assert first["worker_id"] == "other:2" and first["table"] == "b'raw'"
    assert first["offsets"] == {"('t', 0)": "00000000-0000-0000-0000-000000000001"}
    assert "worker_id" not in second


def test_bind_fields_reaches_the_json_handlers_of_a_logger(capture) -> None:
    logger, out, _ = capture
    bind_fields(logger, worker_id="bound:3")
    logger.info("z")
    assert lines(out)[0]["worker_id"] == "bound:3"


def test_librdkafka_lines_go_through_the_same_handler(capture) -> None:
    _, out, formatter = capture
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    kafka = logging.getLogger(LIBRDKAFKA_LOGGER + ".test_logs")
    kafka.addHandler(handler)
    kafka.propagate = False
    try:
        # The form confluent-kafka hands a librdkafka line to a Python logger.
        kafka.error("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to ipv4#127.0.0.1:1 failed")
    finally:
        kafka.removeHandler(handler)
    (line,) = lines(out)
    assert line["logger"] == LIBRDKAFKA_LOGGER + ".test_logs"
    assert line["message"] == "FAIL [rdkafka#consumer-1] Connect to ipv4#127.0.0.1:1 failed"


def test_cli_log_format_switches_the_one_handler() -> None:
    from consumers.cli._options import LogFormat, setup_logging

    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging(logging.INFO, LogFormat.json)
        ours = [h for h in root.handlers if h not in before[0]]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert ours[0].stream is sys.stderr
        setup_logging(logging.INFO)  # None keeps the format
        assert isinstance(ours[0].formatter, JsonFormatter)
        setup_logging(logging.INFO, LogFormat.text)
        assert [h for h in root.handlers if h not in before[0]] == ours
        assert not isinstance(ours[0].formatter, JsonFormatter)
    finally:
        for h in [h for h in root.handlers if h not in before[0]]:
            root.removeHandler(h)
        root.setLevel(before[1])


def test_a_committed_batch_logs_a_few_lines_however_many_dead_letters(capture) -> None:
    from consumers.batch import DeadLetter, Source
    from consumers.logs import MAX_LOGGED_DEAD_LETTERS, log_committed
    from consumers.sink import WriteResult

    logger, out, _ = capture
    dead = [DeadLetter(Source("p.agent_memories", 1, i, None, None, b""), "agent_memories",
                       "CodecError" if i % 2 else "InvalidRecordError", "bad") for i in range(MAX_LOGGED_DEAD_LETTERS + 5)]
    result = WriteResult(dead=dead, held_dead=len(dead))
    result.inserted["agent_memories"] = 7
    log_committed(logger, result)
    got = lines(out)
    one_each, rest, summary = got[:MAX_LOGGED_DEAD_LETTERS], got[MAX_LOGGED_DEAD_LETTERS], got[-1]
    assert len(got) == MAX_LOGGED_DEAD_LETTERS + 2
    assert [line["offset"] for line in one_each] == list(range(MAX_LOGGED_DEAD_LETTERS))
    assert all(line["table"] == "agent_memories" and line["partition"] == 1 for line in one_each)
    assert rest["counts"] == {"CodecError": 2, "InvalidRecordError": 3} and "5 more" in rest["message"]
    assert summary["level"] == "DEBUG"
    assert summary["counts"] == {"loaded": 7, "duplicates": 0, "conflicts": 0, "dead_lettered": 15}
