"""Loading rows straight into PostgreSQL: binary COPY and the alternatives people use.

Every loader takes rows per table (``rows.Rows``), writes parents first and
returns when the last transaction committed:

- ``copy``: psycopg binary COPY, one transaction per table, with the worker's
  own dumpers (jsonb as validated JSON text, binary ``text[]``);
- ``insert_per_row``: one ``INSERT`` per row, a transaction per ALT_COMMIT_ROWS rows;
- ``executemany``: ``cursor.executemany`` of ``INSERT … ON CONFLICT DO NOTHING``
  per ALT_COMMIT_ROWS rows (psycopg 3 pipelines executemany: one round trip per
  batch, not per row), the Kafka Connect JDBC sink's pattern (batch.size 3000);
- ``values_100``: multi-row ``INSERT … VALUES`` of 100 rows ``ON CONFLICT DO
  NOTHING`` (the Quix Streams PostgreSQL sink's ``execute_values`` page size),
  a transaction per ALT_COMMIT_ROWS rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from psycopg.types.json import set_json_dumps

from consumers._deps import psycopg
from consumers.bench.rows import Rows
from consumers.sink import _TextArrayBinaryDumper, _TextList  # the worker's own dumpers: a baseline as fast
from consumers.table_specs import SPECS, TableSpec
from producers import tables

log = logging.getLogger(__name__)

#: Rows per transaction of the alternatives (the Kafka Connect JDBC sink's default batch.size).
ALT_COMMIT_ROWS = 3000
#: Rows per statement of the multi-row VALUES alternative (psycopg2 execute_values' page size, Quix's).
VALUES_ROWS = 100
#: What TRUNCATE empties between measurements (the worker's bookkeeping too).
TRUNCATED = (*tables.TABLES, "ingest_offsets", "ingest_conflicts", "ingest_workers")

Loader = Callable[[Any, Rows], None]


def connect(database_url: str) -> Any:
    """An autocommit connection that dumps values the way the worker does."""
    conn = psycopg.connect(database_url, autocommit=True)
    set_json_dumps(lambda text: text, context=conn)
    oid = conn.adapters.types["text"].array_oid
    conn.adapters.register_dumper(_TextList, type("TextArrayDumper", (_TextArrayBinaryDumper,), {"oid": oid}))
    return conn


def empty(conn: Any) -> None:
    """Empty the tables, then CHECKPOINT so no measurement pays for another's dirty pages."""
    conn.execute(f"TRUNCATE {', '.join(TRUNCATED)}")
    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        log.info("no CHECKPOINT privilege: measurements may pay for each other's writes")


def count_rows(conn: Any) -> dict[str, int]:
    """Rows per table."""
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables.TABLES}


def _columns(spec: TableSpec) -> str:
    return ", ".join(spec.column_names)


def _copy_table(conn: Any, spec: TableSpec, rows: list[tuple[Any, ...]]) -> None:
    with conn.transaction(), conn.cursor().copy(
            f"COPY {spec.name} ({_columns(spec)}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types([c.table_type for c in spec.columns])
        for row in rows:
            cp.write_row(row)


def copy(conn: Any, rows: Rows) -> None:
    """Binary COPY, a transaction per table, parents first."""
    for table in tables.TABLES:
        if rows[table]:
            _copy_table(conn, SPECS[table], rows[table])


def _marks(spec: TableSpec) -> str:
    return "(" + ", ".join("%s::jsonb" if c.table_type == "jsonb" else "%s" for c in spec.columns) + ")"


def _conflict(spec: TableSpec) -> str:
    """Insert-if-absent for facts; the newest ``updated_at`` wins for runs and agents."""
    target = ", ".join(spec.key)
    if not spec.upsert:
        return f"ON CONFLICT ({target}) DO NOTHING"
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in spec.column_names if c not in spec.key)
    return f"ON CONFLICT ({target}) DO UPDATE SET {sets} WHERE {spec.name}.updated_at <= EXCLUDED.updated_at"


def _insert(spec: TableSpec, n: int = 1, conflict: bool = True) -> str:
    values = ", ".join([_marks(spec)] * n)
    return f"INSERT INTO {spec.name} ({_columns(spec)}) VALUES {values}" + (f" {_conflict(spec)}" if conflict else "")


def _chunks(rows: list[tuple[Any, ...]], size: int) -> list[list[tuple[Any, ...]]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def insert_per_row(conn: Any, rows: Rows) -> None:
    """One INSERT per row, ALT_COMMIT_ROWS rows a transaction."""
    for table in tables.TABLES:
        spec = SPECS[table]
        sql = _insert(spec, conflict=spec.upsert)
        for chunk in _chunks(rows[table], ALT_COMMIT_ROWS):
            with conn.transaction(), conn.cursor() as cur:
                for row in chunk:
                    cur.execute(sql, row)


def executemany(conn: Any, rows: Rows) -> None:
    """``executemany`` of INSERT … ON CONFLICT, ALT_COMMIT_ROWS rows a call and a transaction."""
    for table in tables.TABLES:
        sql = _insert(SPECS[table])
        for chunk in _chunks(rows[table], ALT_COMMIT_ROWS):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, chunk)


def values_100(conn: Any, rows: Rows) -> None:
    """Multi-row INSERT … VALUES of VALUES_ROWS rows ON CONFLICT, ALT_COMMIT_ROWS rows a transaction."""
    for table in tables.TABLES:
        spec = SPECS[table]
        full = _insert(spec, VALUES_ROWS)
        for chunk in _chunks(rows[table], ALT_COMMIT_ROWS):
            with conn.transaction(), conn.cursor() as cur:
                for page in _chunks(chunk, VALUES_ROWS):
                    sql = full if len(page) == VALUES_ROWS else _insert(spec, len(page))
                    cur.execute(sql, [v for row in page for v in row])


#: The alternatives, by the name the report uses.
ALTERNATIVES: dict[str, Loader] = {
    "insert_per_row": insert_per_row,
    "executemany_on_conflict": executemany,
    "values_100_on_conflict": values_100,
}
