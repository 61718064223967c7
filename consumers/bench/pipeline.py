"""Mode ``mix``: the realistic mix from a pre-filled topic, 1 and 2 worker processes, against binary COPY.

The topics are filled once with the mix (the real SocietyProducer; not
timed) and read back into rows (not timed). Each repeat then loads the same
rows into emptied tables: binary COPY, the pipeline with each number of
``society-ingest consume`` processes (a fresh consumer group each, timed from
launch to the moment the offsets committed with the last rows are visible,
counts checked exactly), binary COPY again. A repeat's COPY rate is the mean
of its two COPYs; ratios are medians of per-repeat ratios.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.bench import loads, workers
from consumers.bench.mix import record_mix
from consumers.bench.report import Line, ModeResult, at_least, median, ratio
from consumers.bench.rows import Rows, end_offsets, read_rows, row_counts, sample
from consumers.bench.scratch import Scratch
from producers import ProducerSettings, SocietyProducer

log = logging.getLogger(__name__)

#: Rows loaded untimed first: a fresh database makes the first load slow (catalogs, relation extension).
WARM_UP_ROWS = 20_000
#: The most a pipeline measurement may take.
PIPELINE_TIMEOUT_S = 3600.0
TARGET_VS_COPY = 0.8


@dataclass(frozen=True)
class Prefilled:
    """Topics holding one run of the mix, and the rows they load into."""

    prefix: str
    sent: dict[str, int]
    ends: workers.Offsets
    rows: Rows
    expected: dict[str, int]

    @property
    def total(self) -> int:
        """Rows, all tables together."""
        return sum(self.expected.values())


def prefill(scratch: Scratch, records: int, agents: int, partitions: int) -> Prefilled:
    """A fresh prefix holding one run of `records` mixed records, read back into rows (none of it timed)."""
    prefix = scratch.topics("mix", partitions)
    with SocietyProducer(ProducerSettings(kafka=scratch.kafka, topic_prefix=prefix)) as producer:
        sent = record_mix(producer, records, agents)
    log.info("mix: %s records in %s", f"{sum(sent.values()):,}", prefix)
    rows = read_rows(scratch.kafka, prefix)
    return Prefilled(prefix, sent, end_offsets(scratch.kafka, prefix), rows, row_counts(rows))


def timed_load(conn: Any, load: loads.Loader, rows: loads.Rows, expected: dict[str, int]) -> float:
    """Empty the tables, load `rows` with `load`, check the counts; return the seconds it took."""
    loads.empty(conn)
    start = time.perf_counter()
    load(conn, rows)
    seconds = time.perf_counter() - start
    got = loads.count_rows(conn)
    if got != expected:
        raise RuntimeError(f"{load.__name__} loaded {got}, expected {expected}")
    return seconds


def _pipeline(scratch: Scratch, conn: Any, prefix: str, group: str, processes: int, ends: workers.Offsets,
              expected: dict[str, int], logs: Path) -> dict[str, Any]:
    loads.empty(conn)
    start = time.monotonic()
    running = workers.start_workers(scratch, prefix, group, processes, logs)
    visible = workers.wait_caught_up(conn, group, ends, running, PIPELINE_TIMEOUT_S)
    got = loads.count_rows(conn)
    stats = running.stop()
    if got != expected:
        raise workers.WorkerFailed(f"the workers loaded {got}, expected {expected}")
    return {"seconds": visible - start,
            # A worker's own span, first message to last commit (None: it was given nothing).
            "worker_seconds": [s["last_commit_at"] - s["first_message_at"] if s["first_message_at"] else None
                               for s in stats],
            "consumed": [s["consumed"] for s in stats]}


def run(scratch: Scratch, source: Prefilled, *, repeats: int, processes: tuple[int, ...], logs: Path,
        on_partial: Callable[[ModeResult], None] | None = None) -> ModeResult:
    """Measure the mix (see the module doc).

    Interrupted (or failed) after at least one pipeline measurement: `on_partial` gets the lines of
    what was measured so far (``ModeResult.partial``) before the exception goes on.
    """
    prefix, ends, rows, expected, total = source.prefix, source.ends, source.rows, source.expected, source.total
    samples: dict[str, list[float]] = {"copy_before": [], "copy_after": [], **{f"workers_{n}": [] for n in processes}}
    runs: list[dict[str, Any]] = []
    try:
        with loads.connect(scratch.database_url) as conn:
            warm = sample(rows, WARM_UP_ROWS)
            timed_load(conn, loads.copy, warm, row_counts(warm))
            for r in range(repeats):
                samples["copy_before"].append(total / timed_load(conn, loads.copy, rows, expected))
                for n in processes:
                    one = _pipeline(scratch, conn, prefix, f"{prefix}-r{r}-p{n}", n, ends, expected, logs)
                    runs.append({"repeat": r, "processes": n, **one})
                    samples[f"workers_{n}"].append(total / one["seconds"])
                    log.info("mix: repeat %d, %d worker process(es): %s rows/s (COPY before: %s rows/s)", r + 1, n,
                             f"{samples[f'workers_{n}'][-1]:,.0f}", f"{samples['copy_before'][-1]:,.0f}")
                samples["copy_after"].append(total / timed_load(conn, loads.copy, rows, expected))
    except BaseException:
        if on_partial is not None and runs:
            on_partial(_result(source, samples, runs, processes, repeats, partial=True))
        raise
    return _result(source, samples, runs, processes, repeats)


def _result(source: Prefilled, samples: dict[str, list[float]], runs: list[dict[str, Any]],
            processes: tuple[int, ...], repeats: int, partial: bool = False) -> ModeResult:
    """The mode's lines and data; `partial`: of the measurements made before an interruption."""
    total = source.total
    # A repeat's COPY rate: the mean of its COPY before and after (before alone when interrupted in between).
    copy = [(a + b) / 2 for a, b in zip(samples["copy_before"], samples["copy_after"], strict=False)]
    copy += samples["copy_before"][len(copy):]
    done = lambda k: f" [{k} of {repeats} repeats, interrupted]" if partial else ""  # noqa: E731
    lines = [Line(f"binary COPY of the mix ({total:,} rows), mean of before and after{done(len(copy))}",
                  median(copy), ratio=1.0, ratio_to="× COPY")]
    for n in processes:
        got = samples[f"workers_{n}"]
        if not got:
            continue
        rate, vs_copy = median(got), ratio(got, copy[:len(got)])
        target, met = (f"≥ {TARGET_VS_COPY} × COPY", at_least(vs_copy, TARGET_VS_COPY)) if n == 1 else ("", None)
        lines.append(Line(f"pipeline, {n} worker process{'es' if n > 1 else ''} (launch to last row visible)"
                          f"{done(len(got))}", rate, ratio=vs_copy, ratio_to="× COPY", target=target, met=met))
    if 1 in processes and 2 in processes and samples["workers_2"]:
        k = len(samples["workers_2"])
        two = ratio(samples["workers_2"], samples["workers_1"][:k])
        lines.append(Line(f"pipeline, 2 processes ÷ 1{done(k)}", ratio=two, ratio_to="× 1 process",
                          target="≥ 1.00", met=at_least(two, 1.0)))
    data = {"prefix": source.prefix, "records": sum(source.sent.values()), "records_sent": source.sent,
            "rows": source.expected, "samples_rows_per_s": samples, "copy_rows_per_s": copy, "pipeline_runs": runs}
    if partial:
        data["interrupted"] = True
    return ModeResult(data, lines, partial=partial)
