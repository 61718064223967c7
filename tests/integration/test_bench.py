"""``society-ingest bench``: every mode at a small size loads exactly what it should and leaves nothing behind.

Counts and structure only: speed is never asserted (the machines are shared).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from consumers.bench import leftovers
from consumers.bench.scratch import DATABASE_PREFIX, Scratch, leftover_groups, with_database
from producers import tables
from producers.kafka_config import KafkaClientSettings
from support.pipeline import wait_for

pytestmark = pytest.mark.integration

RECORDS, ALT, AGENTS, REPEATS = 2000, 600, 50, 1
E2E_AGENTS, E2E_RATE, E2E_SECONDS, E2E_PRODUCERS = 40, 2, 4, 2
PRODUCER_CALLS = 1000
SMALL = ["--records", str(RECORDS), "--alt-records", str(ALT), "--agents", str(AGENTS), "--repeats", str(REPEATS),
         "--partitions", "2", "--e2e-agents", str(E2E_AGENTS), "--e2e-steps-per-second", str(E2E_RATE),
         "--e2e-seconds", str(E2E_SECONDS), "--e2e-producers", str(E2E_PRODUCERS),
         "--producer-records", str(PRODUCER_CALLS)]


def _bench(services, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": services.database_url,
           "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "consumers.cli", "bench", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


TAG = re.compile(r"^bench ([0-9a-f]{10}): database", re.MULTILINE)


def _tag(stderr: str) -> str:
    return TAG.search(stderr).group(1)


def test_every_mode_loads_exact_counts_and_removes_its_database_and_topics(services, tmp_path: Path):
    out = tmp_path / "bench.json"
    proc = _bench(services, *SMALL, "--json", str(out))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert leftovers(services.bootstrap, services.database_url, report["tag"]) == ([], False)
    assert leftover_groups(services.bootstrap, report["tag"]) == []
    assert report["complete"] and _tag(stderr) == report["tag"] and "pipeline, 1 worker process" in stdout

    mix = report["modes"]["mix"]
    assert mix["records"] == RECORDS and mix["rows"][tables.SIMULATION_RUNS] == 1  # a run's two states: one row
    assert sum(mix["rows"].values()) == RECORDS - 1 and mix["rows"][tables.AGENTS] == AGENTS
    shares = {t: n / RECORDS for t, n in mix["records_sent"].items()}
    assert 0.4 < shares["agent_memories"] < 0.55 and 0.4 < shares["simulation_events"] < 0.55
    assert [(r["repeat"], r["processes"]) for r in mix["pipeline_runs"]] == [(0, 1), (0, 2)]
    assert all(sum(r["consumed"]) == RECORDS for r in mix["pipeline_runs"])
    assert all(len(v) == REPEATS and min(v) > 0 for v in mix["samples_rows_per_s"].values())

    alt = report["modes"]["alternatives"]
    assert alt["rows"][tables.AGENTS] == AGENTS and abs(sum(alt["rows"].values()) - ALT) <= 5
    assert set(alt["samples_rows_per_s"]) == {"copy", "insert_per_row", "executemany_on_conflict",
                                              "values_100_on_conflict"}

    e2e = report["modes"]["e2e"]
    assert [p["steps"] for p in e2e["producers"]] == [E2E_RATE * E2E_SECONDS] * E2E_PRODUCERS
    assert sum(sum(p["sent"].values()) for p in e2e["producers"]) == e2e["records"]
    assert sum(e2e["worker"][0]["inserted"].values()) == e2e["records"]  # nothing duplicated, nothing lost
    assert 0 <= e2e["latency_s"]["p50"] <= e2e["latency_s"]["p95"] <= e2e["latency_s"]["p99"]
    assert e2e["lag_series"] and e2e["lag_series"][-1][1] == 0 and e2e["drain_s"] >= 0
    # The producers start together (each waits for go once ready), not one import time apart.
    assert 0 <= e2e["start_skew_s"] < 1.0
    assert e2e["all_producing_s"][1] - e2e["all_producing_s"][0] > E2E_SECONDS - 1.0

    producer = report["modes"]["producer"]
    calls = producer["per_call_us"]
    assert set(calls) == {"record_agent", "record_memory", "record_event", "record_bank_transaction",
                          "record_market_transaction"}
    assert sum(c["calls"] for c in calls.values()) == PRODUCER_CALLS * REPEATS
    assert all(0 < c["p50"] <= c["p99"] for c in calls.values())
    assert len(producer["raw_produce_records_per_s"]) == REPEATS
    assert all(len(c["samples"]) == c["calls"] and min(c["samples"]) > 0 for c in calls.values())  # every call

    # Every e2e sample: per instant, each partition's visible and produced offsets; latencies as a histogram.
    samples = e2e["samples"]
    assert len(samples["t"]) == len(samples["visible"]) == len(samples["produced"]) > 1
    assert all(len(row) == len(samples["partitions"]) for row in samples["visible"] + samples["produced"])
    assert sum(samples["visible"][-1]) == e2e["records"]
    assert sum(e2e["latency_histogram_s"]["counts"].values()) == e2e["records"]

    # The table is machine-readable: numbers and units apart, percentiles in their own fields.
    rows = {row["measurement"]: row for row in report["table"]}
    assert not [row for row in report["table"] if row["unit"] not in (None, "rows/s", "records/s", "records", "s", "µs")]
    assert rows["end to end: lag bounded (peak lag)"]["unit"] == "records"
    latency_row = rows["end to end: record to row, p95"]
    assert [latency_row[q] for q in ("p50", "p95", "p99")] == [e2e["latency_s"][q] for q in ("p50", "p95", "p99")]
    assert all(rows[f"producer, {name}: p50"]["p99"] == c["p99"] for name, c in calls.items())
    assert {line["measurement"].split(",")[0].split(":")[0] for line in report["table"]} >= {
        "binary COPY of the mix (1", "pipeline", "producer", "end to end"}


def _cmdlines_with(secret: str) -> list[str]:
    """Every process's command line that contains `secret` (those this user may read: all of the bench's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue  # ended meanwhile, or not ours
            if secret in cmdline:
                found.append(cmdline.replace("\0", " "))
    return found


