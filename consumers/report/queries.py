"""What a report shows of one run, read from the analysis views (ddl/0009) in one snapshot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consumers._deps import psycopg
from consumers.errors import ConsumerError
from consumers.pg_errors import where
from consumers.views import MATERIALIZED
from producers import tables

#: The record tables whose rows carry a step and a load time, with the name a person reads.
RECORD_TABLES = {
    tables.AGENT_MEMORIES: "memories",
    tables.SIMULATION_EVENTS: "events",
    tables.MARKET_TRANSACTIONS: "market trades",
    tables.BANKING_TRANSACTIONS: "bank transactions",
}

Columns = dict[str, list[Any]]


class ReportError(ConsumerError):
    """The report cannot be made as asked."""


class RunNotFoundError(ReportError):
    """No such run in the database."""


@dataclass
class RunData:
    """One run as the report needs it; series are columns (name -> values by step)."""

    run_id: str
    status: str | None
    start_time: datetime | None
    end_time: datetime | None
    config: Any
    agents: int
    #: Rows per record table (RECORD_TABLES), and the first and last step seen in any of them.
    rows: dict[str, int]
    first_step: int | None
    last_step: int | None
    #: resource -> step, trades, volume, turnover, vwap, min_price, max_price
    prices: dict[str, Columns] = field(default_factory=dict)
    #: step, agents, mean, p10, p25, median, p75, p90, gini
    wealth: Columns = field(default_factory=dict)
    #: The agents' balances at the last step of wealth (for the histogram).
    final_balances: list[float] = field(default_factory=list)
    #: event type -> step -> events
    events: dict[str, dict[int, int]] = field(default_factory=dict)
    #: table -> step, rows, lag_p50_s, lag_p95_s, lag_max_s
    lag: dict[str, Columns] = field(default_factory=dict)
    #: The materialized views, when they do not hold the run's rows as they are now (refresh them).
    stale: list[str] = field(default_factory=list)


def _columns(rows: list[tuple], names: tuple[str, ...]) -> Columns:
    return {name: [r[i] for r in rows] for i, name in enumerate(names)}


def _grouped(rows: list[tuple], names: tuple[str, ...]) -> dict[str, Columns]:
    """Rows whose first value names a group -> that group's columns of the other values."""
    groups: dict[str, list[tuple]] = {}
    for r in rows:
        groups.setdefault(r[0], []).append(r[1:])
    return {g: _columns(rs, names) for g, rs in groups.items()}


_PRICES = ("step", "trades", "volume", "turnover", "vwap", "min_price", "max_price")
_WEALTH = ("step", "agents", "mean", "p10", "p25", "median", "p75", "p90", "gini")
_LAG = ("step", "rows", "lag_p50_s", "lag_p95_s", "lag_max_s")


def load_run(conninfo: str, run_id: uuid.UUID) -> RunData:
    """Read run `run_id` from the views; RunNotFoundError when the database has no such run."""
    with psycopg.connect(conninfo, autocommit=False) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for every query
        q = conn.execute
        run = q("SELECT status, start_time, end_time, config_snapshot FROM simulation_runs WHERE run_id = %s",
                (run_id,)).fetchone()
        if run is None:
            raise RunNotFoundError(f"run {run_id} is not in PostgreSQL at {where(conninfo)}")
        agents = q("SELECT count(*) FROM agents WHERE creation_run_id = %s", (run_id,)).fetchone()[0]
        rows, first, last = {}, [], []
        for table in RECORD_TABLES:
            n, lo, hi = q(f"SELECT count(*), min(step_timestamp), max(step_timestamp) FROM {table} "
                          "WHERE simulation_run_id = %s", (run_id,)).fetchone()
            rows[table] = n
            first += [lo] if lo is not None else []
            last += [hi] if hi is not None else []
        data = RunData(str(run_id), run[0], run[1], run[2], run[3], agents, rows,
                       min(first) if first else None, max(last) if last else None)
        data.prices = _grouped(q(f"SELECT resource_type, {', '.join(_PRICES)} FROM market_prices "
                                 "WHERE run_id = %s ORDER BY resource_type, step", (run_id,)).fetchall(), _PRICES)
        data.wealth = _columns(q(f"SELECT {', '.join(_WEALTH)} FROM wealth_distribution WHERE run_id = %s "
                                 "ORDER BY step", (run_id,)).fetchall(), _WEALTH)
        if data.wealth["step"]:
            data.final_balances = [b for (b,) in q(
                "SELECT balance FROM bank_balances WHERE run_id = %s AND step = %s", (run_id, data.wealth["step"][-1]))]
        for event_type, step, n in q("SELECT event_type, step, events FROM event_counts WHERE run_id = %s "
                                     "ORDER BY event_type, step", (run_id,)):
            data.events.setdefault(event_type, {})[step] = n
        data.lag = _grouped(q(f"SELECT table_name, {', '.join(_LAG)} FROM ingestion_lag WHERE run_id = %s "
                              "ORDER BY table_name, step", (run_id,)).fetchall(), _LAG)
        data.stale = _stale(data)
    return data


def _stale(data: RunData) -> list[str]:
    """The materialized views, when ingestion_lag does not count the run's rows as the tables do now.

    `views refresh` refreshes them together, so a run's new rows in any table show there.
    """
    if any(sum(data.lag.get(t, {}).get("rows", [])) != n for t, n in data.rows.items()):
        return list(MATERIALIZED)
    return []
