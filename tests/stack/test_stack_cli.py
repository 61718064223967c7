"""scripts/stack's output, as scripts/test and scripts/demo read it, and LocalStack's settings."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from localstack import LocalStack
from localstack._ports import record, recorded
from private_stacks import REPO, STACK_SCRIPT, PrivateStack

pytestmark = pytest.mark.stack


def test_env_prints_export_lines_for_eval(private_stack: PrivateStack) -> None:
    res = private_stack.cli("env")
    assert res.returncode == 0, res.stderr
    assert res.stdout == private_stack.local().env_lines() == (
        f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{private_stack.kafka_port}\n"
        f"export DATABASE_URL=postgresql://postgres:society-local@127.0.0.1:{private_stack.pg_port}/society\n")
    shell = subprocess.run(
        ["bash", "-c", f'eval "$({STACK_SCRIPT} free-ports)"; eval "$({STACK_SCRIPT} env)"; '
                       'echo "$KAFKA_BOOTSTRAP_SERVERS $DATABASE_URL"'],
        capture_output=True, text=True, env=private_stack.env(), timeout=60, check=True)
    assert shell.stdout.split() == list(private_stack.local().env().values())


def test_status_of_a_stopped_stack(private_stack: PrivateStack) -> None:
    res = private_stack.cli("status")
    assert res.returncode == 3
    state = private_stack.state_dir
    assert res.stdout.splitlines() == [
        f"state dir  {state}",
        f"kafka      down     pid -        127.0.0.1:{private_stack.kafka_port}  log {state}/kafka/server.log",
        f"postgres   down     pid -        {private_stack.local().database_url}  log -",
    ]
    res = private_stack.cli("status", "--json")
    assert res.returncode == 3
    assert json.loads(res.stdout) == {
        "state_dir": str(state),
        "kafka": {"state": "down", "pid": None, "bootstrap": f"127.0.0.1:{private_stack.kafka_port}",
                  "sasl_bootstrap": None, "log": f"{state}/kafka/server.log", "data": f"{state}/kafka/data"},
        "postgres": {"state": "down", "pid": None, "url": private_stack.local().database_url,
                     "log": None, "data": None},
    }


def test_stopping_a_stopped_stack_is_a_no_op(private_stack: PrivateStack) -> None:
    for args in (["stop", "kafka"], ["stop", "postgres", "--kill"], ["down"]):
        res = private_stack.cli(*args)
        assert res.returncode == 0, (args, res.stderr)


def test_settings_come_from_arguments_then_environment_then_defaults(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SOCIETY_STACK_DIR", "SOCIETY_KAFKA_PORT", "SOCIETY_PG_PORT", "SOCIETY_INGEST_CACHE"):
        monkeypatch.delenv(name, raising=False)
    default = LocalStack()
    assert (default.state_dir, default.kafka_port, default.controller_port, default.pg_port) == (
        REPO / ".stack", 19092, 19093, 15432)
    assert default.cache_dir == Path.home() / ".cache" / "society-ingest"
    assert default.kafka_libs == default.cache_dir / "kafka-4.1.1" / "libs"

    monkeypatch.setenv("SOCIETY_STACK_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("SOCIETY_KAFKA_PORT", "21000")
    monkeypatch.setenv("SOCIETY_PG_PORT", "21500")
    monkeypatch.setenv("SOCIETY_INGEST_CACHE", str(tmp_path / "cache"))
    from_env = LocalStack()
    assert (from_env.state_dir, from_env.kafka_bootstrap, from_env.pg_port, from_env.cache_dir) == (
        tmp_path / "env", "127.0.0.1:21000", 21500, tmp_path / "cache")
    assert from_env.env() == {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:21000",
        "DATABASE_URL": "postgresql://postgres:society-local@127.0.0.1:21500/society",
    }
    given = LocalStack(tmp_path / "arg", kafka_port=22000, pg_port=22500, cache_dir=tmp_path / "c")
    assert (given.state_dir, given.kafka_port, given.pg_port, given.cache_dir) == (
        tmp_path / "arg", 22000, 22500, tmp_path / "c")


def test_a_virtualenv_that_cannot_be_built_is_one_clear_error(private_stack: PrivateStack, tmp_path: Path) -> None:
    res = private_stack.cli("env", env={**private_stack.env(), "PYTHON": str(tmp_path / "no-python")})
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines()[-1].startswith(
        f"stack: error: could not build the project's virtualenv ({REPO}/.venv) with scripts/bootstrap-venv")


def test_a_stopped_stack_keeps_the_ports_it_last_ran_on_unless_others_are_given(
        private_stack: PrivateStack, monkeypatch: pytest.MonkeyPatch) -> None:
    k, p = private_stack.kafka_port, private_stack.pg_port
    record(private_stack.state_dir, "kafka", k)
    record(private_stack.state_dir, "postgres", p)
    bare = private_stack.env_without_ports()
    res = private_stack.cli("env", env=bare)
    assert res.returncode == 0, res.stderr
    assert res.stdout == private_stack.local().env_lines()
    assert f"127.0.0.1:{k}\n" in res.stdout and f"127.0.0.1:{p}/society\n" in res.stdout
    res = private_stack.cli("status", env=bare)
    assert res.returncode == 3 and f"down     pid -        127.0.0.1:{k}  log " in res.stdout
    res = private_stack.cli("free-ports", env=bare)
    assert res.stdout == f"export SOCIETY_KAFKA_PORT={k}\nexport SOCIETY_PG_PORT={p}\n", res.stderr

    # Nothing runs: given ports win (the next start moves the stack there).
    res = private_stack.cli("env", env={**bare, "SOCIETY_KAFKA_PORT": str(k + 10)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{k + 10}\n")
    assert f"127.0.0.1:{p}/society\n" in res.stdout  # the other one still from the state dir
    monkeypatch.delenv("SOCIETY_KAFKA_PORT", raising=False)
    monkeypatch.delenv("SOCIETY_PG_PORT", raising=False)
    here = LocalStack(private_stack.state_dir)
    assert (here.kafka_port, here.pg_port) == (k, p)


def test_the_ports_file(tmp_path: Path) -> None:
    assert recorded(tmp_path) == {}
    record(tmp_path, "postgres", 21500)
    record(tmp_path, "kafka", 21000)
    record(tmp_path, "kafka", 21002)
    assert (tmp_path / "ports").read_text().splitlines()[1:] == ["kafka=21002", "postgres=21500"]
    assert recorded(tmp_path) == {"kafka": 21002, "postgres": 21500}
    assert list(tmp_path.iterdir()) == [tmp_path / "ports"]  # no temporary file left
    (tmp_path / "ports").write_text("kafka=x\nother=1\n")
    assert recorded(tmp_path) == {}
