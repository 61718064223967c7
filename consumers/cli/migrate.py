"""``society-ingest migrate``."""

from __future__ import annotations

from typing import Annotated

from consumers.cli._options import DatabaseUrl, Timeout, console, print_warning, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database
from consumers.migrations import create_schema, in_schema
from consumers.migrations import migrate as apply


def migrate(
    database_url: DatabaseUrl,
    schema: Annotated[
        str | None,
        typer.Option(help="Create this schema if needed and migrate it (e.g. for `replay --target-schema`)."),
    ] = None,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
) -> None:
    """Apply pending migrations from ddl/ in order (no-op when up to date); run it as the tables' owner."""
    conninfo = database(database_url, timeout)
    if schema is None:
        applied = apply(conninfo)
    else:
        try:
            in_schema(conninfo, schema)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--schema") from None
        applied = create_schema(conninfo, schema)
    for notice in applied.notices:  # what a migration could not do, e.g. grants without roles
        print_warning(notice)
    if not applied:
        console.print("schema is up to date")
    for m in applied:
        console.print(f"applied {m.version:04d}_{m.name}")
