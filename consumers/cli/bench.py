"""``society-ingest bench``: the pipeline, its baselines and the producer, measured on scratch objects."""

from __future__ import annotations

import json
import logging
import math
import signal
from pathlib import Path
from typing import Annotated, Any

from consumers._deps import psycopg
from consumers._files import cannot_write_in, refusal, write_atomically
from consumers.bench import MODES, BenchConfig, BenchReport, run_bench
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import DatabaseUrl, Timeout, err_console, print_note, print_table, setup_logging, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka
from consumers.bench.report import COLUMNS
from consumers.bench.workers import WorkerFailed
from producers.kafka_config import KafkaClientSettings


EXIT_INTERRUPTED = 130


class _Signals:
    """SIGINT and SIGTERM stop the bench as Ctrl-C does (the scratch objects are removed on the way out);
    remembers that one came: the children it reached too then exit early, which is no failure of theirs."""

    def __init__(self) -> None:
        self.got: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.got is None:  # a second signal does not interrupt the clean-up
            self.got = signum
            raise KeyboardInterrupt


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated whole numbers, got {text!r}",
                                 param_hint="--processes") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"each count must be at least 1, got {text!r}", param_hint="--processes")
    return values


def _modes(text: str) -> tuple[str, ...]:
    chosen = tuple(m.strip() for m in text.split(","))
    unknown = set(chosen) - set(MODES)
    if unknown:
        raise typer.BadParameter(f"unknown mode(s): {', '.join(repr(m) for m in sorted(unknown))}; "
                                 f"expected {', '.join(MODES)}", param_hint="--modes")
    if len(set(chosen)) != len(chosen):
        raise typer.BadParameter(f"a mode is named twice in {text!r}", param_hint="--modes")
    return chosen


def _writable_json(path: Path | None) -> None:
    """Refuse now, before anything is created, a --json path the end could not write: one that is not
    a regular file (a folder, a device, a symbolic link: it is replaced whole) or in a folder where no
    file can be created (a file is created there and removed to know)."""
    if path is None:
        return
    why = refusal(path)
    if why is not None:
        raise typer.BadParameter(f"{path}: {why}", param_hint="--json")
    folder = path.parent
    if not folder.is_dir():
        raise typer.BadParameter(f"folder {folder} does not exist", param_hint="--json")
    why = cannot_write_in(folder)
    if why is not None:
        raise typer.BadParameter(f"cannot create a file in {folder}: {why}", param_hint="--json")


def _finite_only(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_only(v) for v in value]
    return value


def _finite(value: float, flag: str) -> float:
    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}", param_hint=flag)
    return value


@kafka_options
def bench(
    database_url: DatabaseUrl,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    modes: Annotated[str, typer.Option(help=f"Comma-separated modes: {','.join(MODES)}.")] = ",".join(MODES),
    records: Annotated[int, typer.Option(min=100, help="mix: records pre-filled into the topics.")] = 1_000_000,
    alt_records: Annotated[
        int, typer.Option(min=100, help="alternatives: rows of the mix they load (a sample).")
    ] = 50_000,
    agents: Annotated[int, typer.Option(min=1, help="mix, producer: agents of the society.")] = 2500,
    repeats: Annotated[int, typer.Option(min=1, help="Repeat each measurement; figures are medians.")] = 3,
    processes: Annotated[str, typer.Option(help="mix: worker process counts to measure, comma-separated.")] = "1,2",
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of each scratch topic.")] = 6,
    e2e_agents: Annotated[int, typer.Option(min=1, help="e2e: agents.")] = 2500,
    e2e_steps_per_second: Annotated[float, typer.Option(min=0.01, help="e2e: steps a second.")] = 10.0,
    e2e_seconds: Annotated[float, typer.Option(min=1, help="e2e: seconds of producing.")] = 60.0,
    e2e_producers: Annotated[int, typer.Option(min=1, help="e2e: producer processes sharing the agents.")] = 2,
    producer_records: Annotated[int, typer.Option(min=100, help="producer: record_* calls timed.")] = 200_000,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every sample to this JSON file.")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the scratch database and topics (debugging).")] = False,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Measure the pipeline on the realistic mix against binary COPY and the usual alternatives,
    end to end at a paced rate, and the producer per call; on a scratch database and scratch topics."""
    chosen = _modes(modes)
    counts = _csv_ints(processes)
    _finite(e2e_steps_per_second, "--e2e-steps-per-second")
    _finite(e2e_seconds, "--e2e-seconds")
    _writable_json(json_path)
    setup_logging(logging.INFO)  # one line per measurement on stderr: a long run shows where it is
    url = database(database_url, timeout)
    psycopg.connect(url).close()  # unreachable or refused: one clear line now, not after the setup
    reach_kafka(kafka, timeout)
    config = BenchConfig(modes=chosen, records=records, alt_records=alt_records, agents=agents, repeats=repeats,
                         processes=counts, partitions=partitions, e2e_agents=e2e_agents,
                         e2e_steps_per_s=e2e_steps_per_second, e2e_seconds=e2e_seconds, e2e_producers=e2e_producers,
                         producer_records=producer_records, keep=keep)
    latest: list[BenchReport] = []

    def write_json(report: BenchReport) -> None:
        if json_path is not None:
            write_atomically(json_path, (json.dumps(_finite_only(report.as_json()), indent=1, default=str,
                                                    allow_nan=False) + "\n").encode())

    def save(report: BenchReport) -> None:  # after every mode: a later failure keeps what was measured
        latest[:] = [report]
        try:
            write_json(report)
        except OSError as e:
            logging.getLogger(__name__).warning("could not write %s: %s", json_path, e)

    def table(report: BenchReport, note: str = "") -> None:
        print_table(f"bench {report.tag}: {', '.join(chosen)}, median of {repeats}{note}", COLUMNS,
                    [line.cells() for line in report.lines])

    signals = _Signals()
    previous = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run_bench(kafka, url, config, on_result=save, on_start=lambda tag: err_console.print(
            f"bench {tag}: database society_bench_{tag}, topics bench-{tag}-*"),
            on_removed=print_note)
    except (KeyboardInterrupt, Exception) as e:
        if signals.got is None and not isinstance(e, KeyboardInterrupt):
            raise
        if latest and latest[0].lines:
            table(latest[0], " (interrupted: the modes measured so far)")
        # Children stopping because of the same signal are no failure; anything else (a clean-up that failed) is said.
        after = "" if isinstance(e, (KeyboardInterrupt, WorkerFailed)) else f" (then: {type(e).__name__}: {e})"
        print_note(f"bench interrupted by {signal.Signals(signals.got or signal.SIGINT).name}{after}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    table(report)  # the table first: a JSON file that cannot be written loses nothing shown
    write_json(report)
