"""What a report shows of one run, read from the analysis views (ddl/0009) in one snapshot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consumers._deps import psycopg
from consumers.errors import ConsumerError
from consumers.pg_errors import where
from consumers.views import (
    MATERIALIZED, STATEMENT_TIMEOUT_FACTOR, LockTimeoutError, lock_timeout_message, set_timeouts,
)
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


def load_run(conninfo: str, run_id: uuid.UUID, timeout_s: float | None = None) -> RunData:
    """Read run `run_id` from the views; RunNotFoundError when the database has no such run.

    `timeout_s` bounds each lock wait and each query (lock_timeout, statement_timeout): a
    non-concurrent refresh holds its view locked; LockTimeoutError names the view.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if timeout_s is not None:
            set_timeouts(conn, timeout_s, statements=True)
        conn.autocommit = False
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for every query
        try:
            return _load(conn, conninfo, run_id)
        except psycopg.errors.LockNotAvailable as e:
            view = next((v for v in MATERIALIZED if v in str(getattr(e, "_rf_query", ""))), "the analysis views")
            raise LockTimeoutError(lock_timeout_message(e, view, timeout_s or 0)) from e
        except psycopg.errors.QueryCanceled as e:
            query = " ".join(str(getattr(e, "_rf_query", "")).split())
            raise ReportError(f"a report query took longer than {(timeout_s or 0) * STATEMENT_TIMEOUT_FACTOR:g}s "
                              f"({STATEMENT_TIMEOUT_FACTOR} × --timeout): {query[:100]}") from e


def _load(conn: "psycopg.Connection[Any]", conninfo: str, run_id: uuid.UUID) -> RunData:
    def q(query: str, params: tuple = ()) -> Any:
        try:
            return conn.execute(query, params)
        except psycopg.Error as e:
            e._rf_query = query  # type: ignore[attr-defined]  # which view blocked
            raise
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
    bank_last, bank_agents = q("SELECT max(step_timestamp), count(DISTINCT agent_id_str) FROM "
                               "banking_transactions WHERE simulation_run_id = %s", (run_id,)).fetchone()
    data.stale = _stale(data, bank_last, bank_agents)
    return data


def _stale(data: RunData, bank_last: int | None, bank_agents: int) -> list[str]:
    """The materialized views whose rows for the run differ from what the tables hold now, each checked on its own.

    ingestion_lag: its rows per table against the table's rows. wealth_distribution: its last
    step and agents there against the run's last bank step and the agents with bank transactions
    (every account is carried to that step). A change that keeps these counts (an UPDATE, or a
    row replaced by another) is not detected (README "Analysis").
    """
    stale = []
    w = data.wealth
    wealth_now = (w["step"][-1], w["agents"][-1]) if w.get("step") else (None, 0)
    if wealth_now != (bank_last, bank_agents if bank_last is not None else 0):
        stale.append("wealth_distribution")
    if any(sum(data.lag.get(t, {}).get("rows", [])) != n for t, n in data.rows.items()):
        stale.append("ingestion_lag")
    return [v for v in MATERIALIZED if v in stale]
