"""``society-ingest topics create|alter|list|describe|delete``."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from confluent_kafka.admin import AdminClient

from consumers import topics as ops
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import Json, Prefix, Timeout, console, err_console, print_json, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, reach_kafka
from producers.kafka_config import KafkaClientSettings

app = typer.Typer(help="Create, change, inspect and delete the table and dead-letter topics.", no_args_is_help=True)

_COLUMNS = ["topic", "partitions", "replication", "retention.ms", "compression", "cleanup"]

Names = Annotated[list[str] | None, typer.Argument(help="Topics (default: all of the prefix).", show_default=False)]
CleanupPolicy = Annotated[str, typer.Option(help="Topic cleanup.policy (delete keeps a time window to replay).")]


def _admin(kafka: KafkaClientSettings, timeout: float) -> AdminClient:
    """An admin client, once a broker answered within `timeout`."""
    reach_kafka(kafka, timeout)
    return ops.admin_client(kafka)


def _show(infos: list[ops.TopicInfo], as_json: bool, title: str) -> None:
    if as_json:
        print_json([dataclasses.asdict(i) for i in infos])
        return
    rows = [[i.name, i.partitions, i.replication, i.retention_ms, i.compression, i.cleanup_policy] for i in infos]
    if any(i.created or i.differences for i in infos):
        rows = [r + ["created" if i.created else "; ".join(i.differences) or "exists"] for r, i in zip(rows, infos)]
        print_table(title, _COLUMNS + ["state"], rows)
    else:
        print_table(title, _COLUMNS, rows)
    if any(i.differences for i in infos):
        err_console.print("some topics exist with other settings and were kept: change them with `society-ingest topics alter`")


@app.command()
@kafka_options
def create(
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per topic.")] = ops.DEFAULT_PARTITIONS,
    replication_factor: Annotated[int, typer.Option(min=1, help="Replicas per partition.")] = 1,
    retention_ms: Annotated[int, typer.Option(help="Retention; long enough to replay a run.")] = ops.DEFAULT_RETENTION_MS,
    compression: Annotated[str, typer.Option(help="Topic compression.type.")] = "producer",
    cleanup_policy: CleanupPolicy = "delete",
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Create missing topics (idempotent); show them, and how existing ones differ from what was asked."""
    infos = ops.create_topics(
        _admin(kafka, timeout), topic_prefix, kafka, partitions=partitions,
        replication=replication_factor, retention_ms=retention_ms, compression=compression,
        cleanup_policy=cleanup_policy,
    )
    _show(infos, as_json, "topics")


@app.command()
@kafka_options
def alter(
    names: Names = None,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    partitions: Annotated[int | None, typer.Option(min=1, help="Grow to this many partitions (never shrinks).")] = None,
    retention_ms: Annotated[int | None, typer.Option(min=-1, help="New retention.ms (-1: forever).")] = None,
    compression: Annotated[str | None, typer.Option(help="New compression.type.")] = None,
    cleanup_policy: Annotated[str | None, typer.Option(help="New cleanup.policy.")] = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Add partitions or change configs of existing topics; refuses to shrink."""
    infos = ops.alter_topics(
        _admin(kafka, timeout), names or ops.all_topics(topic_prefix), partitions=partitions,
        retention_ms=retention_ms, compression=compression, cleanup_policy=cleanup_policy, timeout_s=timeout,
    )
    _show(infos, as_json, "topics")


@app.command()
@kafka_options
def delete(
    names: Names = None,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")] = False,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Delete topics and every record in them (asks first)."""
    admin = _admin(kafka, timeout)
    wanted = [i.name for i in ops.describe_topics(admin, names or ops.all_topics(topic_prefix), timeout)]
    if wanted and not yes:
        typer.confirm(f"delete {', '.join(wanted)} and every record in them?", abort=True, err=True)
    deleted = ops.delete_topics(admin, wanted, timeout)
    if as_json:
        print_json({"deleted": deleted})
    else:
        console.print(f"deleted {len(deleted)} topic(s)" + (f": {', '.join(deleted)}" if deleted else ""))


@app.command("list")
@kafka_options
def list_(
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """List this prefix's topics that exist."""
    _show(ops.list_topics(_admin(kafka, timeout), topic_prefix, timeout), as_json, "topics")


@app.command()
@kafka_options
def describe(
    names: Names = None,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Describe topics: partitions, replication, retention, compression."""
    wanted = names or ops.all_topics(topic_prefix)
    _show(ops.describe_topics(_admin(kafka, timeout), wanted, timeout), as_json, "topics")