def _e2e_loading(services, proc, lines: list[str]):
    """A condition: the bench's e2e worker committed rows of the paced society (producers and worker run)."""

    def e2e_loading() -> bool:
        """The worker committed rows of the paced society: producers and worker are running."""
        while not lines or not TAG.search(lines[-1]):
            line = proc.stderr.readline()
            assert line, f"the bench ended: {''.join(lines)}"
            lines.append(line)
        url = with_database(services.database_url, f"{DATABASE_PREFIX}{_tag(lines[-1])}")
        try:
            with psycopg.connect(url) as conn:
                return conn.execute("SELECT count(*) FROM ingest_offsets").fetchone()[0] > 0
        except psycopg.errors.UndefinedTable:
            return False  # not migrated yet
        except psycopg.OperationalError:
            return False  # not created yet

    return e2e_loading


def test_sigterm_in_the_middle_still_removes_everything(services):
    proc = _bench(services, *SMALL, "--modes", "e2e", "--e2e-seconds", "120")
    lines: list[str] = []
    try:
        wait_for(_e2e_loading(services, proc, lines), "the end-to-end mode to load rows", timeout=120)
        tag = _tag(lines[-1])
        password = psycopg.conninfo.conninfo_to_dict(services.database_url).get("password")
        assert password, "the test database URL has no password to look for"
        assert _cmdlines_with(password) == [], "the database password is on a command line"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and time.monotonic() - started < 60
    assert leftovers(services.bootstrap, services.database_url, tag) == ([], False)
    assert leftover_groups(services.bootstrap, tag) == []


def test_ctrl_c_to_the_process_group_is_an_interruption_not_a_worker_failure(services):
    """A terminal's Ctrl-C reaches the bench and its children: exit 130, everything removed and said so."""
    proc = _bench(services, *SMALL, "--modes", "e2e", "--e2e-seconds", "120", start_new_session=True)
    lines: list[str] = []
    try:
        wait_for(_e2e_loading(services, proc, lines), "the end-to-end mode to load rows", timeout=120)
        tag = _tag(lines[-1])
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "WorkerFailed" not in stderr and "removed database" in stderr
    assert "not deleted" not in stderr and "left consumer group" not in stderr
    assert leftovers(services.bootstrap, services.database_url, tag) == ([], False)
    assert leftover_groups(services.bootstrap, tag) == []


@pytest.mark.parametrize("args", [
    ["--processes", "0"], ["--processes", "abc"], ["--processes", "1,,2"], ["--modes", "mix,,mix"],
    ["--modes", "mix,mix"], ["--e2e-steps-per-second", "inf"], ["--e2e-steps-per-second", "nan"],
    ["--e2e-seconds", "inf"], ["--e2e-seconds", "nan"], ["--e2e-steps-per-second", "-inf"],
    ["--json", "{tmp}"], ["--json", "{tmp}/missing/bench.json"],
    ["--json", "/proc/bench.json"], ["--json", "/sys/kernel/bench.json"], ["--json", "/dev/null"],
    ["--json", "{tmp}/dangling.json"],
])
def test_bad_flags_are_usage_errors_before_anything_is_created(services, tmp_path: Path, args: list[str]):
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    proc = _bench(services, *SMALL, *[a.format(tmp=tmp_path) for a in args])
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert not TAG.search(stderr) and "Traceback" not in stderr
    assert args[0] in stderr  # the option is named
    assert not (tmp_path / "nowhere.json").exists()


