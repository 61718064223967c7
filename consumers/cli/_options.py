"""Options shared by commands; the CLI is the one place that reads the environment."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any, NoReturn

from consumers._deps import require

typer = require("typer", "cli")
rich_console = require("rich.console", "cli")
rich_table = require("rich.table", "cli")

console = rich_console.Console()
err_console = rich_console.Console(stderr=True)

Bootstrap = Annotated[
    str,
    typer.Option("--bootstrap-servers", "-b", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers."),
]
DatabaseUrl = Annotated[
    str,
    typer.Option("--database-url", "-d", envvar="DATABASE_URL", help="PostgreSQL connection URL.", show_default=False),
]
Prefix = Annotated[
    str, typer.Option("--topic-prefix", envvar="SOCIETY_TOPIC_PREFIX", help="Topic prefix: topics are <prefix>.<table>.")
]
Group = Annotated[str, typer.Option("--group", "-g", envvar="SOCIETY_CONSUMER_GROUP", help="Consumer group.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with timestamps (the worker's only output besides its final stats)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit non-zero with one clear line."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """Print `data` as JSON for programs."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print rows as a table for people."""
    table = rich_table.Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console.print(table)
