"""Every failure the CLI expects becomes one line on stderr; ``--debug`` adds the traceback.

:func:`run` wraps the Typer app. Typer's own usage errors keep their form and
exit code 2; the project's errors, psycopg's, Kafka's, timeouts, OS errors and
invalid settings become ``error: <one line>`` and exit 1. Passwords are
scrubbed from everything printed, tracebacks included.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError

from consumers import pg_errors
from consumers._deps import psycopg
from consumers.cli._options import json_logging, print_error
from consumers.cli._redact import secrets
from consumers.kafka_clients import KafkaUnreachableError
from producers.errors import SocietyIngestError
from producers.kafka_config import SETTINGS, KafkaClientSettings

EXIT_FAILURE = 1
DATABASE_HINT = "(--database-url / DATABASE_URL)"
KAFKA_HINT = "(--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS)"

#: Kafka errors that mean "could not talk to the brokers", not "the brokers said no".
_KAFKA_UNREACHABLE = {
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE,
}
# psycopg + libpq: 'connection failed: connection to server at "127.0.0.1", port 1 failed: FATAL:  …'
_LIBPQ_PREFIX = re.compile(r'^connection failed: (?:connection to server (?:at|on socket) "[^"]*"[^:]*? failed: )?')
_LIBPQ_SEVERITY = re.compile(r"^(?:FATAL|ERROR):\s+")


@dataclass
class Context:
    """What the running command talks to, for messages about failures it did not catch itself."""

    debug: bool = False
    #: The command (or command group) being run.
    command: str | None = None
    #: The command refreshes the materialized views: a missing privilege wants their owner, not a GRANT.
    needs_owner: bool = False
    #: Connection string of the database in use (shown only through pg_errors.where: no password).
    conninfo: str | None = None
    bootstrap: str | None = None
    #: The Kafka client settings in use (for a refusal's message: user name, never the password).
    kafka: KafkaClientSettings | None = None


context = Context()


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _lower_first(text: str) -> str:
    # "Connection refused" -> "connection refused", but "SSL error" stays.
    return text[0].lower() + text[1:] if text[:2].istitle() and not text[:2].isupper() else text


def _database_failure(e: Any) -> str:
    """Classified as the worker does (pg_errors): a SQLSTATE, or the one a connection failure's text stands for."""
    conninfo = context.conninfo or ""
    first = _first_line(str(e))
    connecting = first.startswith("connection failed") or isinstance(e, psycopg.errors.ConnectionTimeout)
    if connecting:
        first = _lower_first(_LIBPQ_SEVERITY.sub("", _LIBPQ_PREFIX.sub("", first)))
    if pg_errors.sqlstate(e) is None and isinstance(e, psycopg.OperationalError):
        where = pg_errors.where(conninfo)
        if connecting:  # refused, unknown host, timed out: no server answered
            return f"cannot connect to PostgreSQL at {where}: {first} {DATABASE_HINT}"
        return f"lost the connection to PostgreSQL at {where}: {first}"
    # Password, role, database, privileges, tables: worded with the worker's hints, from the
    # server's one-line message (a statement error's str() adds LINE and caret lines).
    primary = (e.diag.message_primary if e.sqlstate else None) or first
    doing = "connecting" if connecting else context.command or "query"
    return str(pg_errors.translate(type(e)(primary), conninfo, doing,
                                   reader=context.command in pg_errors.READER_COMMANDS,
                                   owner=context.needs_owner))


def _kafka_failure(e: KafkaException) -> str:
    err = e.args[0] if e.args else None
    if not isinstance(err, KafkaError):
        return f"Kafka at {context.bootstrap}: {e}"
    refusal = context.kafka.refused(err) if context.kafka is not None else None
    if refusal is not None:
        return refusal
    hint = f" {KAFKA_HINT}" if err.code() in _KAFKA_UNREACHABLE else ""
    return f"Kafka at {context.bootstrap}: {err.str()}{hint}"


def describe(e: BaseException) -> str | None:
    """One line for a failure the CLI expects; None for anything else (a bug)."""
    if isinstance(e, KafkaUnreachableError):
        return f"{e} {KAFKA_HINT}"
    if isinstance(e, SocietyIngestError):
        return str(e)
    if isinstance(e, psycopg.Error):
        return _database_failure(e)
    if isinstance(e, KafkaException):
        return _kafka_failure(e)
    if isinstance(e, ValidationError):
        # Without the input values: one of them may be a connection string.
        return "invalid settings: " + "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
    if isinstance(e, (TimeoutError, OSError)):
        return str(e) or type(e).__name__
    return None


def _one_line(message: str) -> str:
    return " ".join(secrets.scrub(message).split())


def describe_line(e: BaseException) -> str:
    """The one line ``report`` prints for `e` (without ``error:``), passwords scrubbed."""
    message = describe(e)
    if message is None:
        message = f"unexpected {type(e).__name__}: {e}"
    return _one_line(message)


def report(e: BaseException) -> None:
    """Print `e` as ``error: <one line>`` (after the scrubbed traceback with --debug)."""
    message = describe(e)
    as_json = json_logging()  # then the traceback is the line's "exception", not lines of its own
    if context.debug and not as_json:
        sys.stderr.write(secrets.scrub("".join(traceback.format_exception(e))))
    if message is None:
        message = f"unexpected {type(e).__name__}: {e}" + ("" if context.debug else " (--debug shows the traceback)")
    print_error(_one_line(message), exc_info=e if context.debug and as_json else None)


def run(app: Any) -> NoReturn:
    """Run the Typer `app` as ``society-ingest``; exit 1 with one line on an expected failure."""
    secrets.add_dsn(os.environ.get("DATABASE_URL"))
    for setting in SETTINGS:
        if setting.secret:
            secrets.add(os.environ.get(setting.env))
    try:
        app(prog_name="society-ingest")
    except Exception as e:  # SystemExit (Typer's exits, usage errors) and KeyboardInterrupt pass
        report(e)
        sys.exit(EXIT_FAILURE)
    sys.exit(0)  # not reached: Typer's standalone mode always exits
