"""Per-test databases cloned from one migrated template."""

from __future__ import annotations

import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumers.migrations import migrate

TEMPLATE = "society_test_template"


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
    """(Re)create the template database and migrate it."""
    with _admin(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    migrate(_with_db(url, TEMPLATE))
    return TEMPLATE


def clone_database(url: str, template: str) -> tuple[str, str]:
    """A new database copied from `template`; returns (url, name)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _admin(url) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return _with_db(url, name), name


def drop_database(url: str, name: str) -> None:
    with _admin(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fetch(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def count(url: str, table: str) -> int:
    return fetch(url, f"SELECT count(*) FROM {table}")[0][0]
