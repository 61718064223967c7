"""``society-ingest export``: a run out of PostgreSQL, and back in through backfill, exactly."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from consumers.topics import admin_client, all_topics, create_topics
from support.backfill_helpers import cli_env, load_everything, rows_of_run_differ, society_ingest
from support.db import clone_database, drop_database, fetch
from support.pipeline import WAIT_TIMEOUT_S, producer, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def destination(services, template_db) -> Iterator[tuple[str, str]]:
    """A second fresh database and topic prefix: (database url, prefix), removed after the test."""
    url, name = clone_database(services.database_url, template_db)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    admin = admin_client(services.bootstrap)
    create_topics(admin, prefix, services.bootstrap, partitions=3)
    yield url, prefix
    for future in admin.delete_topics(all_topics(prefix), operation_timeout=10, request_timeout=10).values():
        future.result(timeout=15)
    drop_database(services.database_url, name)


def record_awkward_run(bootstrap: str, prefix: str) -> uuid.UUID:
    """A run whose values test every column type's exactness: jsonb digits and kinds, REALs, times, arrays, text."""
    p = producer(bootstrap, prefix)
    run_id = p.start_run('{"pi": 3.14159265358979323846264, "big": 12345678901234567890123, "s": "\\u00e9\\ud83d\\ude00",'
                         ' "a": [1, 2.50, null, true], "e": 1e-7}', notes='line one\nline two\t"quoted" \\ back')
    p.record_agent("agent_0", persona="ünïcode 😀 'single' \"double\"", agent_type="farmer", step=0)
    p.record_agent("agent_1")
    local = timezone(timedelta(hours=-7, minutes=-30))
    p.record_memory("agent_0", "plain", 0, importance=0.1, tags=["a", "b"],
                    timestamp=datetime(2024, 5, 1, 1, 2, 3, 456789, tzinfo=local))
    p.record_memory("agent_0", "no tags, no importance", 0)
    p.record_memory("agent_1", "empty tags", 1, importance=1 / 3, tags=[], related_agent_id="agent_0")
    p.record_memory("agent_9", "an agent never recorded: a stub", 2, importance=1.0,
                    tags=["x,y", "{braces}", "NULL", "", 'q"uote'])
    p.record_market_transaction("mt_1", 1, market_id="market_food", resource_type="food", buyer_id="agent_0",
                                seller_id="agent_1", quantity=0.1, price_per_unit=3.4e38, total_cost=1e-7,
                                buy_order_id="b1")
    p.record_bank_transaction("bt_1", 1, account_id="acct_0", agent_id="agent_0", transaction_type="withdrawal",
                              amount=-12.75, balance_after=-0.0, counterparty_id="acct_1", reference_id="loan_1")
    # REAL's largest values as PostgreSQL prints them (shortest digits: above FLT_MAX as doubles).
    p.record_bank_transaction("bt_2", 2, account_id="acct_0", agent_id="agent_0", transaction_type="deposit",
                              amount=3.4028235e38, balance_after=-3.4028235e38)
    p.record_event("E1", 0, agent_id_primary="agent_0",
                   details={"nested": {"deep": [1, {"x": None}]}, "big": 2**70, "f": 0.1})
    p.record_event("E2", 0, details='"just a jsonb string"')
    p.record_event("E3", 1, details="null")
    p.record_event("E4", 1, description="no details")
    p.record_event("E5", 2, agent_id_primary="agent_1", details='{"pi": 3.14159265358979323846264, "z": 1.50}')
    p.end_run("completed", notes="ended")
    p.close()
    return run_id


EXPORTED = {"simulation_runs": 1, "agents": 2, "agent_memories": 4, "market_transactions": 1,
            "banking_transactions": 2, "simulation_events": 5}
#: REALs whose text must come back the same: equality (-0 = 0) and EXCEPT ALL cannot tell the sign of zero.
REAL_TEXTS = "SELECT transaction_sim_id, amount::text, balance_after::text FROM banking_transactions ORDER BY 1"


def test_export_then_backfill_into_a_fresh_database_reproduces_the_run_exactly(
        services, database_url, topic_prefix, destination, tmp_path):
    run_id = record_awkward_run(services.bootstrap, topic_prefix)
    load_everything(services, database_url, topic_prefix)

    out = tmp_path / "run.ndjson.gz"
    exported = society_ingest(services, "export", "--run", str(run_id), "--output", str(out), "--json",
                              database_url=database_url)
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout)
    assert summary["rows"] == EXPORTED and summary["stubs_skipped"] == {"agents": 1}
    lines = [json.loads(x) for x in gzip.decompress(out.read_bytes()).decode().splitlines()]
    assert [x["table"] for x in lines[:3]] == ["simulation_runs", "agents", "agents"]  # parents first
    assert not any("event_id" in x or "transaction_id_pk" in x for x in lines)

    dst_url, dst_prefix = destination
    backfilled = society_ingest(services, "backfill", str(out), "--topic-prefix", dst_prefix, "--json")
    assert backfilled.returncode == 0, backfilled.stderr
    assert json.loads(backfilled.stdout)["sent"] == sum(EXPORTED.values())
    stats = load_everything(services, dst_url, dst_prefix)
    assert stats.dead_lettered == 0

    differ = rows_of_run_differ(database_url, dst_url, run_id)
    # Every column of every row, both ways; the stub agent is recreated the same by the worker.
    assert differ == {t: (n + (t == "agents"), 0, 0) for t, n in EXPORTED.items()}
    reals = [("bt_1", "-12.75", "-0"), ("bt_2", "3.4028235e+38", "-3.4028235e+38")]
    assert fetch(database_url, REAL_TEXTS) == fetch(dst_url, REAL_TEXTS) == reals


