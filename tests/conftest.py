"""Shared fixtures: real Kafka and PostgreSQL, from the first source that works.

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` when both are set;
2. testcontainers (Kafka and PostgreSQL modules) when a Docker engine answers;
3. the project's local stack (``scripts/stack``), started here and stopped after.

Tests that need services never skip: if none can be had they error loudly.
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from localstack import LocalStack  # noqa: E402

from support.images import KAFKA_IMAGE, POSTGRES_IMAGE  # noqa: E402


@dataclass
class Services:
    """Where the tests' Kafka and PostgreSQL are, and who started them."""

    bootstrap: str
    database_url: str
    source: str
    #: The local stack, when the services are it (fault tests restart them).
    stack: LocalStack | None = None
    #: A --kafka-config file for Kafka's SASL_SSL listener (the local stack has one), else None.
    kafka_sasl_config: Path | None = None

    def __post_init__(self) -> None:
        from support.db import RedactedUrl

        self.database_url = RedactedUrl(self.database_url)


def _sasl_config(stack: LocalStack | None) -> Path | None:
    """The SASL_SSL listener's client file: the local stack's own, or one named by ``scripts/stack env``."""
    if stack is not None:
        return stack.kafka_client_config if stack.has_sasl_listener() else None
    named = os.environ.get("SOCIETY_STACK_KAFKA_CONFIG")
    return Path(named) if named else None


#: Passwords no test output may contain: the services' own, and those tests give to roles they make.
SECRETS: set[str] = {"role-pw"}
#: (test id, where) of each captured output that contained one.
_LEAKS: list[tuple[str, str]] = []


def _watch_secrets(svc: Services) -> None:
    """Add the services' passwords to SECRETS (the check runs over every test's captured output)."""
    from psycopg.conninfo import conninfo_to_dict

    password = conninfo_to_dict(svc.database_url).get("password")
    if password:
        SECRETS.add(password)
    if svc.kafka_sasl_config is not None and svc.kafka_sasl_config.exists():
        for line in svc.kafka_sasl_config.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "sasl.password" and value.strip():
                SECRETS.add(value.strip())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Look for a password in everything a test printed or logged, passed or failed."""
    texts = [(name, content) for name, content in report.sections]
    if report.longrepr is not None:
        texts.append(("failure report", str(report.longrepr)))
    for name, content in texts:
        if any(secret in content for secret in SECRETS) and (report.nodeid, name) not in _LEAKS:
            _LEAKS.append((report.nodeid, name))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _LEAKS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _docker_ping() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        client.ping()
        return True
    except Exception:
        return False
    finally:
        client.close()


def _docker_answers() -> bool:
    import warnings

    # The docker client leaves its socket to the garbage collector when the engine does not
    # answer: collected later, that ResourceWarning would fail whichever test is running then.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        answers = _docker_ping()
        gc.collect()
    return answers


@pytest.fixture(scope="session")
def services(request: pytest.FixtureRequest) -> Iterator[Services]:
    bootstrap, url = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("DATABASE_URL")
    if bootstrap and url:
        local = LocalStack()
        stack = local if (local.kafka_bootstrap, local.database_url) == (bootstrap, url) else None
        svc = Services(bootstrap, url, "environment" + (" (local stack)" if stack else ""), stack, _sasl_config(stack))
        request.config.stash[_SOURCE] = svc.source
        _watch_secrets(svc)
        yield svc
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka, PostgresContainer(POSTGRES_IMAGE, driver=None) as pg:
            svc = Services(kafka.get_bootstrap_server(), pg.get_connection_url(), "testcontainers")
            request.config.stash[_SOURCE] = svc.source
            _watch_secrets(svc)
            yield svc
        return
    stack = LocalStack()
    started = not (stack.is_kafka_up() and stack.is_postgres_up())
    stack.up()
    svc = Services(stack.kafka_bootstrap, stack.database_url, "local stack", stack, _sasl_config(stack))
    request.config.stash[_SOURCE] = svc.source
    _watch_secrets(svc)
    try:
        yield svc
    finally:
        if started:
            stack.down()


_SOURCE = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for nodeid, where in _LEAKS:
        terminalreporter.write_line(f"PASSWORD IN OUTPUT: {nodeid} ({where})", red=True)
    if SECRETS - {"role-pw"}:
        terminalreporter.write_line(
            f"checked every test's captured output for {len(SECRETS)} password(s): "
            + ("none found" if not _LEAKS else f"found in {len(_LEAKS)}")
        )
    source = config.stash.get(_SOURCE, None)
    if source:
        terminalreporter.write_line(f"Kafka and PostgreSQL came from: {source}")


@pytest.fixture(scope="session")
def template_db(services: Services) -> str:
    """Name of a migrated template database; each test gets a copy."""
    from support.db import create_template

    return create_template(services.database_url)


@pytest.fixture
def database_url(services: Services, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    from support.db import clone_database, drop_database

    url, name = clone_database(services.database_url, template_db)
    yield url
    drop_database(services.database_url, name)


@pytest.fixture
def topic_prefix(services: Services) -> Iterator[str]:
    """A fresh topic prefix with all topics created (3 partitions each), deleted after the test.

    Deleting matters: every partition holds open files in the broker, and a suite's worth of
    topics left behind runs a broker into its open-files limit (seen at about 20,000 partitions).
    """
    from consumers.topics import admin_client, all_topics, create_topics

    prefix = f"t{uuid.uuid4().hex[:10]}"
    admin = admin_client(services.bootstrap)
    create_topics(admin, prefix, services.bootstrap, partitions=3)
    yield prefix
    try:
        for future in admin.delete_topics(all_topics(prefix), operation_timeout=10, request_timeout=10).values():
            future.result(timeout=15)
    except Exception as e:  # a fault test may have left the broker down: the next run cleans nothing up
        print(f"could not delete the topics of {prefix}: {e}")


@pytest.fixture
def stack(services: Services) -> Iterator[LocalStack]:
    """The local stack, for fault tests that stop and restart the services."""
    if services.stack is None:
        pytest.fail(
            f"fault tests stop and restart Kafka and PostgreSQL, which needs the local stack "
            f"(scripts/stack); services came from {services.source}"
        )
    yield services.stack
    # Leave both services up for the next test, whatever this one did.
    services.stack.start_kafka()
    services.stack.start_postgres()


@pytest.fixture
def spawn(services: Services, tmp_path: Path) -> Iterator[Any]:
    """Factory of worker processes (killed at teardown if still running)."""
    from support.pipeline import SpawnedWorker

    started: list[SpawnedWorker] = []

    def factory(database_url: str, prefix: str, group: str, *args: str) -> SpawnedWorker:
        w = SpawnedWorker(services.bootstrap, database_url, prefix, group, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(w)
        return w

    yield factory
    for i, w in enumerate(started):
        if w.proc.returncode is None:
            w.kill()
        # Shown by pytest only when the test failed.
        print(f"--- worker {i} log (exit {w.proc.returncode}) ---\n{w.log_tail(2000)}")
