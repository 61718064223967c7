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
    """One line for a lock not granted within `timeout_s` while doing `what`."""
    return (f"lock not available within {timeout_s:g}s: another session holds a lock on {what} "
            "(a refresh, or a long transaction; see pg_locks)")


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

    `timeout_s` bounds each lock wait (lock_timeout): LockTimeoutError names the view when another
    session holds it longer.

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
                    conn.execute(psycopg.sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
                        how, psycopg.sql.Identifier(view)))
                except psycopg.errors.InsufficientPrivilege as e:
                    raise ConfigurationError(
                        f"cannot refresh {view}: {e.diag.message_primary}; refresh the views as their owner, "
                        "the role that runs `society-ingest migrate`"
                    ) from e
                except psycopg.errors.LockNotAvailable as e:
                    raise LockTimeoutError(lock_timeout_message(e, view, timeout_s or 0)) from e
                seconds = time.perf_counter() - started
                rows = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                    psycopg.sql.Identifier(view)))
                done.append(Refreshed(view, rows.fetchone()[0], seconds))
    return done
