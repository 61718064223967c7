"""``society-ingest backfill`` end to end: real Kafka, real worker, real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from datetime import timedelta
from typing import Any

import pytest

from consumers.backfill import GENERATED_COLUMNS, CheckpointLock
from consumers.topics import admin_client
from producers import tables
from producers.columns import COLUMNS
from support.backfill_helpers import (
    cli_env, load_everything, message_keys, messages, society_ingest, write_ndjson,
)
from support.db import count, fetch
from support.pipeline import WAIT_TIMEOUT_S, drain, wait_for, worker_settings

pytestmark = pytest.mark.integration

RUN = str(uuid.UUID("0b3f6a52-3d0b-4b7e-9a43-5d1f0c2b7e11"))


def memory(i: int, **extra: Any) -> dict[str, Any]:
    return {"table": "agent_memories", "simulation_run_id": RUN, "agent_id_str": f"agent_{i % 5}",
            "step_timestamp": i // 5, "real_timestamp": "2024-05-01T12:00:00.000001+02:00",
            "content": f"memory {i}", "importance": 0.5, "tags": ["trade", "bread"], **extra}


def a_run_in_lines() -> list[Any]:
    """A small run of every table, as a user's dump would have it (surrogate keys included)."""
    lines: list[Any] = [{"table": "simulation_runs", "run_id": RUN, "start_time": "2024-05-01T10:00:00+00:00",
                         "status": "completed", "config_snapshot": {"agents": 5}}]
    lines += [{"table": "agents", "creation_run_id": RUN, "agent_id_str": f"agent_{i}", "persona": "farmer"}
              for i in range(5)]
    lines += [memory(i, memory_id=str(uuid.uuid5(uuid.NAMESPACE_OID, str(i)))) if i % 2 else memory(i)
              for i in range(20)]
    lines += [{"table": "market_transactions", "transaction_id_pk": 100 + i, "transaction_sim_id": f"mt_{i}",
               "simulation_run_id": RUN, "step_timestamp": i, "market_id": "market_food", "resource_type": "food",
               "buyer_agent_id": "agent_1", "seller_agent_id": "agent_2", "quantity": 2, "price_per_unit": 1.25,
               "total_cost": 2.5} for i in range(5)]
    lines += [{"table": "simulation_events", "event_id": i, "simulation_run_id": RUN, "step_timestamp": i,
               "event_type": "AGENT_MOVED", "agent_id_primary": f"agent_{i % 5}", "details": {"to": [i, i]}}
              for i in range(9)]
    return lines


def loaded(database_url: str) -> dict[str, int]:
    return {t: count(database_url, t) for t in tables.TABLES}


