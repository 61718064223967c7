"""Export: one run's rows from PostgreSQL as the newline-delimited JSON that ``consumers.backfill`` reads.

One JSON object per line: ``"table"`` and the table's columns (those of its
current Avro schema; the database-generated surrogate keys are left out),
parents first (the run, its agents), then memories, market and bank
transactions and events ordered by step and key. PostgreSQL writes each line
(``row_to_json``), so every value keeps its exact form: timestamps in ISO 8601
with microseconds and an offset (UTC), REALs with the shortest digits that
read back to the same value, ``text[]`` as arrays, jsonb as its JSON value
with every digit of its numbers (a jsonb string or jsonb ``null`` as JSON
text, which is how a backfill line tells them from SQL NULL).

Stub rows (a run or agent the worker created because a child arrived first:
``updated_at`` is NULL) are not exported: loading the children makes the
worker create the same stubs again. Rows are read through a server-side
cursor in one read-only REPEATABLE READ transaction: a consistent snapshot of
the run, in bounded memory however large it is.
"""

from __future__ import annotations

import gzip
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from consumers._deps import psycopg
from consumers._files import replaced_atomically
from consumers.errors import ConsumerError
from consumers.pg_errors import where
from producers import tables
from producers.columns import COLUMNS

#: Rows fetched from the server-side cursor at a time (bounds the client's memory).
FETCH_ROWS: Final = 10_000
#: gzip's default level: about 4x smaller NDJSON at a speed well above PostgreSQL's output rate.
GZIP_LEVEL: Final = 6


class ExportError(ConsumerError):
    """The export cannot be made as asked."""


class RunNotFoundError(ExportError):
    """No such run in the database."""


@dataclass
class ExportResult:
    """What an export wrote."""

    run_id: str
    rows: dict[str, int] = field(default_factory=dict)
    #: Stub rows left out (the worker recreates them from the children).
    stubs_skipped: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    output: str = "-"

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _value(column: str, sql: str) -> str:
    """Select expression of a column: a jsonb string or JSON null goes out as JSON text."""
    if sql == "jsonb":
        return (f"CASE WHEN jsonb_typeof({column}) IN ('string', 'null') THEN to_jsonb({column}::text) "
                f"ELSE {column} END AS {column}")
    return column


def _order(table: str) -> str:
    decl = tables.DECLARATIONS[table]
    key = [c for c in decl.key if c != decl.run_column]
    steps = ["step_timestamp"] if any(c.name == "step_timestamp" for c in COLUMNS[table]) else []
    return ", ".join(f"r.{c}" for c in steps + key) or "r.updated_at"


def export_query(table: str) -> str:
    """The query writing `table`'s rows of one run (parameter: the run id) as NDJSON lines."""
    decl = tables.DECLARATIONS[table]
    select = ", ".join([f"'{table}' AS \"table\""] + [_value(c.name, c.sql) for c in COLUMNS[table]])
    real_rows = " AND updated_at IS NOT NULL" if decl.upsert else ""
    return (f"SELECT row_to_json(r)::text FROM (SELECT {select} FROM {table} "
            f"WHERE {decl.run_column} = %s{real_rows}) r ORDER BY {_order(table)}")


def _stubs(conn: Any, table: str, run_id: uuid.UUID) -> int:
    decl = tables.DECLARATIONS[table]
    if not decl.upsert:
        return 0
    sql = f"SELECT count(*) FROM {table} WHERE {decl.run_column} = %s AND updated_at IS NULL"
    return conn.execute(sql, (run_id,)).fetchone()[0]


def expected_rows(conninfo: str, run_id: uuid.UUID, chosen: Sequence[str]) -> int | None:
    """Rows the run's producer recorded in `chosen` tables (its ``record_counts``), for a progress bar; None if unknown."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT record_counts FROM simulation_runs WHERE run_id = %s", (run_id,)).fetchone()
    counts = row[0] if row else None
    if not isinstance(counts, dict):
        return None
    return sum(int(counts.get(t, 0)) for t in chosen)


def export_run(
    conninfo: str,
    run_id: uuid.UUID,
    out: IO[bytes],
    chosen: Sequence[str] = tables.TABLES,
    progress: Callable[[int], None] = lambda n: None,
) -> ExportResult:
    """Write every row of run `run_id` in the `chosen` tables (parents first) to `out`; RunNotFoundError if none."""
    unknown = set(chosen) - set(tables.TABLES)
    if unknown:
        raise ExportError(f"unknown table(s) {', '.join(sorted(unknown))}; expected {', '.join(tables.TABLES)}")
    started = time.monotonic()
    result = ExportResult(str(run_id))
    with psycopg.connect(conninfo) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            conn.execute("SET LOCAL TIME ZONE 'UTC'")
            conn.execute("SET LOCAL extra_float_digits = 1")  # shortest exact REALs (PostgreSQL 12+)
            if conn.execute("SELECT 1 FROM simulation_runs WHERE run_id = %s", (run_id,)).fetchone() is None:
                raise RunNotFoundError(f"run {run_id} is not in PostgreSQL at {where(conninfo)}")
            for table in tables.TABLES:  # parents first, whatever order they were asked in
                if table not in chosen:
                    continue
                result.rows[table] = 0
                with conn.cursor(name=f"export_{table}") as cur:
                    cur.itersize = FETCH_ROWS
                    cur.execute(export_query(table), (run_id,))
                    while rows := cur.fetchmany(FETCH_ROWS):
                        out.write("".join(f"{line}\n" for (line,) in rows).encode("utf-8"))
                        result.rows[table] += len(rows)
                        progress(len(rows))
                stubs = _stubs(conn, table, run_id)
                if stubs:
                    result.stubs_skipped[table] = stubs
    result.elapsed_s = time.monotonic() - started
    return result


@contextmanager
def open_output(name: str) -> Iterator[IO[bytes]]:
    """Bytes to `name` ('-': stdout), gzip-compressed when it ends in ``.gz``.

    A file is written under a temporary name beside it and renamed when the
    block ends without an error, so an interrupted export leaves no partial
    file that looks complete.
    """
    if name == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(name)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: the folder {path.parent} does not exist")
    with replaced_atomically(path) as raw:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL) as gz:
                yield gz
        else:
            yield raw


__all__ = ["ExportError", "ExportResult", "RunNotFoundError", "expected_rows", "export_query", "export_run",
           "open_output"]
