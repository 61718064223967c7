"""``society-ingest report``: one run, or two side by side, as a self-contained HTML page and a short summary."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

from consumers import views
from consumers.cli._options import (
    DatabaseUrl, Json, Timeout, console, fail, print_json, print_table, print_warning, typer,
)
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, require_schema
from consumers.cli.views import Concurrently


def _check_output(path: Path) -> None:
    if path.is_dir():
        fail(f"--output {path} is a folder: name the HTML file to write")
    if not path.parent.is_dir():
        fail(f"--output {path}: the folder {path.parent} does not exist")


def report(
    database_url: DatabaseUrl,
    run: Annotated[uuid.UUID, typer.Option("--run", help="The run to report.", show_default=False)],
    compare: Annotated[
        uuid.UUID | None,
        typer.Option("--compare", help="A second run, shown side by side with the first.", show_default=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file to write [default: report-<run>.html in this folder].",
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

    run_ids = [run] if compare is None else [run, compare]
    path = output or ops.default_output(run_ids)
    _check_output(path)
    db = database(database_url, timeout)
    require_schema(db)
    if refresh:
        views.refresh(db, concurrently)
    runs = [ops.load_run(db, r) for r in run_ids]
    written = ops.write_report(runs, path)
    if as_json:
        print_json({"output": str(path), "bytes": written.bytes, "charts": written.charts,
                    "runs": written.summaries})
        return
    stale = [v for v in views.MATERIALIZED if any(v in s["stale_views"] for s in written.summaries)]
    if stale:
        print_warning(f"the materialized views {', '.join(stale)} are older than the rows: "
                      "run `society-ingest views refresh` (or report --refresh) for current figures")
    print_table("report of run " + " vs ".join(str(r) for r in run_ids), ["", *(f"run {str(r)[:8]}" for r in run_ids)],
                ops.table_rows(written.summaries))
    charts_n = sum(len(v) for v in written.charts.values())
    console.print(f"report written to {path} ({charts_n} charts, {written.bytes / 1024:,.0f} KiB)", highlight=False,
                  soft_wrap=True)
