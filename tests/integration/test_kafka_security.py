"""Every Kafka client through a real SASL_SSL listener (SCRAM-SHA-512 over TLS), and a wrong password.

The listener is the local stack's second one (scripts/localstack/_sasl.py: a
certificate made with the JDK's keytool, a SCRAM user set through the Admin
API) on the broker the suite runs against. Through it: the embedded producer
and the drop-in handler, ``topics``, the worker with its dead-letter producer,
``status`` and ``dlq``. A wrong password is one line naming the user, never a
password, for the CLI, the worker and the producer; no password appears in
anything printed or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from consumers.errors import ConfigurationError
from consumers.kafka_clients import client_config
from consumers.topics import admin_client, all_topics
from producers import (
    KafkaAuthenticationError, KafkaClientSettings, KafkaDatabaseHandler, ProducerSettings, SocietyProducer, tables,
)
from producers.kafka_config import resolve
from support.cli import REPO, Ran, run_cli
from support.pipeline import WAIT_TIMEOUT_S, WorkerThread, wait_for, worker_settings

pytestmark = pytest.mark.integration

WRONG = "not-the-Passw0rd-7"
#: A refused client must say so well within this (the probe fails at the first refusal).
REFUSAL_WITHIN_S = 15.0


@dataclass(frozen=True)
class Listener:
    """The SASL_SSL listener: its --kafka-config file and the settings in it."""

    config: Path
    settings: KafkaClientSettings

    @property
    def password(self) -> str:
        return self.settings.sasl_password.get_secret_value()

    @property
    def user(self) -> str:
        return str(self.settings.sasl_username)

    def env(self, password: str | None = None) -> dict[str, str]:
        """The settings as the environment variables the CLI and the handler read."""
        s = self.settings
        return {
            "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers, "KAFKA_SECURITY_PROTOCOL": s.security_protocol,
            "KAFKA_SASL_MECHANISM": str(s.sasl_mechanism), "KAFKA_SASL_USERNAME": self.user,
            "KAFKA_SASL_PASSWORD": password or self.password, "KAFKA_SSL_CA_LOCATION": str(s.ssl_ca_location),
        }

    def flags(self, password_file: Path) -> list[str]:
        s = self.settings
        return ["--bootstrap-servers", s.bootstrap_servers, "--security-protocol", s.security_protocol,
                "--sasl-mechanism", str(s.sasl_mechanism), "--sasl-username", self.user,
                "--sasl-password-file", str(password_file), "--ssl-ca-location", str(s.ssl_ca_location)]

    def with_password(self, password: str) -> KafkaClientSettings:
        return self.settings.model_copy(update={"sasl_password": password})


@pytest.fixture(scope="module")
def sasl(services) -> Listener:
    if services.kafka_sasl_config is None:
        message = (f"Kafka ({services.source}) has no SASL_SSL listener: the local stack makes one when it starts "
                   "(a stack started by older code lacks it: scripts/stack down && scripts/stack up)")
        if os.environ.get("SOCIETY_CI") or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    settings = resolve(config_file=services.kafka_sasl_config)
    assert settings.security_protocol == "SASL_SSL" and settings.sasl_password is not None
    return Listener(services.kafka_sasl_config, settings)


@pytest.fixture
def password_file(sasl: Listener, tmp_path: Path) -> Path:
    path = tmp_path / "kafka.password"
    path.write_text(sasl.password + "\n")
    path.chmod(0o600)
    return path


def cli(*args: str, database_url: str = "", **env: str) -> Ran:
    """``python -m consumers.cli`` with no Kafka settings in its environment but `env`."""
    return run_cli(*args, timeout=WAIT_TIMEOUT_S * 2, DATABASE_URL=database_url, COLUMNS="200", **env)


def _ok(ran: Ran, *secrets: str) -> str:
    assert ran.returncode == 0, ran.stderr
    for secret in secrets:
        assert secret not in ran.stdout + ran.stderr
    return ran.stdout


@pytest.fixture
def sasl_prefix(sasl: Listener) -> Iterator[str]:
    """A topic prefix whose topics a test creates through the SASL_SSL listener; deleted after it."""
    prefix = f"sec{uuid.uuid4().hex[:10]}"
    yield prefix
    admin = admin_client(sasl.settings)
    for future in admin.delete_topics(all_topics(prefix), operation_timeout=10, request_timeout=10).values():
        try:
            future.result(timeout=15)
        except Exception as e:  # the test may have failed before creating them
            print(f"could not delete a topic of {prefix}: {e}")


def _memories(kafka: KafkaClientSettings, prefix: str, n: int) -> uuid.UUID:
    """A run with `n` memories through the embedded producer; delivered."""
    with SocietyProducer(ProducerSettings(kafka=kafka, topic_prefix=prefix)) as p:
        run_id = p.start_run({"agents": 1})
        for i in range(n):
            p.record_memory("agent_0", f"memory {i}", i)
        p.end_run()
    return run_id


def _rows(database_url: str, table: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_topics_producer_worker_dead_letters_status_and_dlq_through_sasl_ssl(
    sasl: Listener, password_file: Path, database_url: str, sasl_prefix: str, tmp_path: Path,
) -> None:
    prefix, group = sasl_prefix, f"{sasl_prefix}-workers"
    secrets = (sasl.password,)
    created = json.loads(_ok(cli("topics", "create", "--topic-prefix", prefix, "--partitions", "2", "--json",
                                 *sasl.flags(password_file)), *secrets))
    assert [t["name"] for t in created] == all_topics(prefix) and all(t["created"] for t in created)
    described = json.loads(_ok(cli("topics", "describe", "--topic-prefix", prefix, "--json",
                                   KAFKA_CONFIG_FILE=str(sasl.config)), *secrets))
    assert [(t["name"], t["partitions"]) for t in described] == [(n, 2) for n in all_topics(prefix)]

    _memories(sasl.settings, prefix, 20)
    poison = Producer(client_config(sasl.settings))
    poison.produce(tables.topic_for(prefix, tables.AGENT_MEMORIES), b"not avro", key=b"poison")
    assert poison.flush(30) == 0

    # The worker, its settings from the environment: its consumer and its dead-letter producer.
    log = tmp_path / "worker.log"
    with log.open("w") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "consumers.cli", "consume", "--topic-prefix", prefix, "--group", group],
            cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SOCIETY_"))},
                 "DATABASE_URL": database_url, **sasl.env()})
        try:
            wait_for(lambda: worker.poll() is not None or _rows(database_url, "agent_memories") == 20,
                     "the memories loaded through SASL_SSL")
            letters = lambda: json.loads(_ok(cli("dlq", "list", "--topic-prefix", prefix, "--json",  # noqa: E731
                                                 "--kafka-config", str(sasl.config)), *secrets))
            assert wait_for(lambda: worker.poll() is not None or letters(), "the dead letter") == [
                {"table": "agent_memories", "error_class": "MalformedRecordError", "count": 1}]
            assert worker.poll() is None, log.read_text()
        finally:
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=WAIT_TIMEOUT_S)
    assert worker.returncode == 0, log.read_text()
    stats = json.loads(out)
    assert stats["inserted"]["agent_memories"] == 20 and stats["dead_lettered"] == 1
    assert sasl.password not in log.read_text()

    status = json.loads(_ok(cli("status", "--topic-prefix", prefix, "--group", group, "--json",
                                "--kafka-config", str(sasl.config), database_url=database_url), *secrets))
    assert status["rows"]["agent_memories"] == 20
    lags = [lag for lag in status["lag"] if lag["topic"] == tables.topic_for(prefix, tables.AGENT_MEMORIES)]
    assert len(lags) == 2 and all(lag["lag"] == 0 for lag in lags)
    assert sasl.password not in json.dumps(status)
    people = _ok(cli("status", "--topic-prefix", prefix, "--group", group, *sasl.flags(password_file),
                     database_url=database_url), *secrets)
    assert f"lag of group {group}" in people


def test_the_drop_in_handler_takes_its_security_settings_from_the_environment(
    sasl: Listener, password_file: Path, topic_prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**sasl.env(), "KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": str(password_file),
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # the kafka:// URL names the broker: it wins
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def simulate() -> KafkaDatabaseHandler:
        handler = KafkaDatabaseHandler(f"kafka://{sasl.settings.bootstrap_servers}/{topic_prefix}")
        await handler.start_simulation_run({"agents": 1})
        await handler.save_agent_memory("agent_0", {"content": "hello", "importance": 0.5}, step=1)
        await handler.end_simulation_run("completed")
        return handler

    handler = asyncio.run(simulate())
    assert handler.producer.settings.kafka.security_protocol == "SASL_SSL"
    assert handler.producer.stats().delivered == 3
    handler.producer.close()


@pytest.mark.parametrize("command", [
    ["topics", "list"], ["topics", "create"], ["status"], ["dlq", "list"], ["dlq", "show"], ["consume"],
    ["replay", "--dry-run"], ["simulate"], ["backfill", "README.md"],
], ids=" ".join)
def test_a_wrong_password_is_one_line_naming_the_user(sasl: Listener, database_url: str, command: list[str]) -> None:
    ran = cli(*command, database_url=database_url, **sasl.env(WRONG))
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert ran.returncode == 1 and len(lines) == 1, ran.stderr
    assert lines[0].startswith(
        f'error: Kafka at {sasl.settings.bootstrap_servers} (SASL_SSL, SCRAM-SHA-512, user "{sasl.user}"): '
        "authentication failed (SASL authentication error: Authentication failed during authentication due to "
        "invalid credentials with SASL mechanism SCRAM-SHA-512): check KAFKA_SASL_USERNAME / the password"), lines[0]
    assert WRONG not in ran.stdout + ran.stderr and sasl.password not in ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr
    assert ran.seconds < REFUSAL_WITHIN_S, ran.seconds


def test_the_debug_traceback_never_carries_a_password(sasl: Listener) -> None:
    ran = cli("--debug", "dlq", "list", **sasl.env(WRONG))
    assert ran.returncode == 1 and "Traceback" in ran.stderr, ran.stderr
    assert ran.stderr.splitlines()[-1].startswith(f"error: Kafka at {sasl.settings.bootstrap_servers} (SASL_SSL")
    assert WRONG not in ran.stdout + ran.stderr and sasl.password not in ran.stdout + ran.stderr


def test_an_untrusted_certificate_is_one_line(sasl: Listener, password_file: Path, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    store, secret = tmp_path / "other.p12", "other-store-pass"
    subprocess.run(["keytool", "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-dname", "CN=some other CA",
                    "-storetype", "PKCS12", "-keystore", str(store), "-storepass", secret, "-keypass", secret],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["keytool", "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(store), "-storepass", secret,
                    "-file", str(other_ca)], check=True, capture_output=True, timeout=60)
    ran = cli("topics", "list", *sasl.flags(password_file), "--ssl-ca-location", str(other_ca))
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert ran.returncode == 1 and len(lines) == 1, ran.stderr
    assert lines[0].startswith(f"error: Kafka at {sasl.settings.bootstrap_servers} (SASL_SSL, SCRAM-SHA-512, "
                               f'user "{sasl.user}"): the TLS handshake failed (SSL handshake failed:'), lines[0]
    assert "certificate verify failed" in lines[0] and "check KAFKA_SSL_CA_LOCATION" in lines[0]
    assert ran.seconds < REFUSAL_WITHIN_S, ran.seconds


def test_the_worker_stops_at_once_on_a_wrong_password(sasl: Listener, database_url: str, topic_prefix: str) -> None:
    settings = worker_settings(sasl.settings.bootstrap_servers, database_url, topic_prefix)
    settings = settings.model_copy(update={"kafka": sasl.with_password(WRONG)})
    started = time.monotonic()
    with WorkerThread(settings) as w:
        error = w.failure(timeout=REFUSAL_WITHIN_S)
    assert isinstance(error, ConfigurationError)
    assert f'user "{sasl.user}"): authentication failed' in str(error)
    assert WRONG not in str(error) and sasl.password not in str(error)
    assert time.monotonic() - started < REFUSAL_WITHIN_S


def test_the_embedded_producer_says_the_credentials_were_refused(sasl: Listener, topic_prefix: str) -> None:
    p = SocietyProducer(ProducerSettings(kafka=sasl.with_password(WRONG), topic_prefix=topic_prefix))
    try:
        p.start_run()
        p.record_memory("agent_0", "never delivered", 0)
        started = time.monotonic()
        with pytest.raises(KafkaAuthenticationError) as e:
            p.flush(timeout=WAIT_TIMEOUT_S)
        assert time.monotonic() - started < REFUSAL_WITHIN_S
    finally:
        p.abort()
    assert f'user "{sasl.user}"): authentication failed' in str(e.value)
    assert str(e.value).endswith("; 2 record(s) not delivered")
    assert WRONG not in str(e.value)


@pytest.mark.parametrize("right", [True, False], ids=["right password", "wrong password"])
def test_librdkafkas_own_lines_never_carry_the_password(sasl: Listener, right: bool) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.Logger("test.librdkafka", logging.DEBUG)
    logger.addHandler(Keep())
    password = sasl.password if right else WRONG
    consumer = Consumer(client_config(sasl.with_password(password), {
        "group.id": "security-test", "debug": "conf,security,broker", "logger": logger}))
    try:
        if right:
            consumer.list_topics(timeout=30)  # connected and authenticated
        deadline = time.monotonic() + REFUSAL_WITHIN_S
        while time.monotonic() < deadline and not (right or any("SASL authentication error" in x for x in lines)):
            consumer.poll(0.2)
        consumer.poll(0.5)  # hands over the lines queued meanwhile
    finally:
        consumer.close()
    assert any("sasl.password = [redacted]" in line for line in lines)  # librdkafka dumped its config
    assert len(lines) > 20
    assert not [line for line in lines if password in line]