def test_good_lines_land_and_bad_lines_are_reported_with_their_line_numbers(
        services, database_url, topic_prefix, tmp_path):
    lines = a_run_in_lines()
    bad = {8: "importance", 17: "<line>", 26: "colour", 33: "table"}  # line number -> field named
    lines[7] = {**lines[7], "importance": 2}
    lines[16] = '{"table": "agent_memories", "content": "cut off'
    lines[25] = {**lines[25], "colour": "red"}
    lines[32] = {**lines[32], "table": "people"}
    lines.insert(35, "")  # a blank line: skipped, not bad
    good = Counter(o["table"] for i, o in enumerate(lines, 1) if isinstance(o, dict) and i not in bad)
    path = write_ndjson(tmp_path / "dump.ndjson", lines)
    args = ("backfill", str(path), "--topic-prefix", topic_prefix, "--batch-lines", "5", "--json")

    # Without --skip-bad: the first batch with a bad line stops the run before any of it is sent.
    stopped = society_ingest(services, *args)
    assert stopped.returncode == 1, stopped.stderr
    summary = json.loads(stopped.stdout)
    assert summary["state"] == "stopped" and summary["sent"] == 5
    assert [(e["line"], e["field"]) for e in summary["errors"]] == [(8, "importance")]
    assert f"{path}:8: agent_memories.importance: Input should be less than or equal to 1" in stopped.stderr
    assert f"bad line(s) in {path}, the first at line 8: nothing of their batch was sent (lines 1–5 are delivered)" \
        in stopped.stderr
    assert sum(messages(services.bootstrap, topic_prefix).values()) == 5

    # With --skip-bad: resumed after line 5, every good line sent once, every bad one reported.
    done = society_ingest(services, *args, "--skip-bad")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "complete" and summary["resumed_lines"] == 5 and summary["blank_lines"] == 1
    assert summary["ignored_columns"] == {"market_transactions.transaction_id_pk": 5, "simulation_events.event_id": 8}  # line 33 is bad
    header, *report = [json.loads(x) for x in Path(summary["report"]).read_text().splitlines()]
    assert header == {"format": "society-ingest backfill report", "version": 1, "checkpoint": summary["checkpoint"]}
    assert {r["line"]: r["field"] for r in report} == bad
    assert all(r["file"] == str(path) and r["reason"] and r["raw"] for r in report)
    assert messages(services.bootstrap, topic_prefix) == {t: good[t] for t in tables.TABLES}
    # Keyed as the embedded producer keys them: run, then the entity.
    assert Counter(message_keys(services.bootstrap, topic_prefix, "agent_memories")) == Counter(
        f"{RUN}/{o['agent_id_str']}" for i, o in enumerate(lines, 1)
        if isinstance(o, dict) and o["table"] == "agent_memories" and i not in bad)

    stats = load_everything(services, database_url, topic_prefix)
    assert loaded(database_url) == {t: good[t] for t in tables.TABLES}
    assert stats.dead_lettered == 0 and sum(stats.duplicates.values()) == 0
    given = {o["memory_id"] for i, o in enumerate(lines, 1)
             if isinstance(o, dict) and "memory_id" in o and i not in bad}
    stored = {str(m) for (m,) in fetch(database_url, "SELECT memory_id FROM agent_memories")}
    assert given < stored  # ids given are kept; the others were derived
    assert fetch(database_url, "SELECT real_timestamp::text, tags FROM agent_memories LIMIT 1") == [
        ("2024-05-01 10:00:00.000001+00", ["trade", "bread"])]
    assert fetch(database_url, "SELECT details FROM simulation_events WHERE step_timestamp = 3") == [({"to": [3, 3]},)]


def test_gzip_input_is_told_by_its_bytes_and_a_finished_backfill_sends_nothing_again(
        services, database_url, topic_prefix, tmp_path):
    objs = [{k: v for k, v in memory(i).items() if k != "table"} for i in range(50)]
    path = write_ndjson(tmp_path / "memories.ndjson", objs, compress=True)  # gzip, whatever the name says
    args = ("backfill", str(path), "--table", "agent_memories", "--topic-prefix", topic_prefix, "--json")
    first = society_ingest(services, *args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["sent"] == 50
    again = society_ingest(services, *args)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["state"], summary["sent"], summary["resumed_lines"]) == ("already backfilled", 0, 50)
    people = society_ingest(services, *args[:-1])
    assert "already backfilled" in people.stdout and "nothing sent" in people.stdout
    assert messages(services.bootstrap, topic_prefix)["agent_memories"] == 50
    drain(worker_settings(services.bootstrap, database_url, topic_prefix),
          lambda: count(database_url, "agent_memories") == 50, "the memories")


def _spawn_backfill(services: Any, path: Path, prefix: str, checkpoint: Path, log: Path) -> subprocess.Popen:
    args = ["backfill", str(path), "--table", "agent_memories", "--topic-prefix", prefix,
            "--checkpoint", str(checkpoint), "--batch-lines", "300", "--json"]
    with log.open("w") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "consumers.cli", *args], env=cli_env(services),
                                stdout=out, stderr=subprocess.STDOUT)


def _lines_done(checkpoint: Path, path: Path) -> int:
    try:
        return json.loads(checkpoint.read_text())["files"][str(path)]["lines"]
    except (OSError, ValueError):  # not written yet (it is replaced whole, never seen half-written)
        return 0


