"""status --run: complete only once every recorded record landed; not yet while in flight; incomplete with the count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from consumers import status
from support.db import count
from support.pipeline import WAIT_TIMEOUT_S, codec_lacking_newest_memory_schema, drain, producer, worker_settings

pytestmark = pytest.mark.integration


def _record_run(services, prefix: str, memories: int = 5):
    p = producer(services.bootstrap, prefix)
    run_id = p.start_run({"agents": 2})
    p.record_agent("agent_0")
    for i in range(memories):
        p.record_memory("agent_0", f"memory {i}", i)
    p.record_event("BORN", 0, agent_id_primary="agent_0")
    p.end_run("completed")
    p.close()
    return run_id


def _cli_status(services, database_url, prefix, group, run_id):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": database_url}
    ran = subprocess.run(
        [sys.executable, "-m", "consumers.cli", "status", "--topic-prefix", prefix, "--group", group,
         "--run", str(run_id), "--json"], env=env, capture_output=True, text=True, timeout=WAIT_TIMEOUT_S)
    return ran.returncode, json.loads(ran.stdout)


def test_a_run_is_not_yet_complete_while_in_flight_and_complete_once_landed(services, database_url, topic_prefix):
    run_id = _record_run(services, topic_prefix)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    group = settings.group_id
    code, answer = _cli_status(services, database_url, topic_prefix, group, run_id)
    assert (code, answer["state"], answer["recorded"]) == (3, "not yet", None)  # the run's end has not landed

    # Only the runs table loaded: the run's counts are known, its memories still in flight.
    drain(settings.model_copy(update={"tables": ("simulation_runs",)}),
          lambda: count(database_url, "simulation_runs") == 1, "the run row")
    code, answer = _cli_status(services, database_url, topic_prefix, group, run_id)
    assert (code, answer["state"]) == (3, "not yet") and answer["lag"] > 0
    assert answer["recorded"] == {"simulation_runs": 1, "agents": 1, "agent_memories": 5, "market_transactions": 0,
                                  "banking_transactions": 0, "simulation_events": 1}

    drain(settings, lambda: count(database_url, "agent_memories") == 5 and count(database_url, "simulation_events") == 1,
          "the rest of the run")
    code, answer = _cli_status(services, database_url, topic_prefix, group, run_id)
    assert (code, answer["state"], answer["missing"]) == (0, "complete", 0)
    assert answer["loaded"] == answer["recorded"]


def test_a_run_with_dead_lettered_records_is_incomplete_with_the_count(services, database_url, topic_prefix, tmp_path):
    run_id = _record_run(services, topic_prefix, memories=4)
    settings = worker_settings(services.bootstrap, database_url, topic_prefix)
    # A worker without the newest memory schema dead-letters the four memories; everything else loads.
    drain(settings, lambda: count(database_url, "simulation_events") == 1
          and status.consumer_lag(services.bootstrap, database_url, topic_prefix, settings.group_id)
          and sum(p.lag for p in status.consumer_lag(services.bootstrap, database_url, topic_prefix,
                                                     settings.group_id)) == 0,
          "everything consumed", codec=codec_lacking_newest_memory_schema(tmp_path))
    answer = status.run_completeness(services.bootstrap, database_url, topic_prefix, settings.group_id, run_id)
    assert answer.state == status.INCOMPLETE and answer.missing == 4
    assert answer.dead_lettered["agent_memories"] == 4 and answer.loaded["agent_memories"] == 0
    code, shown = _cli_status(services, database_url, topic_prefix, settings.group_id, run_id)
    assert (code, shown["state"], shown["missing"]) == (1, "incomplete", 4)
