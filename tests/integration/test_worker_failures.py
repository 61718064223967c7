"""What the worker does when retrying cannot help, and when it must not wait forever.

Configuration failures (wrong password, missing database, privileges or tables)
stop it at once with one clear message; a dead-letter storm stops it before it
empties a topic into the DLQ; a stop request ends every wait, even during an
outage. All against the real services.
"""

from __future__ import annotations

import copy
import io
import time
import uuid

import fastavro
import psycopg
import pytest
from confluent_kafka import Producer

from consumers import dead_letters
from consumers.errors import ConfigurationError, DeadLetterLimitError
from producers import AvroCodec, tables
from producers.codec import MAGIC
from support.db import count, fetch, url_with, wrong_password_url
from support.pipeline import (
    WorkerThread, codec_lacking_newest_memory_schema, drain, producer, record_memories, wait_for, worker_settings,
)

pytestmark = pytest.mark.integration

#: A worker that fails for good must say so quickly (a hang guard, not a timing test).
FAIL_FAST_S = 20.0
SECRET = "n0t-the-Passw0rd"


def _error_of(settings) -> BaseException:
    """Run a worker until it fails; return its error (fail if it keeps running)."""
    with WorkerThread(settings) as w:
        return w.failure(timeout=FAIL_FAST_S)


def _login_role(database_url: str, *grants: str) -> str:
    """A new login role with a password and only `grants`; returns its URL."""
    name = f"t_role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw-{name}'")
        for grant in grants:
            conn.execute(grant.format(role=name))
    return url_with(database_url, user=name, password=f"pw-{name}")


def test_wrong_password_is_fatal_and_never_shown(services, database_url, topic_prefix):
    bad = wrong_password_url(database_url, SECRET)
    error = _error_of(worker_settings(services.bootstrap, bad, topic_prefix))
    assert isinstance(error, ConfigurationError), repr(error)
    assert "password authentication failed" in str(error) and "DATABASE_URL" in str(error)
    assert SECRET not in str(error)


def test_missing_database_is_fatal(services, database_url, topic_prefix):
    error = _error_of(worker_settings(services.bootstrap, url_with(database_url, dbname="no_such_db"), topic_prefix))
    assert isinstance(error, ConfigurationError), repr(error)
    assert 'database "no_such_db" does not exist' in str(error) and "/no_such_db" in str(error)


