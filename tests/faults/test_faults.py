"""No record lost or loaded twice when workers, PostgreSQL or the broker fail.

Each test ends with an exact reconciliation (tests/support/reconcile.py) and
prints its counts: run with ``-s`` to see them.
"""

from __future__ import annotations

import time

import pytest

from producers import DeliveryError
from support.db import count, fetch
from support.pipeline import FAST_GROUP_PROPS, WorkerThread, producer, wait_for, worker_settings
from support.reconcile import all_committed, reconcile
from support.workload import Workload

pytestmark = pytest.mark.fault

#: Steps of the background workload: 50 agents x (memory + event) + 10 trades/bank rows per step.
#: Long enough (about 10 s) that every fault lands while records are still being produced.
STEPS = 300
#: How long the broker stays down while the producer keeps recording.
OUTAGE_S = 30
#: Producer close timeout after a fault: longer than the broker's recovery under load
#: (a 30 s close once ran out while a restarted broker was still catching up).
CLOSE_AFTER_FAULT_S = 180


def report(name: str, outcome) -> None:
    print(f"\n[{name}] {outcome.line()}")


def finish_run(p, load: Workload):
    """Wait for the workload, end the run and deliver everything; return what was produced."""
    produced = load.join()
    p.end_run()
    p.close(timeout=CLOSE_AFTER_FAULT_S)
    return produced


def wait_all_committed(services, database_url: str, prefix: str, group: str, alive=lambda: None) -> None:
    wait_for(lambda: alive() or all_committed(database_url, services.bootstrap, prefix, group),
             "everything committed", timeout=120)


def test_worker_sigkilled_repeatedly(services, stack, database_url, topic_prefix, spawn):
    group = f"{topic_prefix}-g"
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    load = Workload(p, STEPS).start()
    for _ in range(3):
        before = count(database_url, "agent_memories")
        w = spawn(database_url, topic_prefix, group, "--max-batch-rows", "500", *FAST_GROUP_PROPS)
        wait_for(lambda: w.check_alive() or count(database_url, "agent_memories") > before, "progress before the kill")
        w.kill()
    produced = finish_run(p, load)
    last = spawn(database_url, topic_prefix, group, *FAST_GROUP_PROPS)
    wait_all_committed(services, database_url, topic_prefix, group, last.check_alive)
    last.terminate()
    report("sigkill x3", reconcile(database_url, services.bootstrap, topic_prefix, group, produced))


def test_postgres_restarted_mid_run(services, stack, database_url, topic_prefix):
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    with WorkerThread(settings) as w:
        load = Workload(p, STEPS).start()
        wait_for(lambda: count(database_url, "agent_memories") > 500, "rows before the restart")
        stack.stop_postgres("fast")
        wait_for(lambda: w.worker.stats.degraded, "the worker to notice the outage")
        stack.start_postgres()
        produced = finish_run(p, load)
        wait_all_committed(services, database_url, topic_prefix, settings.group_id)
        stats = w.stop()
    assert stats.retries > 0 and not stats.degraded
    # The outage is visible to operators in the worker's heartbeat row.
    (retries, last_error), = fetch(database_url, "SELECT retries, last_error FROM ingest_workers")
    assert retries > 0 and last_error
    report("postgres restart", reconcile(database_url, services.bootstrap, topic_prefix, settings.group_id, produced))


def test_sigterm_while_postgres_is_down_exits_promptly_and_loses_nothing(
    services, stack, database_url, topic_prefix, spawn
):
    group = f"{topic_prefix}-g"
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    load = Workload(p, STEPS).start()
    w = spawn(database_url, topic_prefix, group, *FAST_GROUP_PROPS)
    wait_for(lambda: w.check_alive() or count(database_url, "agent_memories") > 500, "rows before the outage")
    stack.stop_postgres("fast")
    wait_for(lambda: w.check_alive() or "transient failure" in w.log_tail(), "the worker to retry")
    started = time.monotonic()
    stats = w.terminate()  # exit code 0: it stopped as asked, giving up the uncommitted batch
    assert time.monotonic() - started < 15, "the retry wait did not wake on SIGTERM"
    assert "will be consumed again" in w.log_tail()
    stack.start_postgres()
    produced = finish_run(p, load)
    last = spawn(database_url, topic_prefix, group, *FAST_GROUP_PROPS)
    wait_all_committed(services, database_url, topic_prefix, group, last.check_alive)
    last.terminate()
    assert stats["retries"] > 0
    report("sigterm during a database outage",
           reconcile(database_url, services.bootstrap, topic_prefix, group, produced))


