"""``society-ingest export``: a run out of PostgreSQL, and back in through backfill, exactly."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from consumers.topics import admin_client, all_topics, create_topics
from support.backfill_helpers import load_everything, rows_of_run_differ, society_ingest
from support.db import clone_database, drop_database
from support.pipeline import producer

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
                              amount=-12.75, balance_after=0.0, counterparty_id="acct_1", reference_id="loan_1")
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
            "banking_transactions": 1, "simulation_events": 5}


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