def test_export_to_stdout_of_some_tables_with_the_summary_on_stderr(services, database_url, topic_prefix):
    run_id = record_awkward_run(services.bootstrap, topic_prefix)
    load_everything(services, database_url, topic_prefix)
    out = society_ingest(services, "export", "--run", str(run_id), "--tables", "simulation_events",
                         "--tables", "agents", database_url=database_url)
    assert out.returncode == 0, out.stderr
    tables_out = [json.loads(x)["table"] for x in out.stdout.splitlines()]
    assert tables_out == ["agents"] * 2 + ["simulation_events"] * 5
    assert f"exported 7 rows of run {run_id} to -" in out.stderr


def test_export_of_an_unknown_run_exits_1_with_one_line_and_writes_no_file(services, database_url, tmp_path):
    run_id = uuid.uuid4()
    out = society_ingest(services, "export", "--run", str(run_id), "--output", str(tmp_path / "x.ndjson"),
                         database_url=database_url)
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: run {run_id} is not in PostgreSQL at postgres@")
    assert len(out.stderr.strip().splitlines()) == 1 and "society-local" not in out.stderr
    assert list(tmp_path.iterdir()) == []


@contextmanager
def events_locked(database_url: str) -> Iterator[None]:
    """Hold simulation_events in ACCESS EXCLUSIVE mode: an export writes the parents, then waits there."""
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE simulation_events IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def waiting_on_the_lock(database_url: str) -> bool:
    return fetch(database_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND wait_event_type = 'Lock'")[0][0] > 0


def spawn_export(services: Any, database_url: str, *args: str, **popen: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "consumers.cli", "export", *args],
                            env=cli_env(services, database_url), text=True, **popen)


# SIGINT ignored at start: a shell without job control (a script, CI) starts background jobs so.
@pytest.mark.parametrize(("sig", "sigint_at_start"), [
    (signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.SIG_DFL), (signal.SIGINT, signal.SIG_IGN),
], ids=["SIGTERM", "SIGINT", "SIGINT-from-a-background-job"])
def test_an_interrupted_export_removes_its_partial_file_and_says_so_in_one_line(
        services, database_url, topic_prefix, tmp_path, sig, sigint_at_start):
    run_id = record_awkward_run(services.bootstrap, topic_prefix)
    load_everything(services, database_url, topic_prefix)
    out = tmp_path / "run.ndjson"
    with events_locked(database_url):
        proc = spawn_export(services, database_url, "--run", str(run_id), "-o", str(out), stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint_at_start))
        try:
            wait_for(lambda: waiting_on_the_lock(database_url) or proc.poll() is not None, "the export waiting")
            assert [p.name for p in tmp_path.iterdir()][0].endswith(".partial")
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=WAIT_TIMEOUT_S)
        finally:
            proc.kill()
    assert proc.returncode == 130
    assert stderr.strip() == f"error: interrupted: {out} was not written (the partial file is removed)"
    assert list(tmp_path.iterdir()) == []


def test_an_export_whose_reader_goes_away_stops_quietly(services, database_url, topic_prefix):
    run_id = record_awkward_run(services.bootstrap, topic_prefix)
    load_everything(services, database_url, topic_prefix)
    with events_locked(database_url):
        proc = spawn_export(services, database_url, "--run", str(run_id), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        try:
            wait_for(lambda: waiting_on_the_lock(database_url) or proc.poll() is not None, "the export waiting")
            proc.stdout.close()  # `export … | head -1`: the reader is gone before the events are written
        except BaseException:
            proc.kill()
            raise
    try:
        assert proc.wait(WAIT_TIMEOUT_S) == 141
        assert proc.stderr.read() == ""
    finally:
        proc.kill()
        proc.stderr.close()


def test_an_unusable_output_is_refused_before_the_export_starts(services, tmp_path):
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"  # never asked: the output is checked first
    (tmp_path / "file").write_text("x")
    for output, reason in [(tmp_path, "it is a folder"), (tmp_path / "file" / "x.ndjson", f"{tmp_path / 'file'} is "
                                                                                         "not a folder"),
                           (tmp_path / "no" / "x.ndjson", f"the folder {tmp_path / 'no'} does not exist")]:
        out = society_ingest(services, "export", "--run", str(uuid.uuid4()), "-o", str(output),
                             database_url=unreachable)
        assert out.returncode == 1 and out.stderr.strip() == f"error: cannot write {output}: {reason}" + (
            f"; give a file name, e.g. {output / 'run.ndjson.gz'}" if output == tmp_path else ""), out.stderr


def test_export_to_stdout_puts_one_summary_line_on_stderr(services, database_url, topic_prefix):
    run_id = record_awkward_run(services.bootstrap, topic_prefix)
    load_everything(services, database_url, topic_prefix)
    for extra in ([], ["--json"]):
        out = society_ingest(services, "export", "--run", str(run_id), *extra, database_url=database_url)
        assert out.returncode == 0, out.stderr
        [line] = out.stderr.splitlines()
        if extra:
            assert json.loads(line)["total"] == len(out.stdout.splitlines())
        else:
            assert line.startswith(f"exported {len(out.stdout.splitlines())} rows of run {run_id} to -")
