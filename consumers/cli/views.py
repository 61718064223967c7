"""``society-ingest views``: the analysis views of ddl/0009 (refresh the materialized ones)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from consumers import views as ops
from consumers.cli._failures import context
from consumers.cli._options import DatabaseUrl, Json, Timeout, print_json, print_table, typer
from consumers.cli._services import DEFAULT_TIMEOUT_S, database, require_schema

app = typer.Typer(help="The analysis views (ddl/0009): refresh the materialized ones.", no_args_is_help=True)

Concurrently = Annotated[
    bool,
    typer.Option("--concurrently",
                 help="Keep the views readable during the refresh (slower; REFRESH … CONCURRENTLY)."),
]


@app.command()
def refresh(
    database_url: DatabaseUrl,
    concurrently: Concurrently = False,
    timeout: Timeout = DEFAULT_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Refresh the materialized views (wealth_distribution, ingestion_lag) from the tables; run it as their owner."""
    context.command, context.needs_owner = "views refresh", True
    db = database(database_url, timeout)
    require_schema(db)
    done = ops.refresh(db, concurrently, timeout)
    if as_json:
        print_json([dataclasses.asdict(r) for r in done])
        return
    print_table("views refreshed" + (" concurrently" if concurrently else ""), ["view", "rows", "seconds"],
                [[r.view, f"{r.rows:,}", f"{r.seconds:.2f}"] for r in done])
