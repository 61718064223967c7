"""``society-ingest report``: one run, or two side by side, as a self-contained HTML page and a short summary."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Annotated

from consumers import views
from consumers._files import NotReplaceableError, refusal
from consumers.cli._failures import context
from consumers.cli._options import (
    DatabaseUrl, Json, Timeout, console, err_console, fail, print_json, print_table, print_warning, typer,
)
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, require_schema
from consumers.cli.views import Concurrently


#: The --output that means stdout: exactly this (``./-`` is a file named ``-``).
STDOUT = "-"


def _check_output(path: Path, shown: str) -> None:
    if path.is_dir() and not path.is_symlink():
        fail(f"--output {shown} is a folder: name the HTML file to write")
    reason = refusal(path)
    if reason:
        fail(f"--output {shown}: {reason}; write to '-' and redirect")
    folder = path.parent
    if not folder.is_dir():
        fail(f"--output {shown}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"--output {shown}: no permission to create files in the folder {folder}")


def report(
    database_url: DatabaseUrl,
    run: Annotated[uuid.UUID, typer.Option("--run", help="The run to report.", show_default=False)],
    compare: Annotated[
        uuid.UUID | None,
        typer.Option("--compare", help="A second run, shown side by side with the first.", show_default=False),
    ] = None,
    output: Annotated[
        str | None,  # not Path: Path("./-") is Path("-"), and only '-' itself means stdout
        typer.Option("--output", "-o", help="HTML file to write ('-': stdout, the summary then goes to stderr; "
                                            "'./-' is a file named '-') "
                                            "[default: report-<run>.html in this folder].",
                     show_default=False),
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Refresh the materialized views first (needs their owner).")
    ] = False,
    concurrently: Concurrently = False,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Write an HTML report of a run (summary, price, wealth, event and lag charts) and print its summary.

    The page is one file (charts embedded as PNG), readable offline. Figures come
    from the analysis views; the materialized ones are as fresh as their last
    refresh (`views refresh`, or --refresh here): the report warns when they are older
    than the run's rows.
    """
    try:
        from consumers.report import charts  # noqa: F401  # matplotlib, from the charts extra
    except ImportError as e:
        fail(str(e))
    from consumers import report as ops

    if compare is not None and compare == run:
        fail(f"--compare {compare} is the run given by --run: compare two different runs", code=2)
    run_ids = [run] if compare is None else [run, compare]
    context.needs_owner = refresh
    to_stdout = output == STDOUT  # the page goes to stdout: everything else to stderr
    path = None if to_stdout else ops.default_output(run_ids) if output is None else Path(output)
    shown = output or str(path)  # as given: Path("./-") prints as "-"
    if path is not None:
        _check_output(path, shown)
    db = database(database_url, timeout)
    require_schema(db)
    if refresh:
        views.refresh(db, concurrently, timeout)
    runs = [ops.load_run(db, r, timeout) for r in run_ids]
    try:
        written = ops.write_report(runs, path)
    except NotReplaceableError as e:
        fail(f"--output {shown}: {e.strerror}; write to '-' and redirect")
    except OSError as e:
        fail(f"--output {shown}: {e.strerror or e}")
    if as_json:
        print_json({"output": shown, "bytes": written.bytes, "charts": written.charts,
                    "runs": written.summaries}, file=sys.stderr if to_stdout else None)
        return
    stale = [v for v in views.MATERIALIZED if any(v in s["stale_views"] for s in written.summaries)]
    if stale:
        print_warning(f"the materialized views {', '.join(stale)} are older than the rows: "
                      "run `society-ingest views refresh` (or report --refresh) for current figures")
    print_table("report of run " + " vs ".join(str(r) for r in run_ids), ["", *(f"run {str(r)[:8]}" for r in run_ids)],
                ops.table_rows(written.summaries), to_stderr=to_stdout)
    charts_n = sum(len(v) for v in written.charts.values())
    (err_console if to_stdout else console).print(
        f"report written to {'stdout' if to_stdout else shown} ({charts_n} charts, {written.bytes / 1024:,.0f} KiB)",
        highlight=False, soft_wrap=True, markup=False)
