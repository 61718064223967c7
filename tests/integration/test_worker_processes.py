"""``consume --processes N``: children of one group load a topic exactly once and stop together."""

from __future__ import annotations

import socket

import pytest

from support.db import count, fetch
from support.pipeline import producer, wait_for

pytestmark = pytest.mark.integration

MEMORIES = 6_000
EVENTS = 3_000


def test_two_processes_load_exactly_once_and_stop_on_sigterm(services, database_url, topic_prefix, spawn):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    for i in range(MEMORIES):
        p.record_memory(f"agent_{i % 40}", f"memory {i}", i // 40, importance=0.5, tags=["t"])
    for i in range(EVENTS):
        p.record_event("trade", i // 40, agent_id_primary=f"agent_{i % 40}", details={"i": i})
    p.end_run()
    p.close()

    workers = spawn(database_url, topic_prefix, f"{topic_prefix}-g", "--processes", "2", "--max-batch-rows", "500")
    wait_for(lambda: workers.check_alive() or count(database_url, "agent_memories") == MEMORIES
             and count(database_url, "simulation_events") == EVENTS, "every row")
    stats = workers.terminate()  # SIGTERM to the parent: every child finishes and exits 0

    assert len(stats) == 2 and all(s is not None for s in stats), stats
    assert sum(s["inserted"]["agent_memories"] for s in stats) == MEMORIES
    assert sum(s["inserted"]["simulation_events"] for s in stats) == EVENTS
    assert sum(s["duplicates"]["agent_memories"] + s["duplicates"]["simulation_events"] for s in stats) == 0
    assert fetch(database_url, "SELECT count(DISTINCT memory_id) FROM agent_memories")[0][0] == MEMORIES
    assert fetch(database_url, "SELECT count(DISTINCT event_uid) FROM simulation_events")[0][0] == EVENTS
    assert not workers.alive()


def test_a_failing_child_stops_the_others_and_the_parent_exits_1_with_its_line(
        services, database_url, topic_prefix, spawn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Child 0 serves port-1 (free, almost surely), child 1 the taken port: it fails at once.
        workers = spawn(database_url, topic_prefix, f"{topic_prefix}-g", "--processes", "2",
                        "--metrics-port", str(port - 1))
        workers.proc.wait(timeout=60)
    workers.kill()  # already exited: collects its output and closes its log
    assert workers.proc.returncode == 1, workers.log_tail()
    errors = [line for line in workers.log_tail(20_000).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: worker process 1: "), workers.log_tail()
    assert str(port) in errors[0]


def test_children_stop_when_the_parent_is_killed(services, database_url, topic_prefix, spawn):
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    for i in range(500):
        p.record_memory(f"agent_{i % 10}", f"memory {i}", i // 10)
    p.close()
    workers = spawn(database_url, topic_prefix, f"{topic_prefix}-g", "--processes", "2")
    wait_for(lambda: workers.check_alive() or count(database_url, "agent_memories") == 500, "every row")
    workers.kill()  # SIGKILL: the parent cannot forward anything

    def sessions() -> int:  # the children's database connections, gone once they exited
        return fetch(database_url, "SELECT count(*) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")[0][0]

    wait_for(lambda: sessions() == 0, "the children to exit")
