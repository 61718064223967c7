"""society-ingest replay: a run, a time range or offset ranges back from Kafka, beside or into the live tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumers import dlq
from consumers.migrations import create_schema, in_schema
from consumers.replay import REPLAY_LOCK_ID, OffsetRange, Replay, Selection, replay_worker_id
from consumers.table_specs import SPECS
from producers import tables
from support.db import count
from support.pipeline import WAIT_TIMEOUT_S, drain, producer, wait_for, worker_settings

pytestmark = pytest.mark.integration

RUN_COLUMN = {t: tables.DECLARATIONS[t].run_column for t in tables.TABLES}


def _record_run(services, prefix: str, agents: int = 4, steps: int = 3):
    """A small society run touching all six tables; returns its id and records per table."""
    p = producer(services.bootstrap, prefix)
    run_id = p.start_run({"agents": agents})
    for a in range(agents):
        p.record_agent(f"agent_{a}", persona=f"persona {a}", agent_type="farmer", step=0)
    for step in range(steps):
        for a in range(agents):
            p.record_memory(f"agent_{a}", f"memory of {a} at {step}", step, importance=0.5, tags=["x", str(step)])
            p.record_event("WORKED", step, agent_id_primary=f"agent_{a}", details={"step": step})
        p.record_market_transaction(f"tx{step}", step, market_id="market_food", resource_type="food",
                                    buyer_id="agent_0", seller_id="agent_1", quantity=2.0, price_per_unit=1.5,
                                    total_cost=3.0)
        p.record_bank_transaction(f"bank{step}", step, account_id="acct_0", agent_id="agent_0",
                                  transaction_type="deposit", amount=10.0, balance_after=10.0 * (step + 1))
    p.end_run("completed")
    p.close()
    return run_id


def _cli(services, database_url, prefix, *args, check=True):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": database_url}
    ran = subprocess.run([sys.executable, "-m", "consumers.cli", "replay", "--topic-prefix", prefix, "--json", *args],
                         env=env, capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    if check:
        assert ran.returncode == 0, ran.stderr
    return ran.returncode, (json.loads(ran.stdout) if ran.stdout.strip() else None), ran.stderr


def _q(schema: str) -> str:
    return f'"{schema}"'


def _rows(database_url, schema, table, run_id=None):
    cols = ", ".join(SPECS[table].column_names)
    where = "" if run_id is None else f" WHERE {RUN_COLUMN[table]} = %s"
    with psycopg.connect(database_url) as conn:
        return conn.execute(f"SELECT {cols} FROM {_q(schema)}.{table}{where}", () if run_id is None else (run_id,)).fetchall()


def _except_both_ways(database_url, table, run_id, schema):
    """Rows of `run_id` in the live table and not in `schema`'s, and the other way round (SQL EXCEPT)."""
    cols = ", ".join(SPECS[table].column_names)
    run = RUN_COLUMN[table]
    with psycopg.connect(database_url) as conn:
        live_only = conn.execute(
            f"SELECT {cols} FROM public.{table} WHERE {run} = %s EXCEPT SELECT {cols} FROM {_q(schema)}.{table}", (run_id,)
        ).fetchall()
        shadow_only = conn.execute(
            f"SELECT {cols} FROM {_q(schema)}.{table} EXCEPT SELECT {cols} FROM public.{table} WHERE {run} = %s", (run_id,)
        ).fetchall()
    return live_only, shadow_only


def _stored_offsets(database_url, group):
    with psycopg.connect(database_url) as conn:
        return sorted(conn.execute(
            "SELECT topic, kafka_partition, next_offset, updated_at FROM ingest_offsets WHERE consumer_group = %s",
            (group,)).fetchall())


def _kafka_committed(bootstrap, prefix, group):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(tables.topic_for(prefix, t), p) for t in tables.TABLES for p in range(3)]
        return sorted((tp.topic, tp.partition, tp.offset) for tp in c.committed(tps, timeout=30))
    finally:
        c.close()


