"""Reaching PostgreSQL and Kafka from a command: bounded waits, addresses for messages.

Every command that needs a service goes through here first: :func:`database`
turns the URL into a connection string that gives up after the timeout (and
rejects a malformed URL without quoting its password); :func:`reach_kafka` waits
for a broker to answer, at most the timeout, and fails at once when it refuses
the credentials.
"""

from __future__ import annotations

import math
import re
from typing import Any

from consumers._deps import psycopg
from consumers.cli._failures import context
from consumers.cli._redact import MASK, secrets
from consumers.errors import ConfigurationError
from consumers.kafka_clients import probe
from consumers.topics import all_topics
from consumers.migrations import load_migrations
from consumers.pg_errors import where
from producers.kafka_config import KafkaClientSettings
from producers.tables import dlq_topic, topic_for

#: How long a command waits for Kafka or PostgreSQL before it gives up (--timeout).
DEFAULT_TIMEOUT_S = 10.0
#: libpq's shortest connect_timeout (it reads 1 as 2).
_MIN_CONNECT_TIMEOUT_S = 2

_QUOTED_SECRET = re.compile(rf'\s*:?\s*"[^"]*{re.escape(MASK)}[^"]*"')


def _without_password(message: str) -> str:
    message = message.strip()
    scrubbed = secrets.scrub(message)
    if scrubbed == message:
        return message
    return _QUOTED_SECRET.sub("", scrubbed) + " (password hidden)"


def database(url: str, timeout_s: float) -> str:
    """A connection string for `url` that gives up connecting after `timeout_s`.

    Raises ConfigurationError, without the password, when `url` does not parse.
    """
    secrets.add_dsn(url)
    connect_timeout = max(_MIN_CONNECT_TIMEOUT_S, math.ceil(timeout_s))
    try:
        conninfo = psycopg.conninfo.make_conninfo(url, connect_timeout=str(connect_timeout))
    except psycopg.ProgrammingError as e:
        raise ConfigurationError(f"DATABASE_URL is not a valid PostgreSQL URL: {_without_password(str(e))}") from e
    secrets.add_dsn(conninfo)  # the same password, spelled as key=value
    context.conninfo = conninfo
    return conninfo


def require_schema(conninfo: str) -> None:
    """Raise ConfigurationError unless every migration in ddl/ was applied to the database."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # A database never migrated has no schema_migrations: UndefinedTable says "run migrate".
        applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    missing = [f"{m.version:04d}_{m.name}" for m in load_migrations() if m.version not in applied]
    if missing:
        raise ConfigurationError(
            f"PostgreSQL at {where(conninfo)} lacks migration(s) {', '.join(missing)}: "
            f"run `society-ingest migrate`"
        )


def reach_kafka(settings: KafkaClientSettings, timeout_s: float, extra: dict[str, Any] | None = None) -> set[str]:
    """The broker's topics once a broker answers; KafkaUnreachableError after `timeout_s`,
    ConfigurationError at once when it refuses the credentials or the TLS handshake."""
    context.bootstrap = settings.bootstrap_servers
    context.kafka = settings
    return probe(settings, timeout_s, extra)


def require_topics(existing: set[str], prefix: str, tables: tuple[str, ...] | None = None,
                   kafka: KafkaClientSettings | None = None) -> None:
    """Raise ConfigurationError unless the table topics of `prefix` (those of `tables`) and its DLQ exist.

    With a SASL user in `kafka`, a topic its ACLs hide looks missing: the message says so.
    """
    wanted = all_topics(prefix) if tables is None else [*(topic_for(prefix, t) for t in tables), dlq_topic(prefix)]
    missing = [t for t in wanted if t not in existing]
    if missing:
        user = kafka.sasl_username if kafka is not None else None
        hidden = f" or are not visible to user {user} (check its ACLs)" if user else ""
        raise ConfigurationError(f"topic(s) {', '.join(missing)} do not exist{hidden}: "
                                 f"run `society-ingest topics create --topic-prefix {prefix}`")
