"""Options shared by commands; the CLI is the one place that reads the environment."""

from __future__ import annotations

import enum
import json
import logging
import sys
from typing import Annotated, Any, NoReturn

from consumers._deps import require
from consumers.cli._redact import ScrubFilter, secrets
from consumers.kafka_clients import LIBRDKAFKA_LOGGER
from consumers.logs import JsonFormatter
from producers.handler import TOPIC_PREFIX_ENV

typer = require("typer", "cli")
rich_console = require("rich.console", "cli")
rich_table = require("rich.table", "cli")
rich_text = require("rich.text", "cli")

console = rich_console.Console()
err_console = rich_console.Console(stderr=True)

DatabaseUrl = Annotated[
    str,
    typer.Option("--database-url", "-d", envvar="DATABASE_URL", help="PostgreSQL connection URL.", show_default=False),
]
Prefix = Annotated[
    str, typer.Option("--topic-prefix", envvar=TOPIC_PREFIX_ENV, help="Topic prefix: topics are <prefix>.<table>.")
]
Group = Annotated[str, typer.Option("--group", "-g", envvar="SOCIETY_CONSUMER_GROUP", help="Consumer group.")]
DeadLetterMaxConsecutive = Annotated[
    int, typer.Option(min=0, help="Stop after more than this many dead letters in a row (0: no limit).")
]
DeadLetterMaxPerMinute = Annotated[
    int, typer.Option(min=0, help="Stop after more than this many dead letters within a minute (0: no limit).")
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", envvar="SOCIETY_TIMEOUT", min=1, max=3600,
        help="Give up after this many seconds when Kafka or PostgreSQL does not answer.",
    ),
]



class LogFormat(str, enum.Enum):
    """How log lines look on stderr."""

    text = "text"
    json = "json"


LogFormatOption = Annotated[
    LogFormat | None,
    typer.Option(
        "--log-format", envvar="SOCIETY_LOG_FORMAT", case_sensitive=False, show_default=False,
        help="Log lines as text (default) or json: one JSON object per line (see consumers/logs.py).",
    ),
]

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"

TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.WARNING, log_format: LogFormat | None = None) -> None:
    """Log to stderr with timestamps and without passwords; librdkafka's own lines from WARNING (INFO below INFO).

    `log_format` None keeps the format already set (text at first).
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if any(isinstance(f, ScrubFilter) for f in h.filters)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(ScrubFilter(secrets))
        root.addHandler(handler)
        log_format = log_format or LogFormat.text
    if log_format is LogFormat.json:
        handler.setFormatter(JsonFormatter(scrub=secrets.scrub))
    elif log_format is LogFormat.text:
        handler.setFormatter(logging.Formatter(TEXT_LOG_FORMAT))
    root.setLevel(level)
    logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(logging.INFO if level < logging.INFO else logging.WARNING)


#: The logger of the CLI's own error and warning lines in --log-format json.
CLI_LOGGER = "society_ingest.cli"


def json_logging() -> bool:
    """Whether stderr carries JSON lines (--log-format json): then every line there must be one."""
    return any(isinstance(h.formatter, JsonFormatter) and any(isinstance(f, ScrubFilter) for f in h.filters)
               for h in logging.getLogger().handlers)


def print_error(message: str, exc_info: BaseException | None = None) -> None:
    """``error: <message>`` on stderr, on one line however wide the message.

    In --log-format json, one JSON object instead (level ERROR, logger
    society_ingest.cli), with `exc_info`'s traceback as its ``exception``.
    """
    if json_logging():
        logging.getLogger(CLI_LOGGER).error(message, exc_info=exc_info)
        return
    err_console.print(rich_text.Text("error: ", style="bold red") + rich_text.Text(message), soft_wrap=True)


def print_warning(message: str) -> None:
    """``warning: <message>`` on stderr, on one line however wide the message (JSON in --log-format json)."""
    if json_logging():
        logging.getLogger(CLI_LOGGER).warning(message)
        return
    err_console.print(rich_text.Text("warning: ", style="bold yellow") + rich_text.Text(message), soft_wrap=True)


def print_note(message: str) -> None:
    """A line of information for people on stderr (JSON in --log-format json)."""
    if json_logging():
        logger = logging.getLogger(CLI_LOGGER)
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))  # a note is meant to be seen
        logger.info(message)
        return
    err_console.print(rich_text.Text(message), soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit non-zero with one clear line."""
    print_error(message)
    raise typer.Exit(code)


def print_json(data: Any, file: Any = None) -> None:
    """Print `data` as JSON for programs (to stdout, or `file`)."""
    (file or sys.stdout).write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str, columns: list[str], rows: list[list[Any]], to_stderr: bool = False) -> None:
    """Print rows as a table for people; the cells are text, never Rich markup (they may come from data)."""
    from rich.markup import escape

    table = rich_table.Table(title=escape(title))
    for c in columns:
        table.add_column(escape(c))
    for r in rows:
        table.add_row(*("" if v is None else escape(str(v)) for v in r))
    (err_console if to_stderr else console).print(table)
