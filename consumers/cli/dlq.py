"""``society-ingest dlq list|show|redrive``."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from consumers import dead_letters as ops
from consumers.cli._kafka import KAFKA_OPTIONS, kafka_options
from consumers.cli._options import DatabaseUrl, Json, Prefix, Timeout, console, print_json, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, reach_kafka
from producers.codec import AvroCodec
from producers.kafka_config import KafkaClientSettings

app = typer.Typer(help="Inspect and redrive dead letters.", no_args_is_help=True)

Table = Annotated[str | None, typer.Option("--table", help="Only dead letters of this table.")]
ErrorClass = Annotated[str | None, typer.Option("--error-class", help="Only dead letters with this error class.")]


@app.command("list")
@kafka_options
def list_(
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Count dead letters by table and reason."""
    reach_kafka(kafka, timeout)
    rows = ops.summarize(ops.read_dead_letters(kafka, topic_prefix, timeout_s=timeout))
    if as_json:
        print_json([{"table": t, "error_class": e, "count": n} for t, e, n in rows])
        return
    print_table("dead letters", ["table", "error class", "count"], [list(r) for r in rows])


@app.command()
@kafka_options
def show(
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    table: Table = None,
    error_class: ErrorClass = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 20,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Show dead letters decoded, with their reasons and origins."""
    reach_kafka(kafka, timeout)
    codec = AvroCodec()
    letters = [
        d for d in ops.read_dead_letters(kafka, topic_prefix, timeout_s=timeout)
        if (table is None or d.table == table) and (error_class is None or d.error_class == error_class)
    ][:limit]
    items = [
        {
            "origin": "{}[{}]@{}".format(*d.origin),
            "table": d.table,
            "error_class": d.error_class,
            "message": d.message,
            "record": ops.decode_for_display(d, codec),
        }
        for d in letters
    ]
    if as_json:
        print_json(items)
        return
    for item in items:
        console.print(f"[bold]{item['origin']}[/] {item['error_class']}: {item['message']}", highlight=False)
        console.print(item["record"], highlight=False)


@app.command()
@kafka_options
def redrive(
    database_url: DatabaseUrl,
    kafka: KafkaClientSettings = KAFKA_OPTIONS,
    topic_prefix: Prefix = "society",
    table: Table = None,
    error_class: ErrorClass = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be sent.")] = False,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Send dead letters back to their original topics (each at most once)."""
    db = database(database_url, timeout)
    reach_kafka(kafka, timeout)
    result = ops.redrive(
        kafka, db, topic_prefix, table=table, error_class=error_class, dry_run=dry_run, timeout_s=timeout
    )
    if as_json:
        print_json({**dataclasses.asdict(result), "dry_run": dry_run})
        return
    todo = result.selected - result.already_redriven - result.by_reference
    verb = "would send" if dry_run else "sent"
    skipped = (
        f", {result.by_reference} by reference (too large; the original is in its topic at original.offset)"
        if result.by_reference else ""
    )
    console.print(
        f"{result.selected} selected, {result.already_redriven} already redriven{skipped}, "
        f"{verb} {todo if dry_run else result.sent}"
    )
