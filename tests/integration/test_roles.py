"""Least privilege: the loader role loads, dead-letters and replays, and can do nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from confluent_kafka import Producer

from consumers.errors import ConfigurationError
from producers import tables
from support.db import count, url_with
from support.pipeline import WAIT_TIMEOUT_S, WorkerThread, drain, producer, wait_for, worker_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def login_role(database_url):
    """Make a login role in one of the group roles; yields (make, urls)."""
    made = []

    def make(*groups: str) -> str:
        name = f"r_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'role-pw'")
            for group in groups:
                conn.execute(f"GRANT {group} TO {name}")
        made.append(name)
        return url_with(database_url, user=name, password="role-pw")

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP OWNED BY {name}")
            conn.execute(f"DROP ROLE {name}")


def _cli(services, url, *args):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], env=env, capture_output=True, text=True,
                          timeout=WAIT_TIMEOUT_S)


def test_the_loader_loads_dead_letters_and_replays(services, database_url, topic_prefix, login_role):
    loader = login_role("society_loader")
    p = producer(services.bootstrap, topic_prefix)
    run_id = p.start_run()
    for i in range(20):
        p.record_memory(f"agent_{i % 3}", f"memory {i}", i)
    p.end_run()
    p.close()
    raw = Producer({"bootstrap.servers": services.bootstrap})
    raw.produce(tables.topic_for(topic_prefix, "agent_memories"), b"not avro", key=f"{run_id}/agent_0")
    raw.flush(30)

    stats = drain(worker_settings(services.bootstrap, loader, topic_prefix),
                  lambda: count(database_url, "agent_memories") == 20, "the loader's worker")
    assert stats.dead_lettered == 1 and count(database_url, "agents") == 3

    replayed = _cli(services, loader, "replay", "--topic-prefix", topic_prefix, "--run", str(run_id), "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert count(database_url, "agent_memories") == 20

    # A schema for comparison needs DDL: the loader is told to have the owner prepare it...
    refused = _cli(services, loader, "replay", "--topic-prefix", topic_prefix, "--run", str(run_id),
                   "--target-schema", "cmp")
    assert refused.returncode == 1 and "migrate --schema cmp" in refused.stderr, refused.stderr
    # ...and once the owner did, the loader replays into it.
    prepared = _cli(services, database_url, "migrate", "--schema", "cmp")
    assert prepared.returncode == 0, prepared.stderr
    again = _cli(services, loader, "replay", "--topic-prefix", topic_prefix, "--run", str(run_id),
                 "--target-schema", "cmp")
    assert again.returncode == 0, again.stderr
    assert count(database_url, "cmp.agent_memories") == 20


@pytest.mark.parametrize("statement", [
    "CREATE TABLE intruder (x int)",
    "DROP TABLE agent_memories",
    "ALTER TABLE agent_memories ADD COLUMN x int",
    "TRUNCATE agent_memories",
    "DELETE FROM agent_memories",
    "CREATE SCHEMA intruder",
])
def test_the_loader_cannot_change_the_schema_or_delete_data(database_url, login_role, statement):
    loader = login_role("society_loader")
    with psycopg.connect(loader, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_the_reader_reads_and_cannot_write(database_url, login_role):
    reader = login_role("society_reader")
    with psycopg.connect(reader, autocommit=True) as conn:
        for table in tables.TABLES:
            conn.execute(f"SELECT count(*) FROM {table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO simulation_runs (run_id) VALUES (gen_random_uuid())")


def test_migrate_as_the_loader_says_to_run_it_as_the_owner(services, database_url, login_role):
    loader = login_role("society_loader")
    ran = _cli(services, loader, "migrate", "--schema", "elsewhere")
    assert ran.returncode == 1 and "as the owner" in ran.stderr and "Traceback" not in ran.stderr, ran.stderr


def test_a_role_without_temp_gets_a_clear_message(services, database_url, topic_prefix, login_role):
    loader = login_role("society_loader")
    db = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC")
        conn.execute(f"REVOKE TEMPORARY ON DATABASE {db} FROM society_loader")
    worker = WorkerThread(worker_settings(services.bootstrap, loader, topic_prefix))
    with worker:
        error = worker.failure()
    assert isinstance(error, ConfigurationError)
    assert "temporary" in str(error) and "TEMPORARY on the database" in str(error)
    assert "role-pw" not in str(error)

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"GRANT TEMPORARY ON DATABASE {db} TO society_loader")
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    p.record_memory("agent_0", "now it loads", 0)
    p.close()
    with WorkerThread(worker_settings(services.bootstrap, loader, topic_prefix)) as w:
        wait_for(lambda: w.error is not None or count(database_url, "agent_memories") == 1, "the memory")
        w.stop()


def test_migrate_as_a_role_without_ddl_rights_says_to_run_it_as_the_owner(services, database_url, login_role):
    # The failure comes before any migration, at the bookkeeping table: not the loader's GRANT hint.
    reader = login_role("society_reader")
    ran = _cli(services, reader, "migrate")
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert "cannot prepare schema_migrations" in ran.stderr
    assert "migrate creates and alters tables: run it as the owner of the schema" in ran.stderr
    assert "GRANT society_loader" not in ran.stderr and "role-pw" not in ran.stderr


def test_redrive_as_the_reader_is_refused_before_sending_anything(services, database_url, topic_prefix, login_role):
    from consumers import dead_letters

    reader = login_role("society_reader")
    # An unreachable broker: the refusal must come first, before any Kafka client.
    with pytest.raises(ConfigurationError, match=r"^role r_\w+ may not INSERT dlq_redrives, .* nothing sent; "
                                                 r"run it as a loader \(GRANT society_loader TO r_\w+\)$"):
        dead_letters.redrive("127.0.0.1:1", reader, topic_prefix, timeout_s=1)
    ran = _cli(services, reader, "dlq", "redrive", "--topic-prefix", topic_prefix)
    assert ran.returncode == 1 and "may not INSERT dlq_redrives" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr and "role-pw" not in ran.stderr
