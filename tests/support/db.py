"""Per-test databases cloned from one migrated template."""

from __future__ import annotations

import hashlib
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumers.migrations import load_migrations, migrate

#: Prefix of the migrated templates' names; each set of migrations has its own template.
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


def template_name() -> str:
    """The template of this checkout's migrations: named by their checksums, so checkouts with other
    migrations (branches tested at once on one server) never drop or use each other's template."""
    digest = hashlib.sha256(" ".join(m.checksum for m in load_migrations()).encode()).hexdigest()
    return f"{TEMPLATE}_{digest[:12]}"


_MIGRATED = "society-ingest test template: migrated"


def create_template(url: str) -> str:
    """The migrated template of this checkout's migrations: reused when complete, else (re)created.

    Sessions making the same template at once take turns (an advisory lock), so none drops
    the template another is cloning.
    """
    name = template_name()
    with _admin(url) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        try:
            # Marked complete by a comment once migrated: checked without connecting to it (a
            # connection would make another session's clone of it fail).
            done = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                                (name,)).fetchone()
            if done and done[0] == _MIGRATED:
                return name
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
            migrate(_with_db(url, name))
            conn.execute(f"COMMENT ON DATABASE {name} IS '{_MIGRATED}'")
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))
    return name


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
