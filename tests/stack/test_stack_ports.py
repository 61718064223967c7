"""A port held by something else: a clear PortInUse naming the port and its variable, nothing started."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from localstack import LocalStack, PortInUse, StackError
from private_stacks import PrivateStack

pytestmark = pytest.mark.stack


@pytest.fixture
def hold() -> Iterator[Callable[[int], None]]:
    """Listen on ports as some other program would; closed after the test."""
    held: list[socket.socket] = []

    def bind(port: int) -> None:
        s = socket.socket()
        held.append(s)
        s.bind(("127.0.0.1", port))
        s.listen()

    yield bind
    for s in held:
        s.close()


def _nothing_started(private: PrivateStack) -> None:
    assert not (private.state_dir / "kafka" / "kafka.pid").exists()
    assert not (private.state_dir / "pg.location").exists()  # no initdb either


@pytest.mark.parametrize("offset", [0, 1, 2], ids=["broker", "controller", "sasl_ssl"])
def test_kafka_port_held(private_stack: PrivateStack, hold, offset: int) -> None:
    port = private_stack.kafka_port + offset
    hold(port)
    with pytest.raises(PortInUse, match=f"port 127.0.0.1:{port} for kafka .*set SOCIETY_KAFKA_PORT"):
        private_stack.local().start_kafka()
    _nothing_started(private_stack)


def test_postgres_port_held(private_stack: PrivateStack, hold) -> None:
    hold(private_stack.pg_port)
    with pytest.raises(PortInUse, match=f"port 127.0.0.1:{private_stack.pg_port} for postgres .*set SOCIETY_PG_PORT"):
        private_stack.local().start_postgres()
    _nothing_started(private_stack)


def test_up_with_the_postgres_port_held_starts_no_kafka_and_says_one_line(private_stack: PrivateStack, hold) -> None:
    hold(private_stack.pg_port)
    res = private_stack.cli("up")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith(f"stack: error: port 127.0.0.1:{private_stack.pg_port} for postgres is already in use")
    assert "SOCIETY_PG_PORT" in res.stderr.splitlines()[0]
    _nothing_started(private_stack)


def test_free_ports_moves_off_held_ports(private_stack: PrivateStack, hold) -> None:
    hold(private_stack.kafka_port + 1)
    hold(private_stack.pg_port)
    res = private_stack.cli("free-ports")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split("=")[0] for line in lines] == ["export SOCIETY_KAFKA_PORT", "export SOCIETY_PG_PORT"]
    kafka, pg = (int(line.split("=")[1]) for line in lines)
    assert kafka > private_stack.kafka_port + 1 and (kafka - private_stack.kafka_port) % 2 == 0
    assert pg > private_stack.pg_port and pg not in (kafka, kafka + 1, kafka + 2)


def test_free_ports_keeps_free_ports(private_stack: PrivateStack) -> None:
    res = private_stack.cli("free-ports")
    assert res.stdout == (f"export SOCIETY_KAFKA_PORT={private_stack.kafka_port}\n"
                          f"export SOCIETY_PG_PORT={private_stack.pg_port}\n")


@pytest.mark.parametrize("value, message", [("abc", "is not a port number"), ("70000", "is out of range")])
def test_bad_port_variable(monkeypatch: pytest.MonkeyPatch, private_stack: PrivateStack,
                           value: str, message: str) -> None:
    monkeypatch.setenv("SOCIETY_PG_PORT", value)
    with pytest.raises(StackError, match=f"SOCIETY_PG_PORT=.*{message}"):
        LocalStack(private_stack.state_dir)
    res = private_stack.cli("status", env={**private_stack.env(), "SOCIETY_PG_PORT": value})
    assert res.returncode == 1 and "SOCIETY_PG_PORT=" in res.stderr and message in res.stderr