def _group_members(bootstrap: str, group: str) -> int:
    """Members of consumer group `group` (0 when it does not exist)."""
    from consumers.topics import admin_client

    admin = admin_client(bootstrap)
    return len(admin.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=30).members)


def test_ctrl_c_to_the_process_group_during_the_two_process_mix_removes_its_groups_and_prints_the_rows_so_far(
        services, tmp_path: Path):
    """A terminal's Ctrl-C while 2 workers load: they have exited before their groups are deleted, every group
    goes, and the rows measured before (repeat 1 with 1 process) are printed and written."""
    out = tmp_path / "bench.json"
    proc = _bench(services, "--modes", "mix", "--records", "60000", "--repeats", "1", "--processes", "1,2",
                  "--partitions", "2", "--agents", str(AGENTS), "--json", str(out), start_new_session=True)
    lines: list[str] = []

    def two_workers_loading() -> bool:
        while not lines or "1 worker process(es)" not in lines[-1]:
            line = proc.stderr.readline()
            assert line, f"the bench ended: {''.join(lines)}"
            lines.append(line)
        return _group_members(services.bootstrap, f"bench-{_tag(''.join(lines))}-mix-r0-p2") == 2

    try:
        wait_for(two_workers_loading, "the 2-process load to run", timeout=240, interval=0.02)
        tag = _tag("".join(lines))
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + stderr
    assert proc.returncode == 130, stderr
    assert "not deleted" not in stderr and "left consumer group" not in stderr, stderr
    assert re.search(r"removed database \S+, \d+ topic\(s\) \S+, [1-9] consumer group\(s\)\n", stderr), stderr
    assert leftovers(services.bootstrap, services.database_url, tag) == ([], False)
    assert leftover_groups(services.bootstrap, tag) == []
    assert "interrupted" in stdout and "pipeline, 1 worker process" in stdout, stdout
    report = json.loads(out.read_text())
    assert not report["complete"] and report["partial_modes"] == ["mix"]
    assert [(r["repeat"], r["processes"]) for r in report["modes"]["mix"]["pipeline_runs"]] == [(0, 1)]


def test_a_group_whose_worker_was_killed_is_deleted_once_the_broker_lets_it_go(services, tmp_path: Path):
    """A worker killed (SIGKILL) stays a member until its session times out: the clean-up waits for that."""
    from consumers.bench import workers

    removed: list[str] = []
    scratch = Scratch(KafkaClientSettings(bootstrap_servers=services.bootstrap), services.database_url,
                      on_removed=removed.append)
    with scratch:
        prefix = scratch.topics("kill", 1)
        running = workers.start_workers(scratch, prefix, f"{prefix}-workers", 1, tmp_path)
        running.wait_assigned()
        wait_for(lambda: _group_members(services.bootstrap, f"{prefix}-workers") == 1, "the worker in its group")
        running.procs[0].kill()
        running.procs[0].wait(30)
        assert _group_members(services.bootstrap, f"{prefix}-workers") == 1  # still a member: it never left
    assert leftover_groups(services.bootstrap, scratch.tag) == []
    assert leftovers(services.bootstrap, services.database_url, scratch.tag) == ([], False)
    assert len(removed) == 1 and "1 consumer group(s)" in removed[0] and "left" not in removed[0], removed


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pids: list[int]) -> bool:
    """Have these processes ended (or only their zombie is left)?"""
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return False
        except OSError:
            continue  # ended
    return True


def test_sigkill_of_the_bench_leaves_no_worker_running(services):
    proc = _bench(services, *SMALL, "--modes", "e2e", "--e2e-seconds", "120")
    lines: list[str] = []
    try:
        wait_for(_e2e_loading(services, proc, lines), "the end-to-end mode to load rows", timeout=120)
        workers = [p for p in _children_of(proc.pid) if b"consume" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert workers, "the bench runs no consume worker"
        proc.kill()
        proc.communicate(timeout=30)
        wait_for(lambda: _gone(workers), "the bench's workers to end with it", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _remove_scratch(services, _tag(lines[-1]) if lines and TAG.search(lines[-1]) else None)


def _remove_scratch(services, tag: str | None) -> None:
    """What a bench killed with SIGKILL could not remove itself."""
    if tag is None:
        return
    scratch = Scratch(KafkaClientSettings(bootstrap_servers=services.bootstrap), services.database_url)
    scratch.tag, scratch.database = tag, f"{DATABASE_PREFIX}{tag}"
    scratch.close()


def test_the_json_never_holds_nan_or_infinity():
    from consumers.cli.bench import _finite_only

    value = {"a": [1.5, float("inf"), (2, float("nan"))], "b": {"c": float("-inf")}, "d": "x"}
    assert json.dumps(_finite_only(value), allow_nan=False) == '{"a": [1.5, null, [2, null]], "b": {"c": null}, "d": "x"}'
