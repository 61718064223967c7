"""Ordered SQL migrations from ``ddl/``, applied once each, with checksums.

Concurrent runs are serialized by a PostgreSQL advisory lock; each migration
runs in its own transaction together with its bookkeeping row, so a failed
migration leaves nothing half-applied. An applied file whose checksum changed
stops everything: fix it with a new migration instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from consumers._deps import psycopg
from consumers.errors import MigrationChecksumError, MigrationError

#: Arbitrary constant naming this project's advisory lock.
MIGRATION_LOCK_ID = 0x50C1E7
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def default_ddl_dir() -> Path:
    """The migrations: inside the installed wheel, else the source tree."""
    packaged = resources.files("consumers").joinpath("_ddl")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "ddl"


def load_migrations(ddl_dir: Path | None = None) -> list[Migration]:
    """Read ``NNNN_name.sql`` files in version order."""
    found = []
    for path in sorted((ddl_dir or default_ddl_dir()).glob("*.sql")):
        m = _FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"migration file {path.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


#: A schema name migrations may create: a plain lower-case SQL identifier, not a system schema's.
SCHEMA_NAME = re.compile(r"^(?!pg_)(?!information_schema$)[a-z_][a-z0-9_]{0,62}$")


def in_schema(conninfo: str, schema: str) -> str:
    """`conninfo` with `schema` as the search path: unqualified table names then mean that schema's tables."""
    if not SCHEMA_NAME.match(schema):
        raise ValueError(
            f"{schema!r} is not a schema name this tool creates: use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit or pg_)"
        )
    options = psycopg.conninfo.conninfo_to_dict(conninfo).get("options") or ""
    # Quoted: a reserved word ("window", "user") is a valid schema name too.
    return psycopg.conninfo.make_conninfo(conninfo, options=f'{options} -c search_path="{schema}"'.strip())


def pending(conninfo: str, ddl_dir: Path | None = None) -> list[Migration]:
    """Migrations not applied yet to the database (of the connection's search path); all when none were."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
            applied: set[int] = set()
        else:
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    return [m for m in load_migrations(ddl_dir) if m.version not in applied]


def create_schema(conninfo: str, schema: str) -> Applied:
    """Create `schema` if needed and apply every migration inside it; return those applied now.

    A schema already up to date is left alone, so a role without DDL privileges can
    load into a schema its owner prepared (``society-ingest migrate --schema NAME``).
    """
    target = in_schema(conninfo, schema)  # checks the name before it goes into SQL
    if not pending(target):
        return Applied()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psycopg.sql.Identifier(schema)))
        return migrate(target)
    except (psycopg.errors.InsufficientPrivilege, MigrationError) as e:
        denied = e if isinstance(e, psycopg.Error) else e.__cause__
        if not isinstance(denied, psycopg.errors.InsufficientPrivilege):
            raise
        raise MigrationError(
            f"cannot create schema {schema} and its tables as this role: {denied.diag.message_primary}; "
            f"prepare it as the owner with `society-ingest migrate --schema {schema}`"
        ) from e


def _reason(e: psycopg.Error) -> str:
    """The server's one-line message and SQLSTATE (without LINE/HINT lines or the statement)."""
    if e.sqlstate == "42501":
        return (f"{e.diag.message_primary} (SQLSTATE 42501): migrate creates and alters tables: "
                "run it as the owner of the schema, not as a loader or reader role")
    if e.sqlstate:
        return f"{e.diag.message_primary} (SQLSTATE {e.sqlstate})"
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


class Applied(list[Migration]):
    """The migrations applied by one run, in order, and the notices they raised (``notices``)."""

    def __init__(self) -> None:
        super().__init__()
        #: The PostgreSQL NOTICEs and WARNINGs raised by the migrations applied, each as
        #: ``NNNN_name: message``: what a migration could not do (0006: grants without roles).
        self.notices: list[str] = []


#: What to do about a migration's notice, by migration name.
_NOTICE_HINTS = {"roles": "a superuser can run the statements of ddl/0006_roles.sql"}


def migrate(database_url: str, ddl_dir: Path | None = None) -> Applied:
    """Apply pending migrations in order; return those applied now (empty when up to date) and their notices."""
    migrations = load_migrations(ddl_dir)
    applied_now = Applied()
    running: list[Migration] = []  # the migration executing now, whose notices count

    def heard(diag: psycopg.errors.Diagnostic) -> None:
        if running:
            m = running[0]
            hint = _NOTICE_HINTS.get(m.name)
            notice = f"{m.version:04d}_{m.name}: {diag.message_primary}"
            applied_now.notices.append(f"{notice} — {hint}" if hint else notice)

    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
            conn.execute(_BOOKKEEPING)
        except psycopg.errors.InsufficientPrivilege as e:
            # Before any migration: the role may not even create the bookkeeping table.
            raise MigrationError(f"cannot prepare schema_migrations: {_reason(e)}") from e
        conn.add_notice_handler(heard)
        try:
            applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            # Verify every applied file before touching anything.
            for m in migrations:
                if m.version in applied and applied[m.version] != m.checksum:
                    raise MigrationChecksumError(
                        f"migration {m.version:04d}_{m.name}.sql was edited after it was applied "
                        f"(checksum {applied[m.version][:12]} in the database, {m.checksum[:12]} on disk); "
                        f"add a new migration instead"
                    )
            for m in migrations:
                if m.version in applied:
                    continue
                running[:] = [m]
                try:
                    with conn.transaction():
                        conn.execute(m.sql)
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as e:
                    raise MigrationError(f"migration {m.version:04d}_{m.name}.sql failed: {_reason(e)}") from e
                finally:
                    running.clear()
                applied_now.append(m)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now
