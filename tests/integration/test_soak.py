"""``society-ingest soak`` end to end, tiny: exact reconciliation, samples, a real PNG, nothing left behind."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from PIL import Image

from consumers.topics import admin_client, all_topics, delete_topics
from support.pipeline import wait_for

pytestmark = pytest.mark.integration


def test_tiny_soak_reconciles_samples_and_cleans_up(services, tmp_path):
    out = tmp_path / "soak"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": services.database_url}
    done = subprocess.run(
        [sys.executable, "-m", "consumers.cli", "soak", "--agents", "50", "--steps", "10", "--steps-per-second", "10",
         "--sample-seconds", "0.5", "--partitions", "2", "--out", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary == json.loads((out / "summary.json").read_text())

    # Exact reconciliation: status --run says complete and every table loaded what was recorded.
    assert summary["status"] == "complete"
    assert summary["verdicts"]["reconciled"] is True
    assert summary["recorded"] == summary["loaded"]
    assert summary["records_produced"] == summary["records_loaded"] == sum(summary["recorded"].values())
    assert summary["recorded"]["agent_memories"] == summary["recorded"]["simulation_events"] == 50 * 10
    assert summary["recorded"]["agents"] == 50
    assert summary["verdicts"]["worker_rss_within_bound"] is True

    # Samples: both processes' RSS, the records in Kafka, loaded and the lag, ending caught up.
    with (out / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3
    assert all(int(r["worker_rss"]) > 0 for r in rows)  # the worker runs to the last sample
    assert max(int(r["worker_rss"]) for r in rows) > 30_000_000  # an interpreter with the worker loaded
    assert max(int(r["producer_rss"] or 0) for r in rows if r["phase"] == "produce") > 30_000_000
    assert all(not r["producer_rss"] for r in rows if r["phase"] == "drain")  # the producer is done
    assert max(int(r["lag"]) for r in rows) > 0
    last = rows[-1]
    assert last["phase"] == "drain" and int(last["lag"]) == 0
    assert int(last["in_kafka"]) == int(last["committed"]) >= summary["records_produced"]
    assert summary["figures"]["worker"]["at_end"] > 0 and summary["figures"]["producer"]["at_end"] > 0

    # The chart is a real PNG with something drawn on it.
    png = out / "soak.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 400
        image.verify()
    with Image.open(png) as image:
        assert sum(1 for n in image.convert("L").histogram() if n) > 10  # lines and text, not a blank page
    assert (out / "worker.log").exists() and (out / "producer.json").exists()

    # The scratch database and topics are gone.
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (summary["database"],)).fetchone()[0] == 0
    topics = admin_client(services.bootstrap).list_topics(timeout=30).topics
    assert not [t for t in topics if t.startswith(summary["topic_prefix"] + ".")]


def test_soak_refuses_to_start_without_postgres(services, tmp_path):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap,
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/society"}
    done = subprocess.run([sys.executable, "-m", "consumers.cli", "soak", "--agents", "2", "--steps", "1",
                           "--timeout", "2", "--out", str(tmp_path / "soak")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot connect to PostgreSQL"), done.stderr
    assert not (tmp_path / "soak").exists()


def _long_soak(services, tmp_path) -> tuple[subprocess.Popen, Path]:
    """A soak far longer than any test, its stderr in a file."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": services.database_url}
    log = tmp_path / "soak.log"
    with log.open("w") as err:
        soak = subprocess.Popen(
            [sys.executable, "-m", "consumers.cli", "soak", "--agents", "20", "--steps", "10000", "--sample-seconds",
             "0.5", "--partitions", "1", "--out", str(tmp_path / "soak")],
            env=env, stdout=subprocess.DEVNULL, stderr=err)
    return soak, log


def test_sigterm_stops_the_soak_and_removes_its_database_and_topics(services, tmp_path):
    soak, log = _long_soak(services, tmp_path)
    try:
        name = wait_for(lambda: re.search(r"topic prefix (soak_\w+)", log.read_text()), "the soak's start line")[1]
        wait_for(lambda: all(any(f" {c} " in line for line in _processes(name)) for c in ("consume", "simulate")),
                 "the soak's worker and producer", timeout=60)
        soak.send_signal(signal.SIGTERM)
        assert soak.wait(60) == 130
    finally:
        if soak.poll() is None:
            soak.kill()
    assert f"soak interrupted: worker and producer stopped, {name} removed" in log.read_text()
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()[0] == 0
    assert not [t for t in admin_client(services.bootstrap).list_topics(timeout=30).topics if t.startswith(name + ".")]
    assert not _processes(name)
    summary = json.loads((tmp_path / "soak" / "summary.json").read_text())  # what was sampled is kept
    assert summary["outcome"] == "interrupted" and (tmp_path / "soak" / "samples.csv").exists()
    groups = admin_client(services.bootstrap).list_consumer_groups(request_timeout=30).result(timeout=30)
    assert name not in [g.group_id for g in groups.valid]


