"""The command line when Kafka or PostgreSQL is down, refuses us, or is misconfigured.

Every failure is one line on stderr (``error: …``) naming the address tried,
exit code 1, no traceback, never the password, and it comes within a bounded
wait. The CLI runs as a subprocess with a controlled environment; "down" is a
real closed port (127.0.0.1:1) or a real listener that never answers.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from support.cli import Ran, run_cli
from support.db import url_with, wrong_password_url

pytestmark = pytest.mark.integration

#: A failing command must give up well within this (a hang guard, not a timing test).
HANG_GUARD_S = 30.0
#: Passed as --timeout where the test waits for a silent or closed Kafka port.
SHORT_TIMEOUT_S = 3
CLOSED = "127.0.0.1:1"  # nothing listens on port 1
SECRET = "n0t-The-Passw0rd"
MALFORMED_SECRET = "S3cret%ZZ"  # "%ZZ" is not percent-encoding: psycopg's parse error quotes it

DB_COMMANDS = {"status": ["status"], "migrate": ["migrate"], "consume": ["consume", "--idle-exit", "1"]}
KAFKA_COMMANDS = {
    "status": ["status"],
    "topics list": ["topics", "list"],
    "dlq list": ["dlq", "list"],
    "consume": ["consume", "--idle-exit", "1"],
}


def cli(*args: str, database_url: str, bootstrap: str, **env: str) -> Ran:
    """Run ``python -m consumers.cli`` with only these settings in its environment."""
    return run_cli(*args, timeout=HANG_GUARD_S * 2, DATABASE_URL=database_url, KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                   **env)


def assert_one_line_failure(ran: Ran, *expected: str, secrets: tuple[str, ...] = ()) -> str:
    """Exit 1, one non-blank stderr line ``error: …`` holding `expected`, no traceback or secret; return it."""
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert ran.returncode == 1, (ran.returncode, ran.stderr)
    assert len(lines) == 1, ran.stderr
    (line,) = lines
    assert line.startswith("error: "), line
    for text in expected:
        assert text in line, (text, line)
    both = ran.stdout + ran.stderr
    assert "Traceback" not in both
    for secret in secrets:
        assert secret not in both, both
    assert ran.seconds < HANG_GUARD_S, ran.seconds
    return line


def _host_port(url: str) -> str:
    params = conninfo_to_dict(url)
    return f"{params.get('host', 'localhost')}:{params.get('port', '5432')}"


def _password(url: str) -> str:
    password = conninfo_to_dict(url).get("password")
    assert password, "the tests' DATABASE_URL has no password: nothing to prove hidden"
    return password


@pytest.fixture
def empty_database(services) -> Iterator[str]:
    """A database that exists but was never migrated."""
    name = f"t_empty_{uuid.uuid4().hex[:8]}"
    admin = url_with(services.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield url_with(services.database_url, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def silent_port() -> Iterator[str]:
    """host:port of a listener that takes connections and never says a word (a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


# -- PostgreSQL ----------------------------------------------------------------


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_unreachable_database(services, command):
    url = f"postgresql://postgres:{SECRET}@{CLOSED}/society"
    ran = cli(*DB_COMMANDS[command], database_url=url, bootstrap=services.bootstrap)
    line = assert_one_line_failure(ran, f"{CLOSED}/society", secrets=(SECRET,))
    assert line == (
        f"error: cannot connect to PostgreSQL at postgres@{CLOSED}/society: connection refused "
        "(--database-url / DATABASE_URL)"
    )


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_wrong_password(services, database_url, command):
    bad = wrong_password_url(database_url, SECRET)
    ran = cli(*DB_COMMANDS[command], database_url=bad, bootstrap=services.bootstrap)
    line = assert_one_line_failure(
        ran, _host_port(database_url), "password authentication failed", "(28P01)", "DATABASE_URL",
        secrets=(SECRET, _password(services.database_url)),
    )
    assert line.startswith(f"error: PostgreSQL at postgres@{_host_port(database_url)}/"), line


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_missing_database(services, command):
    url = url_with(services.database_url, dbname="no_such_db")
    ran = cli(*DB_COMMANDS[command], database_url=url, bootstrap=services.bootstrap)
    assert_one_line_failure(
        ran, f"{_host_port(url)}/no_such_db", 'database "no_such_db" does not exist', "(3D000)",
        secrets=(_password(services.database_url),),
    )


@pytest.mark.parametrize("command", DB_COMMANDS)
def test_malformed_url_never_shows_the_password(services, command):
    url = f"postgresql://postgres:{MALFORMED_SECRET}@{_host_port(services.database_url)}/society"
    ran = cli(*DB_COMMANDS[command], database_url=url, bootstrap=services.bootstrap)
    line = assert_one_line_failure(ran, secrets=(MALFORMED_SECRET, "S3cret"))
    assert line == (
        "error: DATABASE_URL is not a valid PostgreSQL URL: invalid percent-encoded token (password hidden)"
    )


@pytest.mark.parametrize("url", [
    "postgresql://postgres:Xy/S3cret+Ab=@{hp}/society",  # base64 passwords hold "/"
    "postgresql:/postgres:S3cret@{hp}/society",  # one slash
    "postgres:S3cret@{hp}/society",  # no scheme
])
def test_misread_urls_never_show_the_password(services, url):
    ran = cli("status", database_url=url.format(hp=_host_port(services.database_url)), bootstrap=services.bootstrap)
    assert_one_line_failure(ran, secrets=("S3cret",))


@pytest.mark.parametrize("command", ["status", "consume"])
def test_missing_tables_say_run_migrate(services, empty_database, command):
    ran = cli(*DB_COMMANDS[command], database_url=empty_database, bootstrap=services.bootstrap)
    assert_one_line_failure(
        ran, f"{_host_port(empty_database)}/{conninfo_to_dict(empty_database)['dbname']}", "does not exist",
        "(42P01)", "run `society-ingest migrate`", secrets=(_password(services.database_url),),
    )


def test_silent_database_is_given_up_after_the_timeout(services, silent_port):
    url = f"postgresql://postgres:{SECRET}@{silent_port}/society"
    ran = cli("migrate", "--timeout", str(SHORT_TIMEOUT_S), database_url=url, bootstrap=services.bootstrap)
    assert_one_line_failure(ran, f"cannot connect to PostgreSQL at postgres@{silent_port}/society", secrets=(SECRET,))
    assert ran.seconds >= SHORT_TIMEOUT_S - 1  # it did wait for an answer, then gave up


# -- Kafka ---------------------------------------------------------------------


@pytest.mark.parametrize("command", KAFKA_COMMANDS)
def test_unreachable_kafka(services, database_url, command):
    ran = cli(*KAFKA_COMMANDS[command], "--timeout", str(SHORT_TIMEOUT_S), database_url=database_url, bootstrap=CLOSED)
    line = assert_one_line_failure(ran, secrets=(_password(services.database_url),))
    assert line == (
        f"error: cannot reach Kafka at {CLOSED} within {SHORT_TIMEOUT_S}s: is it running? "
        "(--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS)"
    )


def test_unreachable_kafka_default_wait_is_bounded(services, database_url):
    ran = cli("topics", "list", database_url=database_url, bootstrap=CLOSED)
    assert_one_line_failure(ran, f"cannot reach Kafka at {CLOSED} within 10s")


def test_silent_kafka_is_given_up_after_the_timeout(services, database_url, silent_port):
    ran = cli("dlq", "list", "--timeout", str(SHORT_TIMEOUT_S), database_url=database_url, bootstrap=silent_port)
    assert_one_line_failure(ran, f"cannot reach Kafka at {silent_port} within {SHORT_TIMEOUT_S}s")


# -- the worker's own fatal errors, --debug, --help ------------------------------


def test_consume_exits_with_one_line_when_the_worker_stops_for_good(services, database_url, topic_prefix):
    # The role may read schema_migrations (the CLI's check passes) but not the tables the worker writes.
    role = f"t_role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
        conn.execute(f"GRANT SELECT ON schema_migrations TO {role}")
    url = url_with(database_url, user=role, password=SECRET)
    try:
        ran = cli("consume", "--topic-prefix", topic_prefix, "--idle-exit", "30", database_url=url,
                  bootstrap=services.bootstrap)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error: ")]
    assert ran.returncode == 1, ran.stderr
    assert len(errors) == 1 and errors[0] == ran.stderr.strip().splitlines()[-1], ran.stderr
    assert "permission denied" in errors[0] and f"{role}@{_host_port(url)}" in errors[0], errors[0]
    assert "Traceback" not in ran.stdout + ran.stderr and SECRET not in ran.stdout + ran.stderr
    assert ran.seconds < HANG_GUARD_S


@pytest.mark.parametrize(
    ("args", "env"), [(["--debug", "status"], {}), (["status"], {"SOCIETY_DEBUG": "1"})], ids=["flag", "env"]
)
def test_debug_adds_the_traceback_without_the_password(services, args, env):
    url = f"postgresql://postgres:{MALFORMED_SECRET}@{CLOSED}/society"
    ran = cli(*args, database_url=url, bootstrap=services.bootstrap, **env)
    assert ran.returncode == 1
    assert "Traceback (most recent call last)" in ran.stderr
    assert "invalid percent-encoded token" in ran.stderr  # psycopg's own error is in the chain...
    assert ran.stderr.strip().splitlines()[-1].startswith("error: DATABASE_URL is not a valid PostgreSQL URL")
    assert MALFORMED_SECRET not in ran.stdout + ran.stderr  # ...with the password it quoted hidden


HELP = [[], ["migrate"], ["topics"], ["topics", "create"], ["topics", "list"], ["topics", "describe"], ["consume"],
        ["simulate"], ["status"], ["dlq"], ["dlq", "list"], ["dlq", "show"], ["dlq", "redrive"], ["bench"],
        ["report"], ["views"], ["views", "refresh"]]


def test_help_never_prints_the_database_url():
    url = f"postgresql://postgres:{SECRET}@db.example:5432/society"
    for command in HELP:
        # Wide enough that rich neither wraps nor truncates a value (it would cut the secret short).
        ran = cli(*command, "--help", database_url=url, bootstrap=CLOSED, COLUMNS="1000")
        assert ran.returncode == 0, (command, ran.stderr)
        assert "Usage:" in ran.stdout and "--help" in ran.stdout, command
        flat = re.sub(r"[\s│]", "", ran.stdout + ran.stderr)
        assert SECRET not in flat and "db.example" not in flat, command


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_in_json_log_format_every_stderr_line_is_json(services, database_url, debug):
    import json

    bad = wrong_password_url(database_url, SECRET)
    ran = cli(*debug, "consume", "--log-format", "json", "--idle-exit", "1", database_url=bad,
              bootstrap=services.bootstrap)
    assert ran.returncode == 1, ran.stderr
    lines = [json.loads(line) for line in ran.stderr.splitlines() if line.strip()]
    error = lines[-1]
    assert (error["level"], error["logger"]) == ("ERROR", "society_ingest.cli"), error
    assert "password authentication failed" in error["message"] or "authentication" in error["message"], error
    assert error["worker_id"] and ("exception" in error) == bool(debug), error
    if debug:
        assert "Traceback" in error["exception"]
    assert SECRET not in ran.stderr + ran.stdout


def test_verbose_with_librdkafka_debug_shows_its_debug_lines(services, database_url, topic_prefix):
    ran = cli("consume", "-v", "-X", "debug=broker", "--topic-prefix", topic_prefix, "--idle-exit", "1",
              "--group", f"{topic_prefix}-dbg", database_url=database_url, bootstrap=services.bootstrap)
    assert ran.returncode == 0, ran.stderr
    assert any(" DEBUG society_ingest.librdkafka: " in line for line in ran.stderr.splitlines()), ran.stderr[-2000:]
    quiet = cli("consume", "-X", "debug=broker", "--topic-prefix", topic_prefix, "--idle-exit", "1",
                "--group", f"{topic_prefix}-dbg", database_url=database_url, bootstrap=services.bootstrap)
    assert " DEBUG society_ingest.librdkafka: " not in quiet.stderr
