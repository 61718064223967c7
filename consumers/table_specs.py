"""How each table is loaded: columns, COPY types, idempotency key and conflict policy.

Derived at import from the table's current Avro schema (``producers.columns``)
and its declaration (``producers.tables.DECLARATIONS``); nothing here lists a field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from producers import tables
from producers.columns import COPY_TYPE, COLUMNS, ColumnDef


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
    #: Column naming an agent of the row's run (stub agents are created for it).
    agent_column: str | None = None
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


def _column(c: ColumnDef) -> Column:
    table_type = COPY_TYPE[c.base_sql]
    # JSONB travels as validated JSON text; a direct COPY writes it with the jsonb type.
    return Column(c.name, table_type, "jsonb" if c.sql == "jsonb" else table_type)


def _spec(decl: tables.Table) -> TableSpec:
    return TableSpec(
        decl.name,
        tuple(_column(c) for c in COLUMNS[decl.name]),
        key=decl.key,
        upsert=decl.upsert,
        bookkeeping=decl.event_time,
        agent_column=decl.agent_column,
    )


UUID, TEXT, INT, TS, REAL = "uuid", "text", "int4", "timestamptz", "float4"
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
#: Largest finite float4 (PostgreSQL REAL).
REAL_MAX: Final = 3.4028234663852886e38

#: How each table is loaded: its columns (from its schema) and its declaration (producers.tables).
SPECS: Final[dict[str, TableSpec]] = {t: _spec(tables.DECLARATIONS[t]) for t in tables.TABLES}

#: Column that names the run of a child row (for parent stubs).
RUN_COLUMN: Final[dict[str, str]] = {
    t: d.run_column for t, d in tables.DECLARATIONS.items() if t != tables.SIMULATION_RUNS
}