def test_sigkill_of_the_soak_stops_its_children(services, tmp_path):
    soak, log = _long_soak(services, tmp_path)
    name = None
    try:
        name = wait_for(lambda: re.search(r"topic prefix (soak_\w+)", log.read_text()), "the soak's start line")[1]
        wait_for(lambda: all(any(f" {c} " in line for line in _processes(name)) for c in ("consume", "simulate")),
                 "the soak's worker and producer", timeout=60)
        soak.kill()
        soak.wait(30)
        wait_for(lambda: not _processes(name), "the soak's children to end with it", timeout=60)
    finally:
        if soak.poll() is None:
            soak.kill()
        if name is not None:  # what a soak killed with SIGKILL could not remove
            delete_topics(admin_client(services.bootstrap), all_topics(name))
            with psycopg.connect(services.database_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _processes(name: str) -> list[str]:
    """Command lines of the running processes that mention `name`."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and name in line:
            lines.append(line)
    return lines


def test_simulate_keeps_the_pace_asked(services, topic_prefix):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap}
    run = lambda *pace: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, "-m", "consumers.cli", "simulate", "--agents", "3", "--steps", "8", "--topic-prefix",
         topic_prefix, "--json", *pace], env=env, capture_output=True, text=True, timeout=120, check=True).stdout)
    paced, flat_out = run("--steps-per-second", "10"), run()
    assert paced["simulate_seconds"] >= 0.8  # each of the 8 steps lasts at least 0.1 s
    assert paced["recorded"] == flat_out["recorded"]  # the same society, only slower
    assert paced["recorded"]["agent_memories"] == 3 * 8


def test_soak_refuses_a_non_empty_out_folder(services, tmp_path):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": services.database_url}
    env["COLUMNS"] = "300"  # the usage error on one line
    (tmp_path / "soak").mkdir()
    (tmp_path / "soak" / "notes.txt").write_text("mine\n")
    done = subprocess.run([sys.executable, "-m", "consumers.cli", "soak", "--agents", "2", "--steps", "2",
                           "--out", str(tmp_path / "soak")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not empty" in done.stderr
    assert [p.name for p in (tmp_path / "soak").iterdir()] == ["notes.txt"]


def test_createdb_refusal_says_the_role_needs_createdb():
    from consumers.pg_errors import hint

    assert "ALTER ROLE <role> CREATEDB" in hint("42501", message="permission denied to create database")
    assert "GRANT society_loader" in hint("42501", message="permission denied for table agents")


def test_ctrl_c_to_the_process_group_stops_the_children_before_removing_the_group(services, tmp_path):
    """A terminal's Ctrl-C reaches the soak and (before) its children: the worker leaves its group and the
    group is deleted after it, and the last line says removed only because it was."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": services.database_url}
    log = tmp_path / "soak.log"
    with log.open("w") as err:
        soak = subprocess.Popen(
            [sys.executable, "-m", "consumers.cli", "soak", "--agents", "200", "--steps", "10000", "--sample-seconds",
             "0.5", "--partitions", "2", "--out", str(tmp_path / "soak")],
            env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    admin = admin_client(services.bootstrap)
    try:
        name = wait_for(lambda: re.search(r"topic prefix (soak_\w+)", log.read_text()), "the soak's start line")[1]

        def worker_in_group_and_producing() -> bool:
            group = admin.describe_consumer_groups([name], request_timeout=30)[name].result(timeout=30)
            return bool(group.members) and any(" simulate " in line for line in _processes(name))

        wait_for(worker_in_group_and_producing, "the soak's worker in its group and its producer", timeout=90)
        os.killpg(soak.pid, signal.SIGINT)
        assert soak.wait(150) == 130
    finally:
        if soak.poll() is None:
            soak.kill()
    text = log.read_text()
    assert text.rstrip().endswith(f"soak interrupted: worker and producer stopped, {name} removed"), text
    assert "not deleted" not in text and "Traceback" not in text, text
    groups = admin.list_consumer_groups(request_timeout=30).result(timeout=30)
    assert name not in [g.group_id for g in groups.valid]
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()[0] == 0
    assert not [t for t in admin.list_topics(timeout=30).topics if t.startswith(name + ".")]
    assert not _processes(name)


@pytest.mark.parametrize("args", [
    ["--out", "/dev/null"], ["--out", "{tmp}/dangling"], ["--out", "/sys/kernel/soak-out"],
    ["--out", "/proc/soak-out"], ["--out", "{tmp}/file"],
    ["--steps-per-second", "inf"], ["--steps-per-second", "nan"], ["--sample-seconds", "inf"],
    ["--drain-timeout", "inf"], ["--max-worker-growth-mb", "nan"],
])
def test_soak_refuses_what_it_could_not_use_before_anything_starts(services, tmp_path, args):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": services.database_url,
           "COLUMNS": "300"}
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("mine\n")
    out = [] if args[0] == "--out" else ["--out", str(tmp_path / "soak")]
    done = subprocess.run([sys.executable, "-m", "consumers.cli", "soak", "--agents", "2", "--steps", "3", *out,
                           *[a.format(tmp=tmp_path) for a in args]], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert args[0] in done.stderr and "Traceback" not in done.stderr and "topic prefix" not in done.stderr
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "soak").exists()
    assert (tmp_path / "file").read_text() == "mine\n"
