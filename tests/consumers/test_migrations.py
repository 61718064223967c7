"""Ordered, checksummed, once-only migrations from ddl/, against a real PostgreSQL.

Each test gets its own EMPTY database (the shared ``database_url`` fixture is
already migrated), created here and dropped afterwards.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.db import _admin, _with_db, fetch

from consumers.errors import MigrationChecksumError, MigrationError
from consumers.migrations import MIGRATION_LOCK_ID, default_ddl_dir, load_migrations, migrate

pytestmark = pytest.mark.integration

DDL_FILES = sorted(default_ddl_dir().glob("*.sql"))
#: The version a migration added after the last one gets (versions may have gaps, e.g. a branch's 0009 before 0008).
NEXT = int(DDL_FILES[-1].name[:4]) + 1
SIX_TABLES = {
    "simulation_runs",
    "agents",
    "agent_memories",
    "market_transactions",
    "banking_transactions",
    "simulation_events",
}


@pytest.fixture
def empty_db(services: Any) -> Iterator[str]:
    """URL of a new, empty database, dropped after the test."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    with _admin(services.database_url) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield _with_db(services.database_url, name)
    finally:
        with _admin(services.database_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def ddl_copy(tmp_path: Path) -> Path:
    """A private copy of ddl/ the test may edit."""
    target = tmp_path / "ddl"
    target.mkdir()
    for path in DDL_FILES:
        shutil.copyfile(path, target / path.name)
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_rows(ddl_dir: Path) -> list[tuple[int, str, str]]:
    rows = []
    for path in sorted(ddl_dir.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        rows.append((int(version), name, _sha256(path)))
    return rows


def bookkeeping(url: str) -> list[tuple[int, str, str]]:
    return fetch(url, "SELECT version, name, checksum FROM schema_migrations ORDER BY version")


def has_table(url: str, name: str) -> bool:
    return fetch(url, "SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",))[0][0]


def public_tables(url: str) -> set[str]:
    rows = fetch(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {r[0] for r in rows}


def schema_snapshot(url: str) -> dict[str, list[tuple]]:
    """Everything a migration could change, plus the bookkeeping rows with their times."""
    return {
        "columns": fetch(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default, character_maximum_length"
            " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        ),
        "indexes": fetch(url, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"),
        "constraints": fetch(
            url,
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        ),
        "migrations": fetch(url, "SELECT version, name, checksum, applied_at, xmin::text FROM schema_migrations ORDER BY 1"),
    }


def _write(path: Path, sql: str) -> Path:
    path.write_text(sql, encoding="utf-8")
    return path


# --- the normal path ------------------------------------------------------------------------


def test_the_project_has_migrations_to_test() -> None:
    assert len(DDL_FILES) >= 2
    assert [m.version for m in load_migrations()] == sorted(int(p.name[:4]) for p in DDL_FILES)


def test_migrate_on_an_empty_database_applies_every_file_in_order(empty_db: str) -> None:
    assert public_tables(empty_db) == set()
    applied = migrate(empty_db)
    expected = _expected_rows(default_ddl_dir())
    assert [(m.version, m.name) for m in applied] == [(v, n) for v, n, _ in expected]
    assert bookkeeping(empty_db) == expected
    # Applied in version order: each migration commits in its own transaction,
    # so the bookkeeping rows' transaction ids increase with the version.
    by_commit = fetch(empty_db, "SELECT version FROM schema_migrations ORDER BY xmin::text::bigint")
    assert [r[0] for r in by_commit] == [v for v, _, _ in expected]
    assert SIX_TABLES | {"ingest_offsets", "ingest_conflicts", "schema_migrations"} <= public_tables(empty_db)


def test_second_run_returns_nothing_and_changes_nothing(empty_db: str) -> None:
    migrate(empty_db)
    before = schema_snapshot(empty_db)
    assert migrate(empty_db) == []
    assert schema_snapshot(empty_db) == before


def test_a_new_migration_added_later_is_applied_alone(empty_db: str, ddl_copy: Path) -> None:
    assert len(migrate(empty_db, ddl_dir=ddl_copy)) == len(DDL_FILES)
    before = bookkeeping(empty_db)
    new = _write(ddl_copy / f"{NEXT:04d}_add_run_labels.sql",
                 "CREATE TABLE run_labels (run_id UUID REFERENCES simulation_runs (run_id), label TEXT NOT NULL);\n")
    applied = migrate(empty_db, ddl_dir=ddl_copy)
    assert [(m.version, m.name) for m in applied] == [(NEXT, "add_run_labels")]
    assert bookkeeping(empty_db) == before + [(NEXT, "add_run_labels", _sha256(new))]
    assert has_table(empty_db, "run_labels")
    assert migrate(empty_db, ddl_dir=ddl_copy) == []


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_migrations_apply_each_file_exactly_once(empty_db: str, attempt: int) -> None:
    start = threading.Barrier(2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=30)
            results.append([m.version for m in migrate(empty_db)])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "migrate() hung"
    assert errors == []
    assert len(results) == 2
    expected = _expected_rows(default_ddl_dir())
    # Together the two calls applied every migration once: one did all, the other none.
    assert sorted(v for r in results for v in r) == [v for v, _, _ in expected]
    assert sorted(results, key=len) == [[], [v for v, _, _ in expected]]
    assert bookkeeping(empty_db) == expected


# --- edited migrations ----------------------------------------------------------------------


@pytest.mark.parametrize("edited", [p.name for p in DDL_FILES])
@pytest.mark.parametrize("edit", ["\n-- a harmless comment\n", " "], ids=["comment", "one-space"])
def test_editing_an_applied_migration_is_refused_and_applies_nothing_else(
    empty_db: str, ddl_copy: Path, edited: str, edit: str
) -> None:
    migrate(empty_db, ddl_dir=ddl_copy)
    before = schema_snapshot(empty_db)
    with (ddl_copy / edited).open("a", encoding="utf-8") as f:
        f.write(edit)
    pending = _write(ddl_copy / f"{NEXT:04d}_pending.sql", "CREATE TABLE pending_thing (id INT);\n")
    with pytest.raises(MigrationChecksumError) as caught:
        migrate(empty_db, ddl_dir=ddl_copy)
    assert edited in str(caught.value)
    assert isinstance(caught.value, MigrationError)
    assert not has_table(empty_db, "pending_thing")
    assert schema_snapshot(empty_db) == before
    assert pending.exists()


def test_checksums_are_verified_before_any_pending_migration_is_applied(empty_db: str, ddl_copy: Path) -> None:
    # The database has 0001, 0002 and 0004 (0004 came from a branch merged
    # first); 0003 arrives later, and meanwhile someone edited 0004.
    later = _write(ddl_copy / f"{NEXT + 1:04d}_later.sql", "CREATE TABLE later_thing (id INT);\n")
    migrate(empty_db, ddl_dir=ddl_copy)
    before = schema_snapshot(empty_db)
    _write(ddl_copy / f"{NEXT:04d}_merged.sql", "CREATE TABLE merged_thing (id INT);\n")
    with later.open("a", encoding="utf-8") as f:
        f.write("-- edited after it was applied\n")
    with pytest.raises(MigrationChecksumError, match=later.name):
        migrate(empty_db, ddl_dir=ddl_copy)
    # BUG: consumers/migrations.py checks each checksum inside the apply loop,
    # so the pending 0003 is applied before the edited 0004 is noticed.
    assert not has_table(empty_db, "merged_thing")
    assert schema_snapshot(empty_db) == before


# --- failing and badly named migrations -----------------------------------------------------

BROKEN_SQL = (
    "CREATE TABLE half_done (id INT PRIMARY KEY);\n"
    "INSERT INTO half_done VALUES (1);\n"
    "ALTER TABLE agents ADD COLUMN half_done_flag BOOLEAN;\n"
    "SELECT * FROM no_such_table;\n"
)


def _advisory_locks(url: str) -> int:
    return fetch(
        url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (MIGRATION_LOCK_ID,),
    )[0][0]


def test_a_failing_migration_leaves_no_partial_table_and_no_bookkeeping_row(empty_db: str, ddl_copy: Path) -> None:
    broken = _write(ddl_copy / f"{NEXT:04d}_broken.sql", BROKEN_SQL)
    with pytest.raises((MigrationError, psycopg.Error)):
        migrate(empty_db, ddl_dir=ddl_copy)
    # The earlier migrations committed; the broken one left nothing behind.
    assert bookkeeping(empty_db) == _expected_rows(default_ddl_dir())
    assert not has_table(empty_db, "half_done")
    assert fetch(empty_db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'half_done_flag'") == [(0,)]
    assert _advisory_locks(empty_db) == 0
    # Fixed, it applies on the next run.
    _write(broken, "CREATE TABLE half_done (id INT PRIMARY KEY);\n")
    assert [m.name for m in migrate(empty_db, ddl_dir=ddl_copy)] == ["broken"]
    assert has_table(empty_db, "half_done")


def test_a_failing_migration_raises_a_migration_error_naming_the_file(empty_db: str, ddl_copy: Path) -> None:
    # BUG: consumers/migrations.py lets the raw psycopg error escape, without
    # the file's name; `society-ingest migrate` only catches MigrationError, so
    # the operator gets a traceback instead of one clear line.
    broken = _write(ddl_copy / f"{NEXT:04d}_broken.sql", BROKEN_SQL)
    with pytest.raises(MigrationError, match=broken.name) as caught:
        migrate(empty_db, ddl_dir=ddl_copy)
    assert isinstance(caught.value.__cause__, psycopg.Error)


@pytest.mark.parametrize(
    "bad_name",
    ["3_short.sql", "0003-dash.sql", "0003_CamelCase.sql", "00003_five_digits.sql", "0003_.sql", "abcd_name.sql",
     "0003_with space.sql"],
)
def test_a_badly_named_file_is_refused_before_touching_the_database(
    empty_db: str, ddl_copy: Path, bad_name: str
) -> None:
    _write(ddl_copy / bad_name, "CREATE TABLE should_not_exist (id INT);\n")
    with pytest.raises(MigrationError, match=bad_name):
        migrate(empty_db, ddl_dir=ddl_copy)
    assert public_tables(empty_db) == set()


def test_two_files_with_one_version_are_refused(empty_db: str, ddl_copy: Path) -> None:
    _write(ddl_copy / f"{DDL_FILES[-1].name[:4]}_duplicate.sql", "CREATE TABLE should_not_exist (id INT);\n")
    with pytest.raises(MigrationError):
        migrate(empty_db, ddl_dir=ddl_copy)
    assert public_tables(empty_db) == set()


def test_files_that_are_not_sql_are_ignored(empty_db: str, ddl_copy: Path) -> None:
    _write(ddl_copy / "README.md", "# notes\n")
    _write(ddl_copy / "0009_draft.sql.bak", "garbage")
    assert [m.version for m in migrate(empty_db, ddl_dir=ddl_copy)] == [m.version for m in load_migrations()]


NOTICE_SQL = "DO $$ BEGIN RAISE NOTICE 'role % may not create roles: no grants made', current_user; END $$;\n"


def test_notices_raised_by_migrations_are_returned_and_printed(empty_db: str, ddl_copy: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from consumers.cli import app

    user = psycopg.conninfo.conninfo_to_dict(empty_db).get("user") or fetch(empty_db, "SELECT current_user")[0][0]
    _write(ddl_copy / f"{NEXT:04d}_grants.sql", NOTICE_SQL)
    applied = migrate(empty_db, ddl_dir=ddl_copy)
    expected = f"{NEXT:04d}_grants: role {user} may not create roles: no grants made"
    assert applied.notices == [expected]
    # Only the migrations' own notices: not the bookkeeping's "relation … already exists, skipping".
    assert migrate(empty_db, ddl_dir=ddl_copy).notices == []

    fresh = f"m_{uuid.uuid4().hex[:12]}"
    with _admin(empty_db) as conn:
        conn.execute(f"CREATE DATABASE {fresh}")
    try:
        monkeypatch.setattr("consumers.migrations.default_ddl_dir", lambda: ddl_copy)
        result = CliRunner().invoke(app, ["migrate", "--database-url", _with_db(empty_db, fresh)])
        assert result.exit_code == 0, result.output
        assert f"warning: {expected}" in result.stderr
        assert f"applied {NEXT:04d}_grants" in result.stdout
    finally:
        with _admin(empty_db) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {fresh} WITH (FORCE)")
