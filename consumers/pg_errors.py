"""What a PostgreSQL error means for the worker: retry, dead-letter the row, or stop.

Errors raised by statements carry a SQLSTATE and are classified by its class
(psycopg maps them to exception classes). Errors raised while connecting carry
none: libpq reports them as text only, so the few fatal ones (bad password,
unknown role or database) are recognized by the server's message, and every
other connection failure counts as transient (refused, reset, timed out, too
many clients, starting up).
"""

from __future__ import annotations

import enum
import re

from consumers._deps import psycopg
from consumers.errors import ConfigurationError, TransientError

errors = psycopg.errors

#: SQLSTATE classes caused by the data of a row: isolate the row, dead-letter it.
DATA_ERRORS: tuple[type[Exception], ...] = (
    psycopg.DataError,  # class 22: invalid text, out of range, NUL byte...
    psycopg.IntegrityError,  # class 23: NOT NULL, CHECK, FK, unique
    errors.ProgramLimitExceeded,  # class 54: e.g. a value too large for a b-tree index
)

#: Classes that go away by themselves: connection (08), resources (53), operator
#: intervention (57: admin shutdown, cannot connect now), rollbacks (40: serialization
#: failure, deadlock), object in use (55: lock not available), system errors (58).
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58")
#: Classes that no retry fixes: authorization (28), missing database (3D), missing
#: schema (3F), privileges and missing tables or columns (42).
_FATAL_CLASSES = ("28", "3D", "3F", "42")

# Server messages of fatal connection failures (the only place text is matched: see module doc).
_CONNECT_FATAL = (
    (re.compile(r"password authentication failed"), "28P01"),
    (re.compile(r"no pg_hba\.conf entry|role \"[^\"]*\" does not exist|authentication failed"), "28000"),
    (re.compile(r"database \"[^\"]*\" does not exist"), "3D000"),
    (re.compile(r"permission denied for database"), "42501"),
)


class Kind(enum.Enum):
    """What to do about an error."""

    TRANSIENT = "retry with backoff"
    DATA = "dead-letter the row"
    FATAL = "stop: fix the deployment"


def sqlstate(e: BaseException) -> str | None:
    """The error's SQLSTATE, or the one its connection-failure text stands for."""
    state = getattr(e, "sqlstate", None)
    if state:
        return state
    if isinstance(e, psycopg.OperationalError):
        text = str(e)
        for pattern, code in _CONNECT_FATAL:
            if pattern.search(text):
                return code
    return None


def classify(e: BaseException) -> Kind:
    """Transient, data or fatal: see the module doc."""
    state = sqlstate(e)
    if state is None:
        # Connection-level failures without a SQLSTATE; InterfaceError: connection closed.
        return Kind.TRANSIENT if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)) else Kind.FATAL
    if state[:2] in _TRANSIENT_CLASSES:
        return Kind.TRANSIENT
    if isinstance(e, DATA_ERRORS):
        return Kind.DATA
    if state[:2] in _FATAL_CLASSES:
        return Kind.FATAL
    return Kind.FATAL


#: Commands that only read (the analysis views, exports): a missing privilege wants the reader role.
READER_COMMANDS = frozenset({"report", "views", "export"})


#: What a role lacking a privilege for `views refresh` (or `report --refresh`) must do: only the owner may
#: REFRESH a materialized view, and no GRANT gives that.
OWNER_HINT = ("a refresh needs the owner of the materialized views: run it as the role that runs "
              "`society-ingest migrate` (README \"PostgreSQL roles\"); no GRANT is enough")


def hint(state: str, reader: bool = False, message: str = "", owner: bool = False) -> str:
    """What to do about a fatal SQLSTATE (`message`: the server's), for people (`reader`: the command only
    reads; `owner`: it refreshes the materialized views, which needs their owner)."""
    if state == "42501" and "create database" in message:
        return "the role needs CREATEDB (the bench and the soak make a scratch database): ALTER ROLE <role> CREATEDB"
    if state.startswith("28"):
        return "check the user and password in DATABASE_URL"
    if state == "3D000":
        return "create the database, then run `society-ingest migrate`"
    if state == "42501" and owner:
        return OWNER_HINT
    if state == "42501" and reader:
        return ("grant the role the readers' privileges: GRANT society_reader TO <role> (SELECT on the tables and "
                "the analysis views; see ddl/0006_roles.sql and ddl/0009_analysis_views.sql)")
    if state == "42501":
        return ("grant the role the loader's privileges: GRANT society_loader TO <role> (SELECT, INSERT, "
                "UPDATE on the tables, USAGE on their sequences, TEMPORARY on the database; see ddl/0006_roles.sql)")
    if state in ("42P01", "42703", "3F000"):
        return "the tables are missing or out of date: run `society-ingest migrate`"
    return "fix the database configuration, then restart"


def where(conninfo: str) -> str:
    """``user@host:port/dbname`` of a connection string, never its password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable DATABASE_URL>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user") or "<default user>"
    return f"{user}@{host}:{port}/{params.get('dbname') or '<default database>'}"


def _first_line(e: BaseException) -> str:
    # A statement error's str() adds LINE and caret lines; the primary message is the reason.
    primary = getattr(getattr(e, "diag", None), "message_primary", None)
    text = (primary or str(e)).strip()
    # libpq prefixes connection failures with the address it tried; keep the server's reason.
    reason = text.rsplit("failed: ", 1)[-1] if "connection failed" in text else text
    reason = " ".join(reason.split())  # libpq pads "FATAL:  ..." and wraps hints over lines
    return reason or type(e).__name__


def translate(e: BaseException, conninfo: str, doing: str,
              reader: bool = False, owner: bool = False) -> TransientError | ConfigurationError:
    """The worker's error for a psycopg error that is not about a row's data."""
    state = sqlstate(e)
    message = f"PostgreSQL at {where(conninfo)}: {doing}: {_first_line(e)}"
    if classify(e) is Kind.TRANSIENT:
        return TransientError(message)
    return ConfigurationError(f"{message} ({state or type(e).__name__}); {hint(state or '', reader, message, owner)}")
