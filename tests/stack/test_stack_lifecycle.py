"""Start, stop, restart and take over a private stack (real Kafka, real PostgreSQL).

One stack for the module, started by other processes (two ``scripts/stack up`` at
once); the tests drive it from this process, as the fault tests drive the shared one.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from localstack import LocalStack, PortInUse, PortMismatch
from localstack._processes import listens_on, port_bindable
from private_stacks import STACK_SCRIPT, PrivateStack, new_private_stack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateStack, list[str]]]:
    """The private stack, brought up by two processes at once, and what each printed."""
    stack = new_private_stack(tmp_path_factory.mktemp("lifecycle") / "stack")
    try:
        ups = [subprocess.Popen([str(STACK_SCRIPT), "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=stack.env()) for _ in range(2)]
        outs = [p.communicate(timeout=240) for p in ups]
        for p, (out, err) in zip(ups, outs):
            assert p.returncode == 0, err
        yield stack, [out for out, _ in outs]
    finally:
        stack.discard()


@pytest.fixture
def stack(started: tuple[PrivateStack, list[str]]) -> LocalStack:
    """A fresh instance in this process; the stack is up when the test begins."""
    local = started[0].local()
    local.up()  # a no-op unless an earlier test left it down
    return local


@pytest.fixture
def private(started: tuple[PrivateStack, list[str]]) -> PrivateStack:
    return started[0]


def test_two_processes_bring_it_up_at_once_and_print_the_env_lines(started) -> None:
    private, outputs = started
    tls = private.state_dir / "kafka" / "tls"
    expected = (f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{private.kafka_port}\n"
                f"export DATABASE_URL=postgresql://postgres:society-local@127.0.0.1:{private.pg_port}/society\n"
                f"export SOCIETY_STACK_SASL_BOOTSTRAP_SERVERS=127.0.0.1:{private.kafka_port + 2}\n"
                "export SOCIETY_STACK_SASL_USERNAME=society\n"
                f"export SOCIETY_STACK_SASL_PASSWORD_FILE={tls}/sasl.password\n"
                f"export SOCIETY_STACK_SSL_CA_LOCATION={tls}/ca.pem\n"
                f"export SOCIETY_STACK_KAFKA_CONFIG={tls}/client.properties\n")
    assert outputs == [expected, expected]
    assert private.local().env_lines() == expected


def test_the_sasl_ssl_listener_takes_the_stacks_user_and_its_files_are_private(stack: LocalStack) -> None:
    from producers.kafka_config import resolve

    config = stack.kafka_client_config
    settings = resolve(config_file=config)
    assert (settings.bootstrap_servers, settings.security_protocol, settings.sasl_mechanism,
            settings.sasl_username) == (stack.kafka_sasl_bootstrap, "SASL_SSL", "SCRAM-SHA-512", "society")
    password = settings.sasl_password.get_secret_value()
    assert (config.parent / "sasl.password").read_text().strip() == password and len(password) >= 24
    for name in ("sasl.password", "client.properties", "keystore.password", "broker.p12"):
        assert (config.parent / name).stat().st_mode & 0o077 == 0, name
    # The broker's own config holds the keystore's password too.
    assert (config.parent.parent / "server.properties").stat().st_mode & 0o077 == 0
    admin = AdminClient({**settings.librdkafka(), "log_level": 0})
    assert any(b.port == stack.kafka_sasl_port for b in admin.list_topics(timeout=30).brokers.values())
    wrong = AdminClient({**settings.librdkafka(), "sasl.password": "wrong", "log_level": 0})
    with pytest.raises(KafkaException):
        wrong.list_topics(timeout=3)


def test_another_instance_takes_over_the_running_stack(stack: LocalStack, private: PrivateStack) -> None:
    st = stack.status()
    assert (st["kafka"]["state"], st["postgres"]["state"]) == ("up", "up")
    kafka_pid = int((private.state_dir / "kafka" / "kafka.pid").read_text())
    assert st["kafka"]["pid"] == kafka_pid and st["postgres"]["pid"]
    assert stack.is_kafka_up() and stack.is_postgres_up()
    started = time.monotonic()
    stack.up()  # already up: returns at once and starts nothing
    stack.start_kafka()
    stack.start_postgres()
    assert time.monotonic() - started < 10
    again = stack.status()
    assert (again["kafka"]["pid"], again["postgres"]["pid"]) == (kafka_pid, st["postgres"]["pid"])


def test_another_state_dir_cannot_take_the_running_stacks_ports(stack: LocalStack, tmp_path: Path) -> None:
    other = LocalStack(tmp_path / "other", kafka_port=stack.kafka_port, pg_port=stack.pg_port)
    with pytest.raises(PortInUse, match=f"127.0.0.1:{stack.kafka_port} .*SOCIETY_KAFKA_PORT"):
        other.up()
    with pytest.raises(PortInUse, match=f"127.0.0.1:{stack.pg_port} .*SOCIETY_PG_PORT"):
        other.start_postgres()
    assert other.status()["kafka"]["state"] == "foreign"


def test_status_from_another_process(stack: LocalStack, private: PrivateStack) -> None:
    human = private.cli("status")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == f"state dir  {private.state_dir}"
    assert lines[1].startswith("kafka      up       pid ") and f"127.0.0.1:{private.kafka_port}  log " in lines[1]
    assert lines[2].startswith("postgres   up       pid ") and stack.database_url in lines[2]
    machine = private.cli("status", "--json")
    assert machine.returncode == 0, machine.stderr
    assert json.loads(machine.stdout) == stack.status()


def test_kafka_stopped_by_another_process_and_started_here_keeps_its_topics(
        stack: LocalStack, private: PrivateStack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic("kept", num_partitions=2, replication_factor=1)])["kept"].result(timeout=30)
    old_pid = stack.status()["kafka"]["pid"]

    stopped = private.cli("stop", "kafka")
    assert stopped.returncode == 0, stopped.stderr
    assert not stack.is_kafka_up()
    st = stack.status()
    assert (st["kafka"]["state"], st["kafka"]["pid"], st["postgres"]["state"]) == ("down", None, "up")
    assert private.cli("status").returncode == 3

    stack.start_kafka()
    assert stack.status()["kafka"]["pid"] not in (None, old_pid)
    topics = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10).topics
    assert len(topics["kept"].partitions) == 2


def test_kafka_killed_here_comes_back_from_another_process_and_restarts_here(
        stack: LocalStack, private: PrivateStack) -> None:
    stack.stop_kafka(kill=True)
    assert stack.status()["kafka"]["state"] == "down"
    started = private.cli("start", "kafka")
    assert started.returncode == 0, started.stderr
    assert stack.is_kafka_up()
    pid = stack.status()["kafka"]["pid"]
    stack.restart_kafka()
    assert stack.is_kafka_up() and stack.status()["kafka"]["pid"] not in (None, pid)


def test_postgres_restarts_keep_rows_and_tcp_asks_for_the_password(stack: LocalStack) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")

    stack.restart_postgres()
    stack.stop_postgres("immediate")  # crash-like: the next start recovers from the WAL
    assert stack.status()["postgres"]["state"] == "down" and not stack.is_postgres_up()
    stack.start_postgres()

    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)
    wrong = stack.database_url.replace(":society-local@", ":wrong@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)
    with pytest.raises(ValueError, match="immediate"):
        stack.stop_postgres("now")


def test_down_from_another_process_frees_the_ports_and_up_keeps_the_data(
        stack: LocalStack, private: PrivateStack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic("across-down", num_partitions=1, replication_factor=1)])["across-down"].result(30)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE across_down (n int)")

    down = private.cli("down")
    assert down.returncode == 0, down.stderr
    st = stack.status()
    assert [(st[s]["state"], st[s]["pid"]) for s in ("kafka", "postgres")] == [("down", None)] * 2
    assert not (private.state_dir / "kafka" / "kafka.pid").exists()
    assert all(port_bindable(p) for p in (stack.kafka_port, stack.controller_port, stack.pg_port))
    stack.down()  # stopping what is stopped is a no-op

    stack.up()
    assert "across-down" in AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10).topics
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM across_down").fetchone() == (0,)


# ------------------------------------------- a later shell without SOCIETY_*_PORT


def test_a_later_shell_without_the_port_variables_finds_the_stack(
        stack: LocalStack, private: PrivateStack, monkeypatch: pytest.MonkeyPatch) -> None:
    k, p = private.kafka_port, private.pg_port
    ports_file = private.state_dir / "ports"
    assert ports_file.read_text().splitlines()[1:] == [f"kafka={k}", f"postgres={p}"]
    bare = private.env_without_ports()

    env = private.cli("env", env=bare)
    assert env.returncode == 0, env.stderr
    assert env.stdout == stack.env_lines()
    assert env.stdout.startswith(f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{k}\n"
                                 f"export DATABASE_URL=postgresql://postgres:society-local@127.0.0.1:{p}/society\n")

    machine = private.cli("status", "--json", env=bare)
    assert machine.returncode == 0, machine.stderr
    st = json.loads(machine.stdout)
    assert (st["kafka"]["bootstrap"], st["postgres"]["url"]) == (stack.kafka_bootstrap, stack.database_url)
    assert listens_on(st["kafka"]["pid"], k) and listens_on(st["postgres"]["pid"], p)
    human = private.cli("status", env=bare)
    assert human.returncode == 0, human.stderr
    assert f"pid {st['kafka']['pid']:<8} 127.0.0.1:{k}  log " in human.stdout.splitlines()[1]

    free = private.cli("free-ports", env=bare)
    assert free.stdout == f"export SOCIETY_KAFKA_PORT={k}\nexport SOCIETY_PG_PORT={p}\n", free.stderr

    monkeypatch.delenv("SOCIETY_KAFKA_PORT", raising=False)
    monkeypatch.delenv("SOCIETY_PG_PORT", raising=False)
    monkeypatch.setenv("SOCIETY_STACK_DIR", str(private.state_dir))
    assert (LocalStack().kafka_port, LocalStack().pg_port) == (k, p)
    # A stack started before the ports file existed: read from the configs written at its start.
    saved = ports_file.read_text()
    ports_file.unlink()
    try:
        older = LocalStack()
        assert (older.kafka_port, older.pg_port, older.env()) == (k, p, stack.env())
    finally:
        ports_file.write_text(saved)


def test_stop_start_down_and_up_without_the_port_variables_keep_the_ports(
        stack: LocalStack, private: PrivateStack) -> None:
    bare = private.env_without_ports()
    for args in (["stop", "postgres"], ["start", "postgres"], ["stop", "kafka", "--kill"], ["down"]):
        res = private.cli(*args, env=bare)
        assert res.returncode == 0, (args, res.stderr)
    st = stack.status()
    assert [st[s]["state"] for s in ("kafka", "postgres")] == ["down", "down"]
    assert all(port_bindable(port) for port in (stack.kafka_port, stack.controller_port, stack.pg_port))

    up = private.cli("up", env=bare)
    assert up.returncode == 0, up.stderr
    assert up.stdout == stack.env_lines() and f"127.0.0.1:{private.kafka_port}\n" in up.stdout
    assert stack.is_kafka_up() and stack.is_postgres_up()
    assert private.cli("status", env=bare).returncode == 0


def test_port_variables_that_disagree_with_the_running_stack_are_one_clear_error(
        stack: LocalStack, private: PrivateStack) -> None:
    k, p = private.kafka_port, private.pg_port
    st = stack.status()
    kpid, ppid = st["kafka"]["pid"], st["postgres"]["pid"]
    cases = [(["env"], "SOCIETY_KAFKA_PORT", "kafka", k, kpid),
             (["status"], "SOCIETY_PG_PORT", "postgres", p, ppid),
             (["down"], "SOCIETY_KAFKA_PORT", "kafka", k, kpid),
             (["stop", "postgres"], "SOCIETY_PG_PORT", "postgres", p, ppid),
             (["up"], "SOCIETY_PG_PORT", "postgres", p, ppid),
             (["free-ports"], "SOCIETY_KAFKA_PORT", "kafka", k, kpid)]
    for args, var, service, running_on, pid in cases:
        wrong = running_on + 10
        res = private.cli(*args, env={**private.env(), var: str(wrong)})
        assert res.returncode == 1 and res.stdout == "", (args, res.stdout, res.stderr)
        assert res.stderr.splitlines() == [
            f"stack: error: {var}={wrong}, but the stack in {private.state_dir} runs {service} on "
            f"127.0.0.1:{running_on} (pid {pid}): unset {var} (or set it to {running_on}) to use that stack, "
            "or set SOCIETY_STACK_DIR to another state dir for a stack of its own"], args
    with pytest.raises(PortMismatch, match=f"kafka_port={k + 2}, .* runs kafka on 127.0.0.1:{k} "):
        LocalStack(private.state_dir, kafka_port=k + 2, pg_port=p)
    with pytest.raises(PortMismatch, match=f"pg_port={p + 1}, .* runs postgres on 127.0.0.1:{p} "):
        LocalStack(private.state_dir, kafka_port=k, pg_port=p + 1)
    after = stack.status()  # nothing was stopped or moved
    assert [(after[s]["state"], after[s]["pid"]) for s in ("kafka", "postgres")] == [("up", kpid), ("up", ppid)]


def test_status_never_reports_a_pid_up_on_a_port_it_does_not_listen_on(
        stack: LocalStack, private: PrivateStack, monkeypatch: pytest.MonkeyPatch) -> None:
    kpid = stack.status()["kafka"]["pid"]
    assert all(listens_on(kpid, port) for port in (stack.kafka_port, stack.controller_port, stack.kafka_sasl_port))
    assert not listens_on(kpid, stack.pg_port)
    monkeypatch.delenv("SOCIETY_KAFKA_PORT", raising=False)
    monkeypatch.delenv("SOCIETY_PG_PORT", raising=False)
    # The incident, forced: the state dir points at another port, where another broker answers.
    ports_file = private.state_dir / "ports"
    saved = ports_file.read_text()
    ports_file.write_text(f"kafka={stack.kafka_port + 10}\npostgres={stack.pg_port}\n")
    try:
        misled = LocalStack(private.state_dir)
        monkeypatch.setattr(misled, "is_kafka_up", lambda: True)
        kafka = misled.status()["kafka"]
        assert (kafka["pid"], kafka["bootstrap"]) == (kpid, f"127.0.0.1:{stack.kafka_port + 10}")
        assert kafka["state"] != "up"
    finally:
        ports_file.write_text(saved)
