"""Per-test databases cloned from one migrated template."""

from __future__ import annotations

import hashlib
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumers.cli._redact import redact_dsn
from consumers.migrations import load_migrations, migrate

#: Templates are named by this and a digest of the migrations they hold.
TEMPLATE = "society_test_template"


class RedactedUrl(str):
    """A connection string whose repr hides its password.

    pytest prints the arguments of a failing test's frames in its report, and a
    fixture's database URL must not bring the password along.
    """

    def __repr__(self) -> str:
        return repr(redact_dsn(self))


def url_with(url: str, **changes: str) -> str:
    """`url` with some connection parameters changed (a key=value conninfo)."""
    params = conninfo_to_dict(url)
    params.update(changes)
    return make_conninfo(**params)


def _with_db(url: str, dbname: str) -> str:
    return url_with(url, dbname=dbname)


def wrong_password_url(url: str, wrong: str) -> str:
    """`url` with a wrong password; fails the test if the server does not check passwords."""
    bad = url_with(url, password=wrong)
    try:
        psycopg.connect(bad, connect_timeout=5).close()
    except psycopg.OperationalError:
        return bad
    raise AssertionError("this PostgreSQL accepts any password (trust authentication): the test needs password auth")


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(_with_db(url, "postgres"), autocommit=True)


def create_template(url: str) -> str:
    """The migrated template database of the current ``ddl/``, created if missing.

    Named by a digest of the migrations, so test sessions of checkouts with other
    migrations (parallel branches on one server) never drop or use each other's.
    It is migrated under a temporary name and renamed when complete, so a name
    that exists is a complete template.
    """
    digest = hashlib.sha256("".join(f"{m.version}:{m.checksum};" for m in load_migrations()).encode()).hexdigest()
    name = f"{TEMPLATE}_{digest[:12]}"
    with _admin(url) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return name
        building = f"{name}_{uuid.uuid4().hex[:6]}"
        conn.execute(f"CREATE DATABASE {building}")
    migrate(_with_db(url, building))
    with _admin(url) as conn:
        try:
            conn.execute(f"ALTER DATABASE {building} RENAME TO {name}")
        except psycopg.errors.DuplicateDatabase:  # another session finished first
            conn.execute(f"DROP DATABASE {building} WITH (FORCE)")
    return name


def clone_database(url: str, template: str) -> tuple[str, str]:
    """A new database copied from `template`; returns (url, name)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _admin(url) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return RedactedUrl(_with_db(url, name)), name


def drop_database(url: str, name: str) -> None:
    with _admin(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fetch(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def count(url: str, table: str) -> int:
    return fetch(url, f"SELECT count(*) FROM {table}")[0][0]
