"""The analysis views of ddl/0009 and the refresh of those that are materialized."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from consumers._deps import psycopg
from consumers.errors import ConfigurationError

#: Every analysis view, in the order a refresh must follow (a view before those built on it).
VIEWS: Final = (
    "market_prices", "bank_balances", "wealth_distribution", "event_counts", "memory_counts", "ingestion_lag",
)
#: The materialized ones (ddl/0009 says why these): as fresh as their last refresh.
MATERIALIZED: Final = ("wealth_distribution", "ingestion_lag")


@dataclass(frozen=True, slots=True)
class Refreshed:
    """One materialized view refreshed: its rows afterwards and the time the refresh took."""

    view: str
    rows: int
    seconds: float


def refresh(conninfo: str, concurrently: bool = False) -> list[Refreshed]:
    """Refresh every materialized view, in dependency order, each in its own transaction.

    `concurrently` keeps the views readable meanwhile (REFRESH … CONCURRENTLY, through
    their unique indexes), at the cost of a slower refresh. Needs the views' owner: any other
    role gets ConfigurationError.
    """
    done = []
    how = psycopg.sql.SQL("CONCURRENTLY " if concurrently else "")
    with psycopg.connect(conninfo, autocommit=True) as conn:
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
            seconds = time.perf_counter() - started
            rows = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(view)))
            done.append(Refreshed(view, rows.fetchone()[0], seconds))
    return done
