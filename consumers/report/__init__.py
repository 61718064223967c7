"""Run reports: one run (or two side by side) from the analysis views as a self-contained HTML page.

``load_run`` reads a run (``queries``), ``summarize`` makes its figures
(``summary``), ``write_report`` draws the charts (``charts``: matplotlib, the
``charts`` extra) and writes the page (``page``). Importing this package does
not import matplotlib; ``write_report`` does.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers._files import write_atomically
from consumers.report.queries import RECORD_TABLES, ReportError, RunData, RunNotFoundError, load_run
from consumers.report.summary import summarize, table_rows

__all__ = [
    "RECORD_TABLES", "ReportError", "RunData", "RunNotFoundError", "WrittenReport", "load_run", "summarize",
    "default_output", "table_rows", "write_report",
]


@dataclass(frozen=True, slots=True)
class WrittenReport:
    """What ``write_report`` wrote: the file (None: stdout), its charts (PNG sizes in bytes per chart and run)
    and the summaries."""

    path: Path | None
    bytes: int
    charts: dict[str, list[int]]
    summaries: list[dict[str, Any]]


def write_report(runs: list[RunData], path: Path | None) -> WrittenReport:
    """Draw every chart of each run and write the page to `path` (replaced whole, atomically; None: stdout).

    A `path` that exists and is not a regular file (a device, fifo, symbolic link) is refused:
    ``consumers._files.NotReplaceableError``.
    """
    from consumers.report import charts, page

    summaries = [summarize(r) for r in runs]
    drawn = charts.draw(runs)
    text = page.render(summaries, table_rows(summaries), drawn,
                       datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
    encoded = text.encode("utf-8")
    if path is None:
        sys.stdout.buffer.write(encoded)
        sys.stdout.buffer.flush()
    else:
        write_atomically(path, encoded)
    return WrittenReport(path, len(encoded),
                         {chart_id: [len(p) for p in pngs] for chart_id, _, pngs in drawn}, summaries)


def default_output(run_ids: list[uuid.UUID]) -> Path:
    """``report-<run>.html``, or ``report-<run>-vs-<other>.html`` for a comparison."""
    return Path("report-" + "-vs-".join(str(r) for r in run_ids) + ".html")
