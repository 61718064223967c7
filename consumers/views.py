"""The analysis views of ddl/0009 and the refresh of those that are materialized."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from consumers._deps import psycopg
from consumers.errors import ConfigurationError, ConsumerError

#: Every analysis view, in the order a refresh must follow (a view before those built on it).
VIEWS: Final = (
    "market_prices", "bank_balances", "wealth_distribution", "event_counts", "memory_counts", "ingestion_lag",
)
#: The materialized ones (ddl/0009 says why these): as fresh as their last refresh.
MATERIALIZED: Final = ("wealth_distribution", "ingestion_lag")


class LockTimeoutError(ConsumerError):
    """A lock was not granted within the timeout: another session holds it."""


def lock_timeout_message(e: BaseException, what: str, timeout_s: float) -> str:
    """One line for a lock on `what` not granted within `timeout_s`."""
    return (f"lock not available within {timeout_s:g}s: another session holds a lock on {what} "
            "(a refresh, or a long transaction; see pg_locks)")


def _refresh_waited(view: str, timeout_s: float, relation: tuple[str, str] | None = None) -> str:
    """One line for a refresh of `view` that waited too long: for the view's own lock, or for one on a
    `relation` (kind, name) it reads."""
    waited = f"refreshing {view} waited more than {timeout_s:g}s for a lock on "
    if relation is None:
        return waited + ("the view itself: another session holds one (a refresh, or a transaction reading it; "
                         "see pg_locks)")
    kind, name = relation
    # a lock request queued ahead (an ALTER waiting for readers) blocks too: not only a lock held
    return waited + (f"{name}, a {kind} it reads: another session holds or waits for a conflicting lock "
                     "(a LOCK TABLE, a migration; see pg_locks)")


#: statement_timeout is this many times lock_timeout: a query blocked by a lock fails as a lock wait (named),
#: and a slow query still has time to finish after its locks.
STATEMENT_TIMEOUT_FACTOR: Final = 3


def set_timeouts(conn: "psycopg.Connection[Any]", timeout_s: float, statements: bool = False) -> None:
    """lock_timeout of the session: `timeout_s` seconds (and statement_timeout when `statements`:
    STATEMENT_TIMEOUT_FACTOR times that)."""
    ms = max(1, round(timeout_s * 1000))
    conn.execute(psycopg.sql.SQL("SET lock_timeout = {}").format(psycopg.sql.Literal(f"{ms}ms")))
    if statements:
        conn.execute(psycopg.sql.SQL("SET statement_timeout = {}").format(
            psycopg.sql.Literal(f"{ms * STATEMENT_TIMEOUT_FACTOR}ms")))


#: The tables and plain views a view reads, directly or through other views (from its rewrite rules): tables
#: first, so that a view locked after them waits on nothing but itself.
_READS = """
WITH RECURSIVE reads(oid) AS (
    SELECT %s::regclass::oid
    UNION
    SELECT d.refobjid FROM reads
    JOIN pg_rewrite r ON r.ev_class = reads.oid
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> reads.oid
)
SELECT CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END, n.nspname, c.relname
FROM reads JOIN pg_class c ON c.oid = reads.oid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v')
ORDER BY c.relkind = 'v', n.nspname, c.relname
"""


def _lock_reads(conn: "psycopg.Connection[Any]", view: str, timeout_s: float | None) -> None:
    """Take the locks the refresh of `view` takes on what it reads (ACCESS SHARE), one by one: a wait
    that times out names the table it waited for, not the view."""
    for kind, schema, name in conn.execute(_READS, (view,)).fetchall():
        try:
            conn.execute(psycopg.sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                psycopg.sql.Identifier(schema, name)))
        except psycopg.errors.LockNotAvailable as e:
            raise LockTimeoutError(_refresh_waited(view, timeout_s or 0, (kind, name))) from e


@dataclass(frozen=True, slots=True)
class Refreshed:
    """One materialized view refreshed: its rows afterwards and the time the refresh took."""

    view: str
    rows: int
    seconds: float


def refresh(conninfo: str, concurrently: bool = False, timeout_s: float | None = None) -> list[Refreshed]:
    """Refresh every materialized view, in dependency order, in ONE transaction: every view holds
    the tables as one snapshot saw them (REFRESH … CONCURRENTLY may run in a transaction block,
    unlike CREATE INDEX CONCURRENTLY).

    `timeout_s` bounds each lock wait (lock_timeout): LockTimeoutError names what another session
    holds longer: the view, or a table (or view) it reads.

    `concurrently` keeps the views readable meanwhile (REFRESH … CONCURRENTLY, through
    their unique indexes), at the cost of a slower refresh. Needs the views' owner: any other
    role gets ConfigurationError.
    """
    done = []
    how = psycopg.sql.SQL("CONCURRENTLY " if concurrently else "")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if timeout_s is not None:
            set_timeouts(conn, timeout_s)
        with conn.transaction():
            for view in MATERIALIZED:
                started = time.perf_counter()
                try:
                    _lock_reads(conn, view, timeout_s)
                    conn.execute(psycopg.sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
                        how, psycopg.sql.Identifier(view)))
                except psycopg.errors.InsufficientPrivilege as e:
                    raise ConfigurationError(
                        f"cannot refresh {view}: {e.diag.message_primary}; refresh the views as their owner, "
                        "the role that runs `society-ingest migrate`"
                    ) from e
                except psycopg.errors.LockNotAvailable as e:  # what it reads is locked already: the view
                    raise LockTimeoutError(_refresh_waited(view, timeout_s or 0)) from e
                seconds = time.perf_counter() - started
                rows = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                    psycopg.sql.Identifier(view)))
                done.append(Refreshed(view, rows.fetchone()[0], seconds))
    return done
