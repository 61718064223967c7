"""``society-ingest topics create|list|describe``."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from confluent_kafka.admin import AdminClient

from consumers import topics as ops
from consumers.cli._options import DEFAULT_BOOTSTRAP, Bootstrap, Json, Prefix, Timeout, print_json, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, kafka

app = typer.Typer(help="Create and inspect the table and dead-letter topics.", no_args_is_help=True)

_COLUMNS = ["topic", "partitions", "replication", "retention.ms", "compression"]


def _admin(bootstrap_servers: str, timeout: float) -> AdminClient:
    """An admin client, once a broker answered within `timeout`."""
    kafka(bootstrap_servers, timeout)
    return ops.admin_client(bootstrap_servers)


def _show(infos: list[ops.TopicInfo], as_json: bool, title: str) -> None:
    if as_json:
        print_json([dataclasses.asdict(i) for i in infos])
        return
    rows = [[i.name, i.partitions, i.replication, i.retention_ms, i.compression] for i in infos]
    if any(i.created for i in infos):
        rows = [r + ["created" if i.created else "exists"] for r, i in zip(rows, infos)]
        print_table(title, _COLUMNS + ["state"], rows)
    else:
        print_table(title, _COLUMNS, rows)


@app.command()
def create(
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    topic_prefix: Prefix = "society",
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per topic.")] = ops.DEFAULT_PARTITIONS,
    replication_factor: Annotated[int, typer.Option(min=1, help="Replicas per partition.")] = 1,
    retention_ms: Annotated[int, typer.Option(help="Retention; long enough to replay a run.")] = ops.DEFAULT_RETENTION_MS,
    compression: Annotated[str, typer.Option(help="Topic compression.type.")] = "producer",
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Create missing topics (idempotent) and show partitions, replication and retention."""
    infos = ops.create_topics(
        _admin(bootstrap_servers, timeout), topic_prefix, bootstrap_servers, partitions=partitions,
        replication=replication_factor, retention_ms=retention_ms, compression=compression,
    )
    _show(infos, as_json, "topics")


@app.command("list")
def list_(
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    topic_prefix: Prefix = "society",
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """List this prefix's topics that exist."""
    _show(ops.list_topics(_admin(bootstrap_servers, timeout), topic_prefix, timeout), as_json, "topics")


@app.command()
def describe(
    names: Annotated[list[str] | None, typer.Argument(help="Topics (default: all of the prefix).")] = None,
    bootstrap_servers: Bootstrap = DEFAULT_BOOTSTRAP,
    topic_prefix: Prefix = "society",
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Describe topics: partitions, replication, retention, compression."""
    wanted = names or ops.all_topics(topic_prefix)
    _show(ops.describe_topics(_admin(bootstrap_servers, timeout), wanted, timeout), as_json, "topics")
