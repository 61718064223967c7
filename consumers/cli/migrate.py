"""``society-ingest migrate``."""

from __future__ import annotations

from consumers.cli._options import DatabaseUrl, Timeout, console
from consumers.cli._services import DEFAULT_TIMEOUT_S, database
from consumers.migrations import migrate as apply


def migrate(database_url: DatabaseUrl, timeout: Timeout = DEFAULT_TIMEOUT_S) -> None:
    """Apply pending migrations from ddl/ in order (no-op when up to date)."""
    applied = apply(database(database_url, timeout))
    if not applied:
        console.print("schema is up to date")
    for m in applied:
        console.print(f"applied {m.version:04d}_{m.name}")