def test_broker_restarted_mid_run(services, stack, database_url, topic_prefix):
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    with WorkerThread(settings) as w:
        load = Workload(p, STEPS).start()
        wait_for(lambda: count(database_url, "agent_memories") > 500, "rows before the restart")
        stack.stop_kafka()
        at_stop = load.steps_done
        wait_for(lambda: load.reached(at_stop + 10), "records produced while the broker is down")
        assert p.stats().in_queue > 0
        stack.start_kafka()
        produced = finish_run(p, load)
        wait_all_committed(services, database_url, topic_prefix, settings.group_id)
        w.stop()
    report("broker restart", reconcile(database_url, services.bootstrap, topic_prefix, settings.group_id, produced))


def test_workers_join_and_die_during_a_run(services, stack, database_url, topic_prefix, spawn):
    group = f"{topic_prefix}-g"
    args = (database_url, topic_prefix, group, "--max-batch-rows", "500", *FAST_GROUP_PROPS)
    p = producer(services.bootstrap, topic_prefix)
    p.start_run()
    first, second = spawn(*args), spawn(*args)
    # Runs until stopped, so records keep coming after the third joins and after the kill.
    load = Workload(p, STEPS * 100).start()
    wait_for(lambda: count(database_url, "agent_memories") > 500, "two workers loading")
    third = spawn(*args)
    wait_for(lambda: third.check_alive() or "assigned" in third.log_tail(), "the third worker's partitions")
    joined_at = load.steps_done
    wait_for(lambda: load.reached(joined_at + STEPS // 4), "the run to go on after the third joined")
    first.kill()
    killed_at = load.steps_done
    wait_for(lambda: load.reached(killed_at + STEPS // 4), "the run to go on after the kill")
    load.stop()
    produced = finish_run(p, load)
    wait_all_committed(services, database_url, topic_prefix, group)
    stats = [second.terminate(), third.terminate()]
    assert all(s["consumed"] > 0 for s in stats), "both survivors took part"
    report("rebalances", reconcile(database_url, services.bootstrap, topic_prefix, group, produced))


def test_producer_holds_records_while_broker_is_down(services, stack, database_url, topic_prefix):
    stack.stop_kafka()
    # Created while the broker is down, then records for 30 s of outage.
    p = producer(services.bootstrap, topic_prefix, max_block_seconds=1.0)
    p.start_run()
    load = Workload(p, steps=0, agents=20)
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < OUTAGE_S:
        load.record_step(step)
        step += 1
        time.sleep(0.1)  # pacing: the simulation records ~200 records/s through the outage
    held = p.stats()
    assert held.delivered == 0 and held.failed == 0 and held.in_queue >= held.total_sent > 1000  # len() also counts pending requests
    stack.start_kafka()
    p.end_run()
    stats = p.close(timeout=120)
    assert stats.failed == 0 and stats.delivered == stats.total_sent
    assert load.max_call_s < 1.0, "a call blocked the simulation"
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    with WorkerThread(settings) as w:
        wait_all_committed(services, database_url, topic_prefix, settings.group_id)
        w.stop()
    report("broker down 30 s", reconcile(database_url, services.bootstrap, topic_prefix, settings.group_id,
                                         load.produced))


def test_undeliverable_records_are_reported_not_dropped(services, stack, topic_prefix):
    stack.stop_kafka()
    p = producer(services.bootstrap, topic_prefix, message_timeout_ms=2000)
    p.start_run()
    for i in range(50):
        p.record_memory("agent_0", f"memory {i}", i)
    with pytest.raises(DeliveryError) as info:
        p.flush(timeout=30)
    assert len(info.value.failures) == 51 and info.value.pending == 0
    assert {f.topic.rsplit(".", 1)[1] for f in info.value.failures} == {"simulation_runs", "agent_memories"}
    stats = p.stats()
    assert (stats.failed, stats.delivered) == (51, 0)  # flush() above said none is pending
    assert p.close(timeout=5).failed == 51  # nothing new to report; closing stops the retries
