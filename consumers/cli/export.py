"""``society-ingest export``: one run from PostgreSQL as NDJSON, the format ``backfill`` reads."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from consumers import export as ops
from consumers.cli._options import (
    DatabaseUrl, Json, Timeout, console, err_console, fail, print_json, print_table, typer,
)
from consumers.cli._progress import Progress
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, require_schema
from producers.tables import TABLES

#: Exit status after Ctrl-C or SIGTERM (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Exit status when the reader of stdout went away (`export … | head`): 128 + SIGPIPE, as if killed by it.
EXIT_BROKEN_PIPE = 141


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does: the partial file is removed on the way out."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush meets no broken pipe either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def export(
    database_url: DatabaseUrl,
    run: Annotated[uuid.UUID, typer.Option("--run", help="The run to export.", show_default=False)],
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write, gzip when it ends in .gz; '-' for stdout.")
    ] = "-",
    tables: Annotated[
        list[str] | None,
        typer.Option("--tables", "-t", help=f"Only these tables (repeat); default all: {', '.join(TABLES)}."),
    ] = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Write every row of a run, parents first, one JSON object per line; `backfill` loads it back.

    The summary goes to stdout, or to stderr when the rows do. A file is
    written under a temporary name and renamed when complete: Ctrl-C or
    SIGTERM removes it and exits 130. When the reader of stdout goes away
    (`export … | head`), the export stops quietly with exit 141.
    """
    chosen = tuple(tables or TABLES)
    unknown = set(chosen) - set(TABLES)
    if unknown:
        raise typer.BadParameter(f"unknown table(s): {', '.join(sorted(unknown))}", param_hint="--tables")
    ops.check_output(output)
    db = database(database_url, timeout)
    require_schema(db)
    total = ops.expected_rows(db, run, chosen) if err_console.is_terminal else None
    try:
        with _sigterm_interrupts(), ops.open_output(output) as out, Progress("export", total) as bar:
            result = ops.export_run(db, run, out, chosen, bar.advance)
    except KeyboardInterrupt:
        fail("interrupted: " + ("the rows written to stdout are incomplete" if output == "-"
                                else f"{output} was not written (the partial file is removed)"), EXIT_INTERRUPTED)
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    result.output = output
    to_stdout = output != "-"
    if as_json:
        summary = {**dataclasses.asdict(result), "total": result.total,
                   "rows_per_s": result.total / result.elapsed_s if result.elapsed_s > 0 else None}
        if to_stdout:
            print_json(summary)
        else:  # the rows are on stdout: the summary is one line on stderr
            sys.stderr.write(json.dumps(summary, default=str, separators=(",", ":")) + "\n")
        return
    rate = f" ({result.total / result.elapsed_s:,.0f} rows/s)" if result.elapsed_s > 0 else ""
    stubs = "".join(f"; {n:,} stub row(s) of {t} left out (the worker recreates them)"
                    for t, n in result.stubs_skipped.items())
    line = f"exported {result.total:,} rows of run {run} to {output} in {result.elapsed_s:.1f}s{rate}{stubs}"
    if to_stdout:
        print_table(f"export of run {run}", ["table", "rows"], [[t, f"{n:,}"] for t, n in result.rows.items()])
        console.print(line, highlight=False)
    else:
        err_console.print(line + ": " + ", ".join(f"{t} {n:,}" for t, n in result.rows.items()), highlight=False,
                          soft_wrap=True)
