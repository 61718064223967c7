"""The ``society-ingest`` command line: one sub-app per command group."""

from __future__ import annotations

from consumers.cli import bench, consume, dlq, migrate, simulate, status, topics
from consumers.cli._options import typer

app = typer.Typer(
    name="society-ingest",
    help="Stream LLM Society simulation records through Kafka into PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command()(migrate.migrate)
app.add_typer(topics.app, name="topics")
app.command()(consume.consume)
app.command()(simulate.simulate)
app.command()(status.status)
app.add_typer(dlq.app, name="dlq")
app.command()(bench.bench)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
