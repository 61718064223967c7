"""Mode ``alternatives``: what people load PostgreSQL with, on the same rows, against binary COPY.

One INSERT per row, ``executemany`` of ``INSERT … ON CONFLICT`` (Kafka Connect
JDBC sink) and multi-row ``INSERT … VALUES`` of 100 rows ``ON CONFLICT`` (Quix
Streams PostgreSQL sink) are slow, so they load a sample of the mix's rows
(``--alt-records``: every parent and the same share of each child table),
each repeat after a binary COPY of that same sample. See ``loads`` for how
each one commits.
"""

from __future__ import annotations

import logging
from typing import Any

from consumers.bench import loads
from consumers.bench.pipeline import Prefilled, timed_load
from consumers.bench.report import Line, ModeResult, at_least, median, ratio
from consumers.bench.rows import row_counts, sample

log = logging.getLogger(__name__)

#: The pipeline (1 worker) must load at least this many times faster than each alternative.
TARGETS = {"values_100_on_conflict": 4.0, "executemany_on_conflict": 1.5}
LABELS = {
    "insert_per_row": "one INSERT per row",
    "executemany_on_conflict": "executemany INSERT … ON CONFLICT (Kafka Connect JDBC)",
    "values_100_on_conflict": "INSERT … VALUES × 100 rows ON CONFLICT (Quix Streams)",
}


def run(scratch: Any, source: Prefilled, *, records: int, repeats: int, pipeline_rate: float | None) -> ModeResult:
    """Measure the alternatives on about `records` of `source`'s rows; `pipeline_rate`: the mix's 1-worker rate."""
    rows = sample(source.rows, records)
    expected = row_counts(rows)
    total = sum(expected.values())
    samples: dict[str, list[float]] = {"copy": [], **{name: [] for name in loads.ALTERNATIVES}}
    with loads.connect(scratch.database_url) as conn:
        for _ in range(repeats):
            samples["copy"].append(total / timed_load(conn, loads.copy, rows, expected))
            for name, load in loads.ALTERNATIVES.items():
                samples[name].append(total / timed_load(conn, load, rows, expected))
                log.info("alternatives: %s: %s rows/s", name, f"{samples[name][-1]:,.0f}")
    lines = [Line(f"binary COPY of the sample ({total:,} rows)", median(samples["copy"]), ratio=1.0,
                  ratio_to="× COPY")]
    for name in loads.ALTERNATIVES:
        rate = median(samples[name])
        lines.append(Line(f"{LABELS[name]} (sample)", rate, ratio=ratio(samples[name], samples["copy"]),
                          ratio_to="× COPY"))
        if pipeline_rate is not None and name in TARGETS:
            times = pipeline_rate / rate
            lines.append(Line(f"pipeline (1 worker) ÷ {LABELS[name]}", ratio=times, ratio_to="×",
                              target=f"≥ {TARGETS[name]}", met=at_least(times, TARGETS[name])))
    data = {"rows": expected, "commit_rows": loads.ALT_COMMIT_ROWS, "values_rows": loads.VALUES_ROWS,
            "samples_rows_per_s": samples}
    return ModeResult(data, lines)
