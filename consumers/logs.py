"""Structured logs: one JSON object per line, with stable keys, for log collectors.

Every line has ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``
and ``message``. A line about something specific adds the keys in
:data:`FIELDS` that the log call passes with ``extra=`` (the worker passes
them where it is cheap: assignments, dead letters, retries, committed
batches), plus the fields bound to the whole process (``worker_id``), and
``exception`` with the traceback when there is one. Other ``extra`` keys are
left out, so the set of keys stays the same from release to release.

The worker never logs per record on its hot path; librdkafka's own lines reach
the same handler through ``consumers.kafka_clients`` (logger
``society_ingest.librdkafka``). Passwords: the CLI's ScrubFilter cleans the
message and traceback before the formatter runs, and the formatter's `scrub`
cleans every text value it writes (extra values included).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

#: The optional keys of a JSON line, in the order they are written.
FIELDS = (
    "worker_id",
    "table",
    "topic",
    "partition",
    "offset",
    "offsets",
    "counts",
    "error_class",
)

#: Dead letters of one batch logged one by one; the rest are counted in one line.
MAX_LOGGED_DEAD_LETTERS = 10


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scrubbed(value: Any, scrub: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {scrub(str(k)): _scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v, scrub) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module doc for the keys).

    `fields` are written on every line (e.g. ``worker_id``; :meth:`bind` adds
    more later); `scrub` cleans every text value (e.g. the CLI's password
    scrubber). Values that JSON cannot hold are written as ``str(value)``.
    """

    def __init__(self, fields: Mapping[str, Any] | None = None, scrub: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})
        self._scrub = scrub

    def bind(self, **fields: Any) -> None:
        """Write these fields on every line from now on (a value of None removes one)."""
        for key, value in fields.items():
            if value is None:
                self._fields.pop(key, None)
            else:
                self._fields[key] = value

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = record.__dict__
        for key in FIELDS:
            value = extra.get(key, self._fields.get(key))
            if value is not None:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        if self._scrub is not None:
            line = _scrubbed(line, self._scrub)
        return json.dumps(line, ensure_ascii=False, default=str, separators=(",", ":"))


def bind_fields(logger: logging.Logger | None = None, **fields: Any) -> None:
    """Bind `fields` (e.g. ``worker_id``) to every JSON formatter on `logger`'s handlers (default: root)."""
    for handler in (logger or logging.getLogger()).handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.bind(**fields)


def log_committed(logger: logging.Logger, result: Any) -> None:
    """Log what a committed batch (a ``consumers.sink.WriteResult``) did: a few lines a batch, never one a record.

    Each dead letter (WARNING, with table, topic, partition, offset and error
    class) up to MAX_LOGGED_DEAD_LETTERS, then one line counting the rest by
    error class; at DEBUG, one line with the batch's counts.
    """
    dead = result.dead
    for d in dead[:MAX_LOGGED_DEAD_LETTERS]:
        src = d.source
        logger.warning(
            "dead-lettered %s[%d]@%d: %s: %s", src.topic, src.partition, src.offset, d.error_class, d.message,
            extra={"table": d.table, "topic": src.topic, "partition": src.partition, "offset": src.offset,
                   "error_class": d.error_class},
        )
    if len(dead) > MAX_LOGGED_DEAD_LETTERS:
        by_class: dict[str, int] = {}
        for d in dead[MAX_LOGGED_DEAD_LETTERS:]:
            by_class[d.error_class] = by_class.get(d.error_class, 0) + 1
        logger.warning(
            "dead-lettered %d more record(s) of the batch: %s", len(dead) - MAX_LOGGED_DEAD_LETTERS,
            ", ".join(f"{n} {c}" for c, n in sorted(by_class.items())), extra={"counts": by_class},
        )
    if logger.isEnabledFor(logging.DEBUG):
        counts = {"loaded": sum(result.inserted.values()), "duplicates": sum(result.duplicates.values()),
                  "conflicts": result.conflicts, "dead_lettered": len(dead)}
        logger.debug("committed a batch: %s", ", ".join(f"{n} {k}" for k, n in counts.items()),
                     extra={"counts": counts})
