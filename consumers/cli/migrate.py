"""``society-ingest migrate``."""

from __future__ import annotations

from consumers.cli._options import DatabaseUrl, fail, console
from consumers.errors import MigrationError
from consumers.migrations import migrate as apply


def migrate(database_url: DatabaseUrl) -> None:
    """Apply pending migrations from ddl/ in order (no-op when up to date)."""
    try:
        applied = apply(database_url)
    except MigrationError as e:
        fail(str(e))
    if not applied:
        console.print("schema is up to date")
    for m in applied:
        console.print(f"applied {m.version:04d}_{m.name}")
