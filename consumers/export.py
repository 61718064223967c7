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
the run. Memory stays bounded however large the run or its rows: each round
trip fetches about FETCH_BYTES of rows (as many rows as fit, at the sizes
seen so far), and each row is written out as it comes.
"""

from __future__ import annotations

import gzip
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from consumers._deps import psycopg
from consumers._files import refusal, replaced_atomically
from consumers.errors import ConsumerError
from consumers.pg_errors import where
from producers import tables
from producers.columns import COLUMNS

#: Rows of the first round trip on the server-side cursor, before any row size is known.
FIRST_FETCH_ROWS: Final = 100
#: Most rows per round trip (small rows): beyond this, fewer round trips gain nothing measurable.
MAX_FETCH_ROWS: Final = 2_000
#: Bytes of rows per round trip (the client holds one round trip's rows at a time).
FETCH_BYTES: Final = 8 * 1024 * 1024
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
                with conn.cursor(name=f"export_{table}") as cur:
                    cur.execute(export_query(table), (run_id,))
                    result.rows[table] = _copy_lines(cur, out, progress)
                stubs = _stubs(conn, table, run_id)
                if stubs:
                    result.stubs_skipped[table] = stubs
    result.elapsed_s = time.monotonic() - started
    return result


def _copy_lines(cur: Any, out: IO[bytes], progress: Callable[[int], None]) -> int:
    """Write the cursor's lines to `out` as they come, one round trip of about FETCH_BYTES at a time; the rows."""
    rows = size = 0
    n = FIRST_FETCH_ROWS
    while batch := cur.fetchmany(n):
        for (line,) in batch:
            data = line.encode("utf-8")
            out.write(data)
            out.write(b"\n")
            size += len(data) + 1
        rows += len(batch)
        progress(len(batch))
        del batch  # before the next round trip
        n = max(1, min(MAX_FETCH_ROWS, FETCH_BYTES * rows // size))
    return rows


def check_output(name: str) -> None:
    """ExportError unless a file can be written at `name` ('-': stdout): checked before the export starts.

    The file is replaced whole (see ``open_output``), so it must be a regular file or not exist.
    """
    if name == "-":
        return
    path = Path(name)
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder; give a file name, e.g. {path / 'run.ndjson.gz'}")
    reason = refusal(path)
    if reason:
        raise ExportError(f"cannot write {path}: {reason}; write to '-' and redirect")
    folder = path.parent
    if not folder.exists():
        raise ExportError(f"cannot write {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path}: no permission to create files in {folder}")


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
    check_output(name)
    path = Path(name)
    with replaced_atomically(path) as raw:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL) as gz:
                yield gz
        else:
            yield raw


__all__ = ["ExportError", "ExportResult", "RunNotFoundError", "check_output", "expected_rows", "export_query",
           "export_run", "open_output"]
