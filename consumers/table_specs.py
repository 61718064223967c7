"""How each table is loaded: columns, COPY types, idempotency key and conflict policy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from producers import tables


@dataclass(frozen=True, slots=True)
class Column:
    """A loaded column: its name, the type it is copied as, and its type in the table."""

    name: str
    copy_type: str
    table_type: str

    @property
    def select_expr(self) -> str:
        """Expression that reads the staged value as the table's type."""
        if self.copy_type == self.table_type:
            return self.name
        return f"{self.name}::{self.table_type}"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """Loading rules of one table."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    #: Guarded upsert (newest ``updated_at`` wins) instead of insert-if-absent.
    upsert: bool = False
    #: Event-time and bookkeeping columns: a redelivery or a re-run step sends the same
    #: fact with new values here, so they do not count when telling a duplicate from a
    #: conflict. Every other column identifies the fact.
    bookkeeping: tuple[str, ...] = ()
    column_names: tuple[str, ...] = field(init=False)
    #: Columns that must match for a re-sent record to be a duplicate rather than a conflict.
    identity: tuple[str, ...] = field(init=False)
    copy_types: list[str] = field(init=False)
    stage_table: str = field(init=False)

    #: (index, name, type) of the int4 and float4 columns, for ``range_error``.
    _numeric: tuple[tuple[int, str, str], ...] = field(init=False, repr=False)

    def range_error(self, row: tuple[Any, ...]) -> str | None:
        """Why a value of `row` does not fit its numeric column, or None.

        Binary COPY writes a Python int into int4 modulo 2**32 and a float beyond
        float4's range as infinity, silently; the worker checks rows the pydantic
        models did not validate with this before loading them.
        """
        for i, name, kind in self._numeric:
            v = row[i]
            if v is None:
                continue
            if kind == INT:
                if not INT4_MIN <= v <= INT4_MAX:
                    return f"{self.name}.{name}: {v} is out of range for integer (int4)"
            elif not (math.isfinite(v) and abs(v) <= REAL_MAX):
                return f"{self.name}.{name}: {v} is out of range for real (float4)"
        return None

    def __post_init__(self) -> None:
        # Read per row on the hot path: computed once.
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))
        unknown = set(self.bookkeeping) - set(self.column_names)
        if unknown:
            raise ValueError(f"{self.name}: bookkeeping columns {sorted(unknown)} are not columns")
        object.__setattr__(self, "identity", tuple(c for c in self.column_names if c not in self.bookkeeping))
        object.__setattr__(self, "copy_types", [c.copy_type for c in self.columns])
        object.__setattr__(self, "stage_table", f"_stage_{self.name}")
        numeric = tuple((i, c.name, c.table_type) for i, c in enumerate(self.columns) if c.table_type in (INT, REAL))
        object.__setattr__(self, "_numeric", numeric)


def _c(name: str, copy_type: str, table_type: str | None = None) -> Column:
    return Column(name, copy_type, table_type or copy_type)


UUID, TEXT, INT, TS, REAL = "uuid", "text", "int4", "timestamptz", "float4"
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
#: Largest finite float4 (PostgreSQL REAL).
REAL_MAX: Final = 3.4028234663852886e38

SPECS: Final[dict[str, TableSpec]] = {
    tables.SIMULATION_RUNS: TableSpec(
        tables.SIMULATION_RUNS,
        (
            _c("run_id", UUID),
            _c("config_snapshot", TEXT, "jsonb"),
            _c("start_time", TS),
            _c("end_time", TS),
            _c("status", TEXT),
            _c("notes", TEXT),
            _c("updated_at", TS),
        ),
        key=("run_id",),
        upsert=True,
        bookkeeping=("updated_at",),
    ),
    tables.AGENTS: TableSpec(
        tables.AGENTS,
        (
            _c("creation_run_id", UUID),
            _c("agent_id_str", TEXT),
            _c("persona", TEXT),
            _c("initial_agent_type", TEXT),
            _c("creation_step", INT),
            _c("updated_at", TS),
        ),
        key=("creation_run_id", "agent_id_str"),
        upsert=True,
        bookkeeping=("updated_at",),
    ),
    tables.AGENT_MEMORIES: TableSpec(
        tables.AGENT_MEMORIES,
        (
            _c("memory_id", UUID),
            _c("agent_id_str", TEXT),
            _c("simulation_run_id", UUID),
            _c("step_timestamp", INT),
            _c("real_timestamp", TS),
            _c("content", TEXT),
            _c("importance", REAL),
            _c("tags", "text[]"),
            _c("related_agent_id", TEXT),
        ),
        key=("memory_id",),
        bookkeeping=("real_timestamp",),
    ),
    tables.MARKET_TRANSACTIONS: TableSpec(
        tables.MARKET_TRANSACTIONS,
        (
            _c("transaction_sim_id", TEXT),
            _c("simulation_run_id", UUID),
            _c("step_timestamp", INT),
            _c("real_timestamp", TS),
            _c("market_id", TEXT),
            _c("resource_type", TEXT),
            _c("buyer_agent_id", TEXT),
            _c("seller_agent_id", TEXT),
            _c("quantity", REAL),
            _c("price_per_unit", REAL),
            _c("total_cost", REAL),
            _c("buy_order_id", TEXT),
            _c("sell_order_id", TEXT),
        ),
        key=("simulation_run_id", "transaction_sim_id"),
        bookkeeping=("real_timestamp",),
    ),
    tables.BANKING_TRANSACTIONS: TableSpec(
        tables.BANKING_TRANSACTIONS,
        (
            _c("transaction_sim_id", TEXT),
            _c("simulation_run_id", UUID),
            _c("step_timestamp", INT),
            _c("real_timestamp", TS),
            _c("account_id", TEXT),
            _c("agent_id_str", TEXT),
            _c("transaction_type", TEXT),
            _c("amount", REAL),
            _c("balance_after", REAL),
            _c("description", TEXT),
            _c("counterparty_id", TEXT),
            _c("reference_id", TEXT),
        ),
        key=("simulation_run_id", "transaction_sim_id"),
        bookkeeping=("real_timestamp",),
    ),
    tables.SIMULATION_EVENTS: TableSpec(
        tables.SIMULATION_EVENTS,
        (
            _c("event_uid", UUID),
            _c("simulation_run_id", UUID),
            _c("step_timestamp", INT),
            _c("real_timestamp", TS),
            _c("event_type", TEXT),
            _c("agent_id_primary", TEXT),
            _c("agent_id_secondary", TEXT),
            _c("details", TEXT, "jsonb"),
            _c("description", TEXT),
        ),
        key=("event_uid",),
        bookkeeping=("real_timestamp",),
    ),
}

#: Column that names the run of a child row (for parent stubs).
RUN_COLUMN: Final[dict[str, str]] = {
    tables.AGENTS: "creation_run_id",
    tables.AGENT_MEMORIES: "simulation_run_id",
    tables.MARKET_TRANSACTIONS: "simulation_run_id",
    tables.BANKING_TRANSACTIONS: "simulation_run_id",
    tables.SIMULATION_EVENTS: "simulation_run_id",
}
