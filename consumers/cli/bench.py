"""``society-ingest bench``: pipeline throughput as ratios to baselines of the same run."""

from __future__ import annotations

from typing import Annotated

from consumers.tools.bench import run_bench
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import DatabaseUrl, Json, Timeout, print_json, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka, require_schema
from producers.kafka_config import KafkaClientSettings

_BASELINE = {
    "copy": "copy",
    "copy_staging_on_conflict": "copy",
    "executemany_on_conflict": "copy",
    "pipeline": "copy",
    "raw_produce": "raw_produce",
    "record_memory": "raw_produce",
}


@kafka_options
def bench(
    database_url: DatabaseUrl,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    rows: Annotated[int, typer.Option(min=1000, help="Agent memories per measurement.")] = 100_000,
    repeats: Annotated[int, typer.Option(min=1, help="Repeat every measurement; figures are medians.")] = 3,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Measure producer and worker throughput against raw baselines on the same rows."""
    require_schema(database(database_url, timeout))
    reach_kafka(kafka, timeout)
    result = run_bench(kafka, database_url, rows, repeats)
    data = {
        name: {
            "rows_per_s": round(result.rate(name)),
            "samples": [round(r) for r in samples],
            "baseline": _BASELINE[name],
            "ratio": round(result.ratio(name, _BASELINE[name]), 3),
        }
        for name, samples in result.samples.items()
    }
    if as_json:
        print_json({"rows": rows, "repeats": repeats, "results": data})
        return
    print_table(
        f"{rows} agent memories, median of {repeats}",
        ["measurement", "rows/s", "µs/row", "range", "ratio", "to"],
        [[n, f"{d['rows_per_s']:,}", f"{1e6 / d['rows_per_s']:.1f}",
          f"{min(d['samples']):,}–{max(d['samples']):,}", f"{d['ratio']:.2f}", d["baseline"]]
         for n, d in data.items()],
    )
