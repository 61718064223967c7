"""``society-ingest simulate``: a synthetic society through the real handler."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import Json, Prefix, Timeout, console, fail, print_json, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka, require_schema, require_topics
from consumers.kafka_clients import librdkafka_logger
from consumers.tools.simulate import run_society
from consumers.status import row_counts
from producers.handler import KafkaDatabaseHandler
from producers.kafka_config import KafkaClientSettings

#: How often --wait-loaded polls PostgreSQL.
POLL_INTERVAL_S = 0.5


@kafka_options
def simulate(
    agents: Annotated[int, typer.Option(min=1, help="Number of agents.")] = 100,
    steps: Annotated[int, typer.Option(min=1, help="Number of steps.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    steps_per_second: Annotated[
        float | None,
        typer.Option(min=0.001, show_default=False,
                     help="At most this many steps a second, each step's records in one burst; a slow step "
                          "is not made up for (default: flat out)."),
    ] = None,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    wait_loaded: Annotated[
        float | None,
        typer.Option(help="Then wait up to this many seconds until PostgreSQL holds every recorded row."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", "-d", envvar="DATABASE_URL", help="Needed by --wait-loaded.", show_default=False
        ),
    ] = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Simulate a society and report what it recorded per table."""
    db = None
    if wait_loaded is not None:
        if not database_url:
            fail("--wait-loaded needs --database-url or DATABASE_URL")
        db = database(database_url, timeout)
        require_schema(db)  # before the run, not after it
    require_topics(reach_kafka(kafka, timeout), topic_prefix, kafka=kafka)
    handler = KafkaDatabaseHandler(kafka=kafka, topic_prefix=topic_prefix, extra={"logger": librdkafka_logger()})
    try:
        report = asyncio.run(run_society(handler, agents, steps, seed, steps_per_second))
    finally:  # also on Ctrl-C: deliver what was recorded
        handler.producer.close()
    loaded = None
    waited = None
    if wait_loaded is not None:
        start = time.monotonic()
        deadline = start + wait_loaded
        run = uuid.UUID(report.run_id)
        while True:
            loaded = row_counts(db, run)
            if loaded == report.recorded or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        waited = time.monotonic() - start
    rows = [[t, n] + ([loaded[t]] if loaded else []) for t, n in report.recorded.items()]
    if as_json:
        print_json({"run_id": report.run_id, "recorded": report.recorded, "loaded": loaded,
                    "simulate_seconds": report.seconds, "wait_seconds": waited})
    else:
        total = sum(report.recorded.values())
        print_table(
            f"run {report.run_id}", ["table", "recorded"] + (["loaded"] if loaded else []), rows
        )
        console.print(
            f"recorded {total} records in {report.seconds:.1f}s ({total / report.seconds:,.0f}/s)"
            + (f"; all loaded {waited:.1f}s after the run ended" if loaded == report.recorded else "")
        )
    if loaded is not None and loaded != report.recorded:
        fail(f"PostgreSQL holds {loaded}, expected {report.recorded} after {wait_loaded}s")