def test_missing_tables_is_fatal_with_the_fix(services, database_url, topic_prefix):
    empty = f"t_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url_with(database_url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {empty}")
    try:
        error = _error_of(worker_settings(services.bootstrap, url_with(database_url, dbname=empty), topic_prefix))
    finally:
        with psycopg.connect(url_with(database_url, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {empty} WITH (FORCE)")
    assert isinstance(error, ConfigurationError), repr(error)
    assert "does not exist" in str(error) and "society-ingest migrate" in str(error)


def test_missing_read_privileges_are_fatal(services, database_url, topic_prefix):
    url = _login_role(database_url)
    error = _error_of(worker_settings(services.bootstrap, url, topic_prefix))
    assert isinstance(error, ConfigurationError), repr(error)
    assert "permission denied" in str(error) and "grant" in str(error)


def test_missing_insert_privilege_is_fatal_at_the_first_batch(services, database_url, topic_prefix):
    url = _login_role(database_url, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    p.record_memory("agent_0", "hello", 1)
    p.close()
    error = _error_of(worker_settings(services.bootstrap, url, topic_prefix))
    assert isinstance(error, ConfigurationError), repr(error)
    assert "permission denied" in str(error)
    assert count(database_url, "agent_memories") == 0
    assert fetch(database_url, "SELECT count(*) FROM ingest_offsets")[0][0] == 0


def test_stop_during_an_outage_ends_the_retry_at_once(services, topic_prefix):
    # Nothing listens on port 1: the worker retries (transient), and stop() must end that wait.
    unreachable = "postgresql://postgres:x@127.0.0.1:1/society"
    settings = worker_settings(services.bootstrap, unreachable, topic_prefix, retry_initial_s=30, retry_max_s=60)
    w = WorkerThread(settings)
    with w:
        wait_for(lambda: w.worker.stats.retries >= 1, "a retry")
        assert w.worker.stats.degraded
        started = time.monotonic()
        w.stop(timeout=FAIL_FAST_S)
    assert time.monotonic() - started < 5.0  # the backoff was 0-30 s: the stop flag ended it


def test_dead_letter_limit_stops_before_emptying_the_topic(services, database_url, topic_prefix, tmp_path):
    record_memories(services.bootstrap, topic_prefix, 50)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix, dead_letter_max_consecutive=10)
    with WorkerThread(settings, codec=codec_lacking_newest_memory_schema(tmp_path)) as w:
        error = w.failure()
    assert isinstance(error, DeadLetterLimitError), repr(error)
    assert "more than 10 dead letters in a row" in str(error)
    assert "this worker lacks that schema version" in str(error)
    assert dead_letters.read_dead_letters(services.bootstrap, topic_prefix) == []
    stored = fetch(database_url, "SELECT topic, next_offset FROM ingest_offsets")
    assert all(not t.endswith("agent_memories") for t, _ in stored), stored
    # A worker with the newest schemas loads every record the stopped one left.
    drain(worker_settings(services.bootstrap, database_url, topic_prefix),
          lambda: count(database_url, "agent_memories") == 50, "all 50 memories")


def test_dead_letter_rate_limit(services, database_url, topic_prefix):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    raw = Producer({"bootstrap.servers": services.bootstrap})
    topic = tables.topic_for(topic_prefix, "agent_memories")
    for i in range(40):  # good and bad alternate: never two in a row, but 20 a minute
        p.record_memory("agent_0", f"memory {i}", i)
        p.flush()
        raw.produce(topic, b"garbage", key=b"agent_0")
        assert raw.flush(30) == 0
    p.close()
    settings = worker_settings(services.bootstrap, database_url, topic_prefix, dead_letter_max_per_minute=5)
    with WorkerThread(settings) as w:
        error = w.failure()
    assert isinstance(error, DeadLetterLimitError), repr(error)
    assert "more than 5 dead letters within a minute" in str(error)


def _memory_with_long_step(codec: AvroCodec, run_id: uuid.UUID, step: int) -> bytes:
    """A v2 memory whose int field holds more than 32 bits (Avro int and long share the varint encoding)."""
    current = codec.current["agent_memories"]
    schema = copy.deepcopy(current.raw)
    for f in schema["fields"]:
        if f["name"] == "step_timestamp":
            f["type"] = "long"
    buf = io.BytesIO()
    record = {
        "memory_id": str(uuid.uuid4()), "agent_id_str": "agent_0", "simulation_run_id": str(run_id),
        "step_timestamp": step, "real_timestamp": None, "content": f"step {step}", "importance": 0.5,
        "tags": None, "related_agent_id": None,
    }
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return MAGIC + current.fingerprint + buf.getvalue()


def test_out_of_range_integers_are_dead_lettered_without_validation(services, database_url, topic_prefix):
    codec = AvroCodec()
    p = producer(services.bootstrap, topic_prefix)
    run_id = p.start_run()
    p.record_memory("agent_0", "fine", 1)
    p.close()
    raw = Producer({"bootstrap.servers": services.bootstrap})
    steps = [2**31, 2**32 + 7, 2**40 + 3, 2**31 - 1]
    for step in steps:
        raw.produce(tables.topic_for(topic_prefix, "agent_memories"),
                    _memory_with_long_step(codec, run_id, step), key=b"agent_0")
    assert raw.flush(30) == 0
    settings = worker_settings(services.bootstrap, database_url, topic_prefix, validate_records=False)
    drain(settings, lambda: len(dead_letters.read_dead_letters(services.bootstrap, topic_prefix)) == 3
          and count(database_url, "agent_memories") == 2, "3 dead letters and 2 rows")
    stored = sorted(s for (s,) in fetch(database_url, "SELECT step_timestamp FROM agent_memories"))
    assert stored == [1, 2**31 - 1]
    letters = dead_letters.read_dead_letters(services.bootstrap, topic_prefix)
    assert {d.error_class for d in letters} == {"NumericValueOutOfRange"}
    assert all("agent_memories.step_timestamp" in d.message for d in letters)


def test_a_write_that_hangs_is_given_up_at_the_shutdown_deadline(services, database_url, topic_prefix):
    # Another session holds a lock on the table: the worker's COPY waits on it, for as long as it is held.
    locker = psycopg.connect(database_url)
    locker.execute("LOCK TABLE agent_memories IN SHARE MODE")  # reads go on, COPY waits
    try:
        record_memories(services.bootstrap, topic_prefix, 10)
        settings = worker_settings(services.bootstrap, database_url, topic_prefix, shutdown_timeout_s=2.0)
        with WorkerThread(settings) as w:
            wait_for(lambda: w.worker.stats.consumed >= 10 and w.worker._writer is not None and w.worker._writer.busy,
                     "a batch stuck behind the lock")
            started = time.monotonic()
            stats = w.stop(timeout=FAIL_FAST_S)
            elapsed = time.monotonic() - started
    finally:
        locker.close()
    assert 2.0 <= elapsed < 4.0, elapsed  # the deadline, once (not once per wait)
    assert stats.inserted["agent_memories"] == 0
    # Nothing was committed, so the next worker loads all ten.
    drain(worker_settings(services.bootstrap, database_url, topic_prefix),
          lambda: count(database_url, "agent_memories") == 10, "the ten memories")
