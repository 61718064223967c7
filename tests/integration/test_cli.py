"""The command line end to end: topics, a worker, simulate, status and dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from confluent_kafka import Producer

from producers import tables
from support.pipeline import WAIT_TIMEOUT_S, wait_for

pytestmark = pytest.mark.integration


def cli(services, database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], env=env, capture_output=True, text=True,
                          timeout=WAIT_TIMEOUT_S * 2)


def test_topics_create_is_idempotent(services, database_url):
    prefix = "cli" + os.urandom(4).hex()
    first = cli(services, database_url, "topics", "create", "--topic-prefix", prefix, "--partitions", "2", "--json")
    again = cli(services, database_url, "topics", "create", "--topic-prefix", prefix, "--partitions", "2", "--json")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    created, existing = json.loads(first.stdout), json.loads(again.stdout)
    assert [t["name"] for t in created] == [f"{prefix}.{t}" for t in tables.TABLES] + [f"{prefix}.dlq"]
    assert all(t["created"] and t["partitions"] == 2 and t["replication"] == 1 for t in created)
    assert all(t["retention_ms"] == str(30 * 24 * 3600 * 1000) for t in created)
    assert not any(t["created"] for t in existing)
    listed = json.loads(cli(services, database_url, "topics", "list", "--topic-prefix", prefix, "--json").stdout)
    assert [t["name"] for t in listed] == [t["name"] for t in created]


def test_simulate_consume_status_and_dlq(services, database_url, topic_prefix, spawn):
    group = f"{topic_prefix}-g"
    worker = spawn(database_url, topic_prefix, group)
    sim = cli(services, database_url, "simulate", "--agents", "30", "--steps", "4", "--topic-prefix", topic_prefix,
              "--wait-loaded", "90", "--json")
    assert sim.returncode == 0, sim.stderr
    report = json.loads(sim.stdout)
    assert report["loaded"] == report["recorded"]
    assert report["recorded"]["agent_memories"] == 120 and report["recorded"]["agents"] == 30

    # One poison record, then status and the dead-letter commands.
    raw = Producer({"bootstrap.servers": services.bootstrap})
    raw.produce(tables.topic_for(topic_prefix, "agent_memories"), b"not avro", key=b"poison")
    assert raw.flush(30) == 0

    def dead_letters() -> list:
        out = cli(services, database_url, "dlq", "list", "--topic-prefix", topic_prefix, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert wait_for(dead_letters, "the dead letter") == [
        {"table": "agent_memories", "error_class": "MalformedRecordError", "count": 1}
    ]
    def status() -> dict:
        out = cli(services, database_url, "status", "--topic-prefix", topic_prefix, "--group", group, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # Dead letters are published just before their batch commits: wait for the commit.
    def caught_up() -> dict | None:
        state = status()
        return state if sum(p["lag"] for p in state["lag"]) == 0 else None

    state = wait_for(caught_up, "lag 0")
    assert state["rows"]["agent_memories"] == 120
    (me,) = state["workers"]
    # The run row is written once or twice (its start and end states may land in separate batches).
    assert 0 <= me["rows_loaded"] - sum(report["recorded"].values()) <= 1
    assert me["dead_lettered"] == 1 and me["batches"] >= 1 and me["seconds_since_commit"] < 120
    shown = json.loads(cli(services, database_url, "dlq", "show", "--topic-prefix", topic_prefix, "--json").stdout)
    assert shown[0]["error_class"] == "MalformedRecordError" and "undecodable" in shown[0]["record"]
    dry = cli(services, database_url, "dlq", "redrive", "--topic-prefix", topic_prefix, "--dry-run", "--json")
    assert json.loads(dry.stdout) == {"selected": 1, "already_redriven": 0, "sent": 0, "by_reference": 0,
                                      "dry_run": True}
    stats = worker.terminate()
    assert stats["dead_lettered"] == 1


def test_cli_errors_are_one_clear_line(services, database_url):
    out = cli(services, database_url, "consume", "--tables", "nope")
    assert out.returncode != 0 and "unknown table" in out.stderr
