"""The ``society-ingest`` command line: one sub-app per command group."""

from __future__ import annotations

import signal
from typing import Annotated

from consumers.cli import (
    backfill, bench, consume, dlq, export, migrate, replay, report, simulate, soak, status, topics, views,
)
from consumers.cli._failures import context, run
from consumers.cli._options import LogFormatOption, setup_logging, typer

app = typer.Typer(
    name="society-ingest",
    help="Stream LLM Society simulation records through Kafka into PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="SOCIETY_DEBUG", help="On a failure, print the traceback too (passwords hidden)."),
    ] = False,
    log_format: LogFormatOption = None,
) -> None:
    context.debug = debug
    context.command = ctx.invoked_subcommand
    context.needs_owner = False  # the refreshing commands say so (a CliRunner runs many commands in one process)
    setup_logging(log_format=log_format)


app.command()(migrate.migrate)
app.add_typer(topics.app, name="topics")
app.command()(consume.consume)
app.command()(replay.replay)
app.command()(simulate.simulate)
app.command()(soak.soak)
app.command()(status.status)
app.add_typer(dlq.app, name="dlq")
app.command()(bench.bench)
app.command()(backfill.backfill)
app.command()(export.export)
app.command()(report.report)
app.add_typer(views.app, name="views")

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: failures exit 1 with one line on stderr (see ``_failures``)."""
    interruptible()
    run(app)


def interruptible() -> None:
    """Make SIGINT stop a command as Ctrl-C does, also when a shell without job control started it
    in the background: such a shell makes it ignore SIGINT, and Python then installs no handler."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