def _messages(bootstrap, topic):
    """Every message of `topic` as (partition, offset, timestamp ms, decoded record)."""
    from producers.codec import AvroCodec

    codec = AvroCodec()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    found = []
    try:
        parts = sorted(c.list_topics(topic, timeout=30).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
        pending = {p for p in parts if ends[p] > 0}
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            for m in c.consume(500, timeout=1):
                if m.error() is not None:
                    continue
                found.append((m.partition(), m.offset(), m.timestamp()[1], codec.decode(m.value()).record))
                if m.offset() + 1 >= ends[m.partition()]:
                    pending.discard(m.partition())
        assert not pending, f"could not read all of {topic}"
    finally:
        c.close()
    return found


def test_a_run_replayed_into_a_shadow_schema_equals_the_live_tables(services, database_url, topic_prefix):
    wanted = _record_run(services, topic_prefix)
    other = _record_run(services, topic_prefix, agents=2, steps=2)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    drain(settings, lambda: count(database_url, "simulation_events") == 12 + 4, "both runs")
    live_offsets = _stored_offsets(database_url, settings.group_id)
    live_committed = _kafka_committed(services.bootstrap, topic_prefix, settings.group_id)
    assert live_offsets and any(o >= 0 for _, _, o in live_committed)

    _, summary, _ = _cli(services, database_url, topic_prefix, "--run", str(wanted), "--target-schema", "shadow")
    assert summary["finished"] and summary["target_schema"] == "shadow"
    for table in tables.TABLES:
        live_only, shadow_only = _except_both_ways(database_url, table, wanted, "shadow")
        assert (live_only, shadow_only) == ([], []), table
        assert _rows(database_url, "shadow", table), f"nothing replayed into shadow.{table}"
    # Only the chosen run: the other run's records were skipped.
    assert not _rows(database_url, "shadow", "agent_memories", other)
    assert summary["tables"]["agent_memories"]["selected"] == 12
    assert summary["tables"]["agent_memories"]["scanned"] == 12 + 4

    # Into the live tables: no row added, nothing stored as a conflict, all counted as duplicates.
    before = {t: count(database_url, t) for t in tables.TABLES}
    _, again, _ = _cli(services, database_url, topic_prefix, "--run", str(wanted))
    assert {t: count(database_url, t) for t in tables.TABLES} == before
    assert count(database_url, "ingest_conflicts") == 0 and again["conflicts"] == 0
    for table in ("agent_memories", "simulation_events", "market_transactions", "banking_transactions", "agents"):
        t = again["tables"][table]
        assert (t["loaded"], t["duplicates"]) == (0, t["selected"]), table
    # The live group's offsets, in PostgreSQL and in Kafka, did not move.
    assert _stored_offsets(database_url, settings.group_id) == live_offsets
    assert _kafka_committed(services.bootstrap, topic_prefix, settings.group_id) == live_committed


def _wait_past(ms: int) -> int:
    """Wait until the clock is past `ms` (milliseconds since the epoch); return the time then."""
    wait_for(lambda: time.time_ns() // 1_000_000 > ms + 1, "the clock to move on", interval=0.001)
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def test_replay_by_time_range_loads_exactly_the_records_sent_in_it(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    marks = []
    for phase in range(3):
        for i in range(10):
            p.record_memory(f"agent_{i % 4}", f"phase {phase} memory {i}", phase)
        p.flush()
        marks.append(_wait_past(time.time_ns() // 1_000_000))
    p.close()
    since, until = marks[0], marks[1]
    sent = _messages(services.bootstrap, tables.topic_for(topic_prefix, "agent_memories"))
    expected = {str(r["memory_id"]) for _, _, ts, r in sent if since <= ts < until}
    assert len(expected) == 10  # the middle phase, by the broker's own timestamps

    _, summary, _ = _cli(services, database_url, topic_prefix, "--table", "agent_memories",
                         "--since", _iso(since), "--until", _iso(until), "--target-schema", "window")
    loaded = {str(r[0]) for r in _rows(database_url, "window", "agent_memories")}
    assert loaded == expected
    assert summary["tables"]["agent_memories"]["loaded"] == 10


def test_replay_by_offset_range_loads_exactly_those_offsets(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    for i in range(30):
        p.record_memory("agent_0", f"memory {i}", i)  # one agent: one partition
    p.close()
    sent = _messages(services.bootstrap, tables.topic_for(topic_prefix, "agent_memories"))
    partition = sent[0][0]
    expected = {str(r["memory_id"]) for part, off, _, r in sent if part == partition and 5 <= off < 12}
    assert len(expected) == 7

    _, summary, _ = _cli(services, database_url, topic_prefix, "--offsets", f"agent_memories:{partition}:5-12",
                         "--target-schema", "slice")
    assert {str(r[0]) for r in _rows(database_url, "slice", "agent_memories")} == expected
    assert [(q["partition"], q["start"], q["end"]) for q in summary["partitions"]] == [(partition, 5, 12)]

    code, _, err = _cli(services, database_url, topic_prefix, "--offsets", "agent_memories:7:0-", check=False)
    assert code == 2 and "no partition 7" in err


def test_dry_run_counts_per_table_and_writes_nothing(services, database_url, topic_prefix):
    run_id = _record_run(services, topic_prefix)
    _, summary, _ = _cli(services, database_url, topic_prefix, "--run", str(run_id), "--dry-run",
                         "--target-schema", "never")
    assert summary["dry_run"] and summary["finished"]
    assert {t: c["valid"] for t, c in summary["tables"].items()} == {
        "simulation_runs": 2, "agents": 4, "agent_memories": 12, "market_transactions": 3,
        "banking_transactions": 3, "simulation_events": 12}
    assert all(count(database_url, t) == 0 for t in tables.TABLES)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'never'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ingest_offsets").fetchone()[0] == 0


def test_a_range_kafka_no_longer_holds_is_reported_with_how_much_is_gone(services, database_url, topic_prefix):
    run_id = _record_run(services, topic_prefix)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    drain(settings, lambda: count(database_url, "simulation_runs") == 1
          and count(database_url, "agent_memories") == 12, "the run")
    topic = tables.topic_for(topic_prefix, "agent_memories")
    sent = _messages(services.bootstrap, topic)
    partition = max({p for p, *_ in sent}, key=lambda q: sum(1 for p, *_ in sent if p == q))
    held = sum(1 for p, *_ in sent if p == partition)
    # Retention, made to happen now: the first two records of that partition are deleted.
    admin = AdminClient({"bootstrap.servers": services.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, partition, 2)]).values():
        future.result(timeout=30)

    _, summary, err = _cli(services, database_url, topic_prefix, "--run", str(run_id), "--target-schema", "after")
    gone = [w for w in summary["warnings"] if f"{topic}[{partition}]" in w]
    assert gone and "2 record(s) deleted by retention" in gone[0] and "no longer in Kafka" in err
    assert any("agent_memories: Kafka held 10 of the 12" in w for w in summary["warnings"])
    assert summary["tables"]["agent_memories"]["loaded"] == 10 and held >= 2

    code, _, err = _cli(services, database_url, topic_prefix, "--offsets", f"agent_memories:{partition}:0-2",
                        "--dry-run")
    assert code == 0 and "offsets 0..1 of the requested range are no longer in Kafka" in err


def test_an_interrupted_replay_resumes_where_it_stopped_without_duplicates(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    for i in range(3000):
        p.record_memory(f"agent_{i % 7}", f"memory {i}", i // 7)
    p.close()
    target = in_schema(database_url, "resumed")
    create_schema(database_url, "resumed")
    selection = Selection(tables=("agent_memories",))
    settings = worker_settings(services.bootstrap, target, topic_prefix, tables=("agent_memories",),
                               group_id=selection.group(topic_prefix, "resumed"), worker_id=replay_worker_id(),
                               max_batch_rows=200, linger_ms=50, poll_batch=100,
                               consumer_extra={"enable.partition.eof": True})
    first: list[Replay] = []

    def stop_after_some(done: int) -> None:
        first[0].stop()  # after the first messages read: the rest is left for the resumed replay

    first.append(Replay(settings, selection, target_schema="resumed", on_progress=stop_after_some))
    result: list = []
    thread = threading.Thread(target=lambda: result.append(first[0].run()))
    thread.start()
    thread.join(WAIT_TIMEOUT_S)
    assert not thread.is_alive() and result
    stopped = result[0]
    assert not stopped.finished
    landed = count(database_url, "resumed.agent_memories")
    assert 0 < landed < 3000

    resumed = Replay(settings, selection, resume=True, target_schema="resumed").run()
    assert resumed.finished and resumed.resumed_from >= landed
    assert resumed.tables["agent_memories"].duplicates == 0
    assert count(database_url, "resumed.agent_memories") == 3000
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(DISTINCT memory_id) FROM resumed.agent_memories").fetchone()[0] == 3000


def test_bad_records_go_to_the_dead_letter_topic_as_in_the_worker(services, database_url, topic_prefix):
    from confluent_kafka import Producer

    run_id = _record_run(services, topic_prefix, agents=1, steps=1)
    raw = Producer({"bootstrap.servers": services.bootstrap})
    raw.produce(tables.topic_for(topic_prefix, "agent_memories"), value=b"\x00not avro", key=f"{run_id}/agent_0")
    raw.flush(30)
    _, summary, _ = _cli(services, database_url, topic_prefix, "--run", str(run_id), "--target-schema", "dead")
    assert summary["tables"]["agent_memories"]["dead_lettered"] == 1
    assert summary["tables"]["agent_memories"]["loaded"] == 1
    c = Consumer({"bootstrap.servers": services.bootstrap, "group.id": "dlq-reader", "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(tables.dlq_topic(topic_prefix), p, 0) for p in range(3)])
    seen = []
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not seen and time.monotonic() < deadline:
        seen = [m for m in c.consume(10, timeout=1) if m.error() is None]
    c.close()
    assert len(seen) == 1
    headers = dlq.parse_headers(seen[0].headers())
    assert headers[dlq.H_ERROR_CLASS] == "MalformedRecordError" and headers[dlq.H_WORKER].startswith("replay@")


def _memory_at(run_id, i, ts_ms):
    """An encoded memory record and its Kafka timestamp, produced as-is (a producer with its own clock)."""
    from producers.codec import AvroCodec
    from producers.models import validate_record

    fields = validate_record("agent_memories", {
        "memory_id": uuid.uuid4(), "simulation_run_id": run_id, "agent_id_str": "agent_0", "step_timestamp": i,
        "real_timestamp": datetime.fromtimestamp(ts_ms / 1000, timezone.utc), "content": f"memory {i}"})
    return fields["memory_id"], AvroCodec().encode("agent_memories", fields)


def test_until_finds_records_whose_timestamps_are_out_of_log_order(services, database_url, topic_prefix):
    from confluent_kafka import Producer

    run_id, base = uuid.uuid4(), time.time_ns() // 1_000_000 - 60_000
    raw = Producer({"bootstrap.servers": services.bootstrap})
    sent = {}
    for i, offset_ms in enumerate((0, 3000, 1000, 2500)):  # two clocks: the third is older than the second
        memory_id, value = _memory_at(run_id, i, base + offset_ms)
        sent[offset_ms] = str(memory_id)
        raw.produce(tables.topic_for(topic_prefix, "agent_memories"), value, key=f"{run_id}/agent_0",
                    timestamp=base + offset_ms)
    raw.flush(30)
    _, summary, _ = _cli(services, database_url, topic_prefix, "--table", "agent_memories", "--since", _iso(base),
                         "--until", _iso(base + 2000), "--target-schema", "skew")
    assert {str(r[0]) for r in _rows(database_url, "skew", "agent_memories")} == {sent[0], sent[1000]}


def test_one_replay_of_a_selection_at_a_time_and_conflicts_kept_once(services, database_url, topic_prefix):
    run_id = _record_run(services, topic_prefix, agents=2, steps=1)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    drain(settings, lambda: count(database_url, "agent_memories") == 2, "the run")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE agent_memories SET content = 'tampered'")
    selection = Selection(run_id=run_id)
    group = selection.group(topic_prefix, None)
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (REPLAY_LOCK_ID, group))
        code, _, err = _cli(services, database_url, topic_prefix, "--run", str(run_id), check=False)
    assert code == 1 and "another replay of the same selection" in err
    for _ in range(2):
        _, summary, _ = _cli(services, database_url, topic_prefix, "--run", str(run_id))
        assert summary["finished"] and summary["conflicts"] == 2
    assert count(database_url, "ingest_conflicts") == 2  # kept once, however often replayed
    with psycopg.connect(database_url) as conn:  # a finished replay leaves no offsets behind
        assert conn.execute("SELECT count(*) FROM ingest_offsets WHERE consumer_group = %s",
                            (group,)).fetchone()[0] == 0


@pytest.mark.parametrize(("args", "says"), [
    (("-X", "group.id=society-ingest"), "group.id is the replay's own setting"),
    (("--target-schema", "public"), "leave --target-schema out"),
    (("--since", "1969-12-31T23:59:59.999Z"), "before 1970"),
    (("--since", "1000000000d"), "before 1970"),
    (("--dry-run", "--resume"), "nothing to resume"),
])
def test_options_that_would_touch_live_offsets_or_mean_nothing_are_refused(services, database_url, topic_prefix,
                                                                            args, says):
    code, _, err = _cli(services, database_url, topic_prefix, *args, check=False)
    assert code == 2 and says in " ".join(err.replace("│", " ").split()), err


def test_an_empty_selection_says_so(services, database_url, topic_prefix):
    _record_run(services, topic_prefix, agents=1, steps=1)
    _, summary, err = _cli(services, database_url, topic_prefix, "--run", str(uuid.uuid4()), "--dry-run")
    assert any("no record of run" in w for w in summary["warnings"]) and "no record of run" in err


def test_in_json_log_format_every_stderr_line_is_json(services, database_url, topic_prefix):
    run_id = _record_run(services, topic_prefix, agents=1, steps=1)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": database_url}
    ran = subprocess.run([sys.executable, "-m", "consumers.cli", "--log-format", "json", "replay", "--topic-prefix",
                          topic_prefix, "--run", str(run_id), "--target-schema", "logged", "--json"],
                         env=env, capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stderr.splitlines() if line.strip()]
    assert any(line["message"].startswith("schema logged: applied ") for line in lines), lines
