"""``consume --processes N``: children of one group load a topic exactly once and stop together."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def taken_port_after_a_free_one() -> Iterator[int]:
    """A port held listening while the port just below it is free (checked by binding it).

    Below Linux's ephemeral range (32768-60999), so no outgoing connection takes the free one meanwhile.
    """
    rng = random.Random()
    for _ in range(50):
        with socket.socket() as taken:
            port = rng.randrange(20_001, 32_000)
            try:
                taken.bind(("127.0.0.1", port))
            except OSError:
                continue
            taken.listen()
            with socket.socket() as below:
                try:
                    below.bind(("127.0.0.1", port - 1))
                except OSError:
                    continue
            yield port
            return
    raise AssertionError("no free port just below a free one in 50 tries")


def test_a_failing_child_stops_the_others_and_the_parent_exits_1_with_its_line(
        services, database_url, topic_prefix, spawn):
    with taken_port_after_a_free_one() as port:
        # Child 0 serves port-1 (free when checked), child 1 the taken port: it fails at once.
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


def test_metrics_ports_past_65535_are_a_usage_error_before_anything_starts(database_url, topic_prefix, spawn):
    workers = spawn(database_url, topic_prefix, f"{topic_prefix}-g", "--processes", "2", "--metrics-port", "65535")
    workers.proc.wait(timeout=60)
    workers.kill()  # already exited: collects its output and closes its log
    assert workers.proc.returncode == 2, workers.log_tail()
    assert "--metrics-port" in workers.log_tail() and "65536" in workers.log_tail(), workers.log_tail()
    assert "OverflowError" not in workers.log_tail() and "assigned" not in workers.log_tail()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_children_stopped_behind_the_parents_back_are_reported_and_the_last_exits_1(
        services, database_url, topic_prefix, spawn):
    workers = spawn(database_url, topic_prefix, f"{topic_prefix}-g", "--processes", "2", "--log-format", "json")
    parent_id = f"{socket.gethostname()}:{workers.proc.pid}"

    def assigned_workers() -> set[str]:  # children log "assigned" once their signal handlers are in place
        lines = _json_lines(workers.log_tail(1_000_000))
        return {line["worker_id"] for line in lines if line["message"].startswith("assigned")}

    wait_for(lambda: workers.check_alive() or len(assigned_workers()) == 2, "both children to be assigned partitions")
    first, second = sorted(_children(workers.proc.pid))
    assert assigned_workers() == {f"{socket.gethostname()}:{first}", f"{socket.gethostname()}:{second}"}

    os.kill(first, signal.SIGTERM)  # only that child: it finishes and exits 0
    wait_for(lambda: workers.check_alive() or "1 of 2 still running" in workers.log_tail(1_000_000),
             "the parent's warning about the first child")
    workers.check_alive()  # the other one goes on
    os.kill(second, signal.SIGTERM)
    workers.proc.wait(timeout=60)
    workers.kill()  # already exited: collects its output and closes its log
    assert workers.proc.returncode == 1, workers.log_tail()

    lines = _json_lines(workers.log_tail(1_000_000))
    assert all("worker_id" in line for line in lines), [line for line in lines if "worker_id" not in line]
    parent = [line for line in lines if line["worker_id"] == parent_id]
    warnings = [line["message"] for line in parent if line["level"] == "WARNING"]
    assert len(warnings) == 2, parent
    assert "(pid %d) stopped without the parent asking with status 0; 1 of 2 still running" % first in warnings[0]
    assert "(pid %d) stopped without the parent asking with status 0; 0 of 2 still running" % second in warnings[1]
    errors = [line for line in parent if line["logger"] == "society_ingest.cli" and line["level"] == "ERROR"]
    assert len(errors) == 1 and "the worker processes stopped on their own" in errors[0]["message"], parent
