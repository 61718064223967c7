"""``society-ingest bench``: the pipeline, its baselines and the producer, measured on scratch objects."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

from consumers._deps import psycopg
from consumers.bench import MODES, BenchConfig, BenchReport, run_bench
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import DatabaseUrl, Timeout, err_console, print_table, setup_logging, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka
from consumers.bench.report import COLUMNS
from producers.kafka_config import KafkaClientSettings


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: the scratch objects are removed on the way out


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


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
    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    unknown = set(chosen) - set(MODES)
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown mode(s): {', '.join(sorted(unknown))}; expected {', '.join(MODES)}",
                                 param_hint="--modes")
    setup_logging(logging.INFO)  # one line per measurement on stderr: a long run shows where it is
    url = database(database_url, timeout)
    psycopg.connect(url).close()  # unreachable or refused: one clear line now, not after the setup
    reach_kafka(kafka, timeout)
    config = BenchConfig(modes=chosen, records=records, alt_records=alt_records, agents=agents, repeats=repeats,
                         processes=_csv_ints(processes), partitions=partitions, e2e_agents=e2e_agents,
                         e2e_steps_per_s=e2e_steps_per_second, e2e_seconds=e2e_seconds, e2e_producers=e2e_producers,
                         producer_records=producer_records, keep=keep)

    def save(report: BenchReport) -> None:  # after every mode: a later failure keeps what was measured
        if json_path is not None:
            json_path.write_text(json.dumps(report.as_json(), indent=1, default=str) + "\n")

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_bench(kafka, url, config, on_result=save, on_start=lambda tag: err_console.print(
            f"bench {tag}: database society_bench_{tag}, topics bench-{tag}-*"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_table(f"bench {report.tag}: {', '.join(chosen)}, median of {repeats}", COLUMNS,
                [line.cells() for line in report.lines])