def _memories_without_ids(n: int) -> list[dict[str, Any]]:
    """`n` memory lines without ids, each content three times: derived ids must count occurrences."""
    return [{k: v for k, v in memory(i % (n // 3)).items() if k != "table"} for i in range(n)]


def test_a_killed_backfill_resumed_sends_no_record_twice_beyond_one_batch_and_loads_no_duplicate(
        services, database_url, topic_prefix, tmp_path):
    n = 30_000
    path = write_ndjson(tmp_path / "memories.ndjson", _memories_without_ids(n))
    checkpoint = tmp_path / "checkpoint.json"
    proc = _spawn_backfill(services, path, topic_prefix, checkpoint, tmp_path / "first.log")
    try:
        wait_for(lambda: _lines_done(checkpoint, path) >= 3000 or proc.poll() is not None, "checkpointed progress",
                 interval=0.02)
    finally:
        proc.kill()  # SIGKILL: no flush, no last checkpoint
        proc.wait(WAIT_TIMEOUT_S)
    at_kill = _lines_done(checkpoint, path)
    assert 3000 <= at_kill < n, (at_kill, (tmp_path / "first.log").read_text())

    resumed = society_ingest(services, "backfill", str(path), "--table", "agent_memories", "--topic-prefix",
                             topic_prefix, "--checkpoint", str(checkpoint), "--batch-lines", "300", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["state"] == "complete" and summary["resumed_lines"] == at_kill
    assert summary["sent"] == n - at_kill
    in_kafka = messages(services.bootstrap, topic_prefix)["agent_memories"]
    assert n <= in_kafka <= n + 300  # at most the batch acknowledged but not yet checkpointed, again

    stats = load_everything(services, database_url, topic_prefix)
    assert fetch(database_url, "SELECT count(*), count(DISTINCT memory_id) FROM agent_memories") == [(n, n)]
    assert stats.duplicates["agent_memories"] == in_kafka - n and stats.conflicts == 0


def test_ctrl_c_delivers_the_batch_in_hand_checkpoints_it_and_says_how_to_resume(
        services, topic_prefix, tmp_path):
    n = 30_000
    path = write_ndjson(tmp_path / "memories.ndjson", _memories_without_ids(n))
    checkpoint = tmp_path / "checkpoint.json"
    log = tmp_path / "first.log"
    proc = _spawn_backfill(services, path, topic_prefix, checkpoint, log)
    try:
        wait_for(lambda: _lines_done(checkpoint, path) >= 3000 or proc.poll() is not None, "checkpointed progress",
                 interval=0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT_TIMEOUT_S) == 130, log.read_text()
    finally:
        proc.kill()
    assert "run the same command again to resume" in log.read_text()
    at_stop = _lines_done(checkpoint, path)
    assert 3000 <= at_stop < n
    # Stopped between batches: Kafka holds exactly the lines checkpointed.
    assert messages(services.bootstrap, topic_prefix)["agent_memories"] == at_stop
    resumed = society_ingest(services, "backfill", str(path), "--table", "agent_memories", "--topic-prefix",
                             topic_prefix, "--checkpoint", str(checkpoint), "--batch-lines", "300", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert messages(services.bootstrap, topic_prefix)["agent_memories"] == n


def test_backfill_checks_kafka_and_the_topics_before_reading_anything(services, tmp_path):
    path = write_ndjson(tmp_path / "x.ndjson", [memory(1)])
    out = society_ingest(services, "backfill", str(path), "--topic-prefix", "no-such-prefix-" + uuid.uuid4().hex[:6])
    assert out.returncode == 1 and "do not exist: run `society-ingest topics create" in out.stderr
    assert not list(tmp_path.glob("*.checkpoint.json"))


def test_the_generated_columns_are_exactly_those_the_tables_add_to_the_records(database_url):
    for table in tables.TABLES:
        in_db = {c for (c,) in fetch(database_url, "SELECT column_name FROM information_schema.columns "
                                                   "WHERE table_name = %s", (table,))}
        assert in_db - {c.name for c in COLUMNS[table]} == set(GENERATED_COLUMNS.get(table, ())), table


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_a_later_state_without_updated_at_wins_when_the_worker_loads_it_in_a_later_batch(
        services, database_url, topic_prefix, tmp_path):
    run_line = {"table": "simulation_runs", "run_id": RUN, "start_time": "2024-05-01T10:00:00+00:00",
                "status": "running"}
    agent = {"table": "agents", "creation_run_id": RUN, "agent_id_str": "agent_0", "persona": "farmer"}
    path = write_ndjson(tmp_path / "states.ndjson", [run_line, agent])
    args = ("backfill", str(path), "--topic-prefix", topic_prefix, "--json")
    assert society_ingest(services, *args).returncode == 0
    load_everything(services, database_url, topic_prefix)
    # The later states, appended: sent by the same backfill (same start time), loaded in a batch of their own.
    with path.open("a") as f:
        f.write(json.dumps({**run_line, "status": "completed"}) + "\n" + json.dumps({**agent, "persona": "miller"}) + "\n")
    again = society_ingest(services, *args)
    assert again.returncode == 0 and json.loads(again.stdout)["sent"] == 2, again.stderr
    stats = load_everything(services, database_url, topic_prefix)
    assert sum(stats.duplicates.values()) == 0
    assert fetch(database_url, "SELECT status FROM simulation_runs") == [("completed",)]
    assert fetch(database_url, "SELECT persona FROM agents") == [("miller",)]
    (agent_at, run_at), = fetch(database_url, "SELECT a.updated_at, r.updated_at FROM agents a, simulation_runs r")
    assert agent_at - run_at == timedelta(microseconds=1)  # lines 4 and 3 of the inputs


def test_a_checkpoint_of_another_kafka_cluster_is_refused_in_one_line(services, topic_prefix, tmp_path):
    path = write_ndjson(tmp_path / "m.ndjson", [memory(i) for i in range(3)])
    checkpoint = tmp_path / "cp.json"
    args = ("backfill", str(path), "--topic-prefix", topic_prefix, "--checkpoint", str(checkpoint))
    assert society_ingest(services, *args).returncode == 0
    state = json.loads(checkpoint.read_text())
    cluster = admin_client(services.bootstrap).list_topics(timeout=WAIT_TIMEOUT_S).cluster_id
    assert cluster and state["kafka_cluster"] == cluster
    checkpoint.write_text(json.dumps({**state, "kafka_cluster": "another-cluster"}))
    refused = _one_error_line(society_ingest(services, *args))
    assert refused == (f"error: checkpoint {checkpoint} records lines delivered to Kafka cluster another-cluster, but "
                       f"these brokers are cluster {cluster}: pass --restart to send every line to this one, or "
                       "--checkpoint for a backfill of its own")
    assert messages(services.bootstrap, topic_prefix)["agent_memories"] == 3
    assert society_ingest(services, *args, "--restart").returncode == 0
    assert messages(services.bootstrap, topic_prefix)["agent_memories"] == 6


def test_a_second_backfill_of_a_checkpoint_in_use_fails_at_once_and_sends_nothing(services, topic_prefix, tmp_path):
    path = write_ndjson(tmp_path / "m.ndjson", [memory(i) for i in range(3)])
    checkpoint = tmp_path / "cp.json"
    args = ("backfill", str(path), "--topic-prefix", topic_prefix, "--checkpoint", str(checkpoint))
    with CheckpointLock(checkpoint):  # as a backfill running in another process holds it
        refused = _one_error_line(society_ingest(services, *args))
    assert refused == (f"error: another backfill is running with the checkpoint {checkpoint} (it holds "
                       f"{checkpoint}.lock): wait until it ends, or give this one its own --checkpoint")
    assert messages(services.bootstrap, topic_prefix)["agent_memories"] == 0 and not checkpoint.exists()
    assert society_ingest(services, *args).returncode == 0


def test_skip_bad_with_no_valid_line_exits_1_saying_nothing_was_sent(services, topic_prefix, tmp_path):
    path = write_ndjson(tmp_path / "bad.ndjson", [{**memory(i), "colour": "red"} for i in range(3)])
    args = ("backfill", str(path), "--topic-prefix", topic_prefix, "--skip-bad")
    out = society_ingest(services, *args)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: no valid line: nothing sent (3 bad line(s), listed in ")
    assert sum(messages(services.bootstrap, topic_prefix).values()) == 0


def test_backfill_never_writes_an_input_and_reads_only_regular_files(services, topic_prefix, tmp_path):
    path = write_ndjson(tmp_path / "m.ndjson", [memory(1), {**memory(2), "colour": "red"}])
    before = path.read_bytes()
    base = ("backfill", str(path), "--topic-prefix", topic_prefix, "--skip-bad")
    for extra in (("--report", str(path)), ("--checkpoint", str(path), "--restart")):
        assert "which is an input file: the backfill never writes its inputs" in _one_error_line(
            society_ingest(services, *base, *extra))
    assert path.read_bytes() == before
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert _one_error_line(society_ingest(services, "backfill", str(fifo), "--topic-prefix", topic_prefix)) == (
        f"error: {fifo} is not a regular file: backfill reads regular files (it re-reads them to resume); save "
        "the lines to a file first")
    assert "is not a topic prefix" in _one_error_line(society_ingest(services, *base[:2], "--topic-prefix", "a b"))
