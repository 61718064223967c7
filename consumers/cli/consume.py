"""``society-ingest consume``: the worker daemon."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options, properties
from consumers.cli._options import (
    DatabaseUrl, DeadLetterMaxConsecutive, DeadLetterMaxPerMinute, Group, LogFormatOption, Prefix, Timeout, print_json,
    setup_logging, typer,
)
from consumers.cli._failures import describe_line
from consumers.cli._redact import secrets
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka, require_schema
from consumers.logs import bind_fields
from consumers.kafka_clients import LIBRDKAFKA_LOGGER
from consumers.metrics import DEFAULT_READY_WINDOW_S, WorkerMetrics
from consumers.probes import DEFAULT_HOST, MetricsServer
from consumers.processes import run_processes
from consumers.settings import DEFAULT_GROUP, WorkerSettings, default_worker_id
from consumers.worker import Worker
from producers.kafka_config import KafkaClientSettings
from producers.tables import TABLES


@kafka_options
def consume(
    database_url: DatabaseUrl,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    group: Group = DEFAULT_GROUP,
    tables: Annotated[
        list[str] | None, typer.Option("--tables", "-t", help=f"Tables to consume (repeat); default all: {', '.join(TABLES)}.")
    ] = None,
    max_batch_rows: Annotated[int, typer.Option(min=1, help="Flush after this many rows.")] = 20_000,
    linger_ms: Annotated[int, typer.Option(min=0, help="Flush at the latest this long after a batch starts.")] = 500,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without messages (for scripts).")
    ] = None,
    validate: Annotated[
        bool, typer.Option(help="Validate records with the pydantic models (else PostgreSQL's constraints only).")
    ] = True,
    consumer_property: Annotated[
        list[str] | None,
        typer.Option("--consumer-property", "-X", help="Extra librdkafka consumer property KEY=VALUE (repeat)."),
    ] = None,
    dead_letter_max_consecutive: DeadLetterMaxConsecutive = 1_000,
    dead_letter_max_per_minute: DeadLetterMaxPerMinute = 10_000,
    shutdown_timeout: Annotated[
        float, typer.Option(min=0.1, max=3600, help="On SIGTERM, give up a batch not committed within this many seconds.")
    ] = 30.0,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, envvar="SOCIETY_METRICS_PORT", show_default=False,
            help="Serve /metrics, /healthz and /readyz on this port (off by default; 0: any free port, logged).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(envvar="SOCIETY_METRICS_HOST", help="Address to serve them on (0.0.0.0: every interface).")
    ] = DEFAULT_HOST,
    ready_window: Annotated[
        float,
        typer.Option(min=1, help="/readyz fails while a batch has waited longer than this many seconds for its commit."),
    ] = DEFAULT_READY_WINDOW_S,
    processes: Annotated[
        int, typer.Option(min=1, max=256, help="Worker processes in the group (about one per core); "
                          "with --metrics-port P, process i serves P+i.")
    ] = 1,
    log_format: LogFormatOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a worker: load the table topics into PostgreSQL until SIGTERM/SIGINT.

    Before it starts, PostgreSQL must accept the connection and hold every
    migration, and a Kafka broker must answer, each within --timeout; after
    that the worker rides out outages (it retries) and stops only on a fatal
    error (wrong password, missing tables, too many dead letters).
    """
    setup_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    chosen = tuple(tables or TABLES)
    unknown = set(chosen) - set(TABLES)
    if unknown:
        raise typer.BadParameter(f"unknown table(s): {', '.join(sorted(unknown))}", param_hint="--tables")
    if metrics_port and metrics_port + processes - 1 > 65535:  # process i serves metrics_port + i
        raise typer.BadParameter(
            f"{metrics_port} with {processes} processes needs ports up to {metrics_port + processes - 1}: "
            f"at most {65536 - processes} (process i serves --metrics-port + i)", param_hint="--metrics-port")
    extra = properties(consumer_property)
    if verbose and extra.get("debug"):  # -X debug=…: its lines are librdkafka's DEBUG ones
        logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(logging.DEBUG)
    settings = WorkerSettings(
        kafka=kafka,
        database_url=database_url,
        topic_prefix=topic_prefix,
        group_id=group,
        tables=chosen,
        max_batch_rows=max_batch_rows,
        linger_ms=linger_ms,
        validate_records=validate,
        dead_letter_max_consecutive=dead_letter_max_consecutive,
        dead_letter_max_per_minute=dead_letter_max_per_minute,
        shutdown_timeout_s=shutdown_timeout,
        consumer_extra=extra,
    )
    if processes > 1:
        bind_fields(worker_id=settings.worker_id)  # the parent's own (<host>:<pid>); each child binds its own
        require_schema(database(database_url, timeout))
        reach_kafka(kafka, timeout, extra)

        def work(index: int) -> dict[str, object]:
            own = settings.model_copy(update={"worker_id": default_worker_id()})  # this process's pid
            port = None if metrics_port is None else metrics_port + index if metrics_port else 0
            return _run_worker(own, port, metrics_host, ready_window, idle_exit, check=False)

        print_json(run_processes(processes, work, describe_line, finish=idle_exit is not None))
        return
    print_json(_run_worker(settings, metrics_port, metrics_host, ready_window, idle_exit, check=True,
                           database_url=database_url, timeout=timeout, extra=extra))


def _run_worker(
    settings: WorkerSettings,
    metrics_port: int | None,
    metrics_host: str,
    ready_window: float,
    idle_exit: float | None,
    *,
    check: bool,
    database_url: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    extra: dict[str, str] | None = None,
) -> dict[str, object]:
    """Run one worker until it stops; its stats. `check`: first the schema and Kafka (else done already)."""
    bind_fields(worker_id=settings.worker_id)
    metrics = server = None
    if metrics_port is not None:  # before the checks: a port in use is a mistake to report first
        metrics = WorkerMetrics(ready_window_s=ready_window)
        server = MetricsServer(metrics, metrics_host, metrics_port, scrub=secrets.scrub).start()
    try:
        if check:
            require_schema(database(database_url, timeout))
            reach_kafka(settings.kafka, timeout, extra)
        worker = Worker(settings, metrics=metrics)
        worker.install_signal_handlers()
        stats = worker.run(idle_exit_s=idle_exit)
    finally:
        if server is not None:
            server.close()
    return dataclasses.asdict(stats)
