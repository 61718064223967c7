"""Backfill without services: the files it may write, its lock, the cluster, resumes, progress and stops (fake sink)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from consumers import backfill as bf
from consumers.backfill import run as run_module
from producers.errors import DeliveryError
from producers.producer import DeliveryFailure
from support.backfill_fakes import RUN, STARTED, FakeSink, Killed, line, memory, run, write_lines

REPO = Path(bf.__file__).resolve().parents[2]


def with_a_bad_line(tmp_path: Path, n: int = 12, bad_at: int = 4) -> Path:
    objs: list[Any] = [memory(i) for i in range(n)]
    objs[bad_at] = {**memory(bad_at), "colour": "red"}
    return write_lines(tmp_path / "in.ndjson", objs)


# -- files it never writes ----------------------------------------------------------------

def test_neither_the_report_nor_the_checkpoint_may_be_an_input_however_it_is_named(tmp_path):
    path = with_a_bad_line(tmp_path)
    before = path.read_bytes()
    os.link(path, tmp_path / "hard.ndjson")
    (tmp_path / "soft.ndjson").symlink_to(path)
    for name in ("in.ndjson", "hard.ndjson", "soft.ndjson"):
        with pytest.raises(bf.BackfillError, match="which is an input file: the backfill never writes its inputs"):
            run(FakeSink(), [path], report=tmp_path / name, skip_bad=True)
        with pytest.raises(bf.BackfillError, match="which is an input file"):
            run(FakeSink(), [path], checkpoint=tmp_path / name, restart=True)
    with pytest.raises(bf.BackfillError, match="--report and --checkpoint are the same file"):
        run(FakeSink(), [path], report=tmp_path / "x.json", checkpoint=tmp_path / "x.json")
    assert path.read_bytes() == before


def test_a_file_that_the_backfill_did_not_write_is_never_cut_or_replaced(tmp_path):
    path = with_a_bad_line(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(bf.BackfillError, match="notes.txt: the file exists and is not a backfill report"):
        run(FakeSink(), [path], report=notes, skip_bad=True)
    with pytest.raises(bf.BackfillError, match="notes.txt is not a backfill checkpoint"):
        run(FakeSink(), [path], checkpoint=notes)
    with pytest.raises(bf.BackfillError, match="notes.txt is not a backfill checkpoint, so --restart does not replace"):
        run(FakeSink(), [path], checkpoint=notes, restart=True)
    assert notes.read_text() == "my notes\n"
    # An empty file, or a report of an earlier backfill, may be written over.
    empty = tmp_path / "empty.ndjson"
    empty.touch()
    done = run(FakeSink(), [path], report=empty, skip_bad=True)
    assert done.report == str(empty) and empty.read_text().startswith('{"format": "society-ingest backfill report"')
    again = run(FakeSink(), [path], report=empty, skip_bad=True, restart=True)
    assert again.bad_lines == 1 and len(empty.read_text().splitlines()) == 2  # the header and the one bad line


def test_a_resume_writes_only_the_report_its_checkpoint_names(tmp_path):
    path = with_a_bad_line(tmp_path, n=30, bad_at=24)
    sink = FakeSink()
    sink.kill_after_ack_at = 3  # the batch with the bad line is acknowledged, not checkpointed
    with pytest.raises(Killed):
        run(sink, [path], skip_bad=True)
    checkpoint = next(tmp_path.glob("*.checkpoint.json"))
    report = bf.default_report(checkpoint)
    assert json.loads(checkpoint.read_text())["report"] == str(report)
    other = tmp_path / "other.ndjson"
    other.write_text('{"format": "society-ingest backfill report", "version": 1}\nkept\n')
    with pytest.raises(bf.CheckpointMismatchError, match="lists bad lines in .*: leave --report out to resume"):
        run(FakeSink(), [path], skip_bad=True, report=other)
    assert other.read_text().endswith("kept\n")
    sink.kill_after_ack_at = None
    done = run(sink, [path], skip_bad=True)
    assert done.report == str(report) and [json.loads(x).get("line") for x in report.read_text().splitlines()] == [
        None, 25]


# -- one backfill per checkpoint, one cluster ------------------------------------------------

def test_a_second_backfill_of_the_same_checkpoint_fails_at_once_while_the_first_holds_it(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(5)])
    checkpoint = tmp_path / "cp.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from consumers.backfill import "
         "CheckpointLock; CheckpointLock(Path(sys.argv[1])).__enter__(); print('held', flush=True); time.sleep(60)",
         str(checkpoint)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        started = time.monotonic()
        sink = FakeSink()
        with pytest.raises(bf.CheckpointInUseError, match=f"another backfill is running with the checkpoint {checkpoint}"):
            run(sink, [path], checkpoint=checkpoint)
        assert time.monotonic() - started < 2 and sink.acked == [] and not checkpoint.exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # The operating system dropped the killed process's lock.
    assert run(FakeSink(), [path], checkpoint=checkpoint).sent == 5


def test_a_checkpoint_of_another_kafka_cluster_is_refused(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(5)])
    assert run(FakeSink(kafka_cluster="cluster-a"), [path]).sent == 5
    other = FakeSink(kafka_cluster="cluster-b")
    with pytest.raises(bf.CheckpointMismatchError, match="delivered to Kafka cluster cluster-a, but these brokers are "
                                                         "cluster cluster-b: pass --restart"):
        run(other, [path])
    assert other.acked == []
    assert run(other, [path], restart=True).sent == 5
    assert run(other, [path]).state == bf.ALREADY_DONE


# -- states, appends, batches ------------------------------------------------------------------

STATES = ("simulation_runs", "agents")


def test_states_without_updated_at_are_ordered_by_their_position_in_all_inputs_and_a_resume_keeps_the_times(tmp_path):
    started_run = {"table": "simulation_runs", "run_id": RUN, "start_time": "2024-05-01T10:00:00+00:00",
                   "status": "running"}
    farmer = {"table": "agents", "creation_run_id": RUN, "agent_id_str": "agent_0", "persona": "farmer"}
    a = write_lines(tmp_path / "a.ndjson", [started_run, farmer, memory(1)])
    b = write_lines(tmp_path / "b.ndjson", [{**started_run, "status": "completed"}, {**farmer, "persona": "miller"}])
    sink = FakeSink()
    sink.kill_after_ack_at = 2  # batches: a 1-2, a 3, b 1-2; a 3 is sent twice
    with pytest.raises(Killed):
        run(sink, [a, b], batch_lines=2)
    sink.kill_after_ack_at = None
    run(sink, [a, b], batch_lines=2)
    sent = [(t, f.get("status") or f["persona"], f["updated_at"]) for t, f in sink.acked if t in STATES]
    at = [STARTED + timedelta(microseconds=n) for n in range(5)]
    assert sent == [("simulation_runs", "running", at[0]), ("agents", "farmer", at[1]),
                    ("simulation_runs", "completed", at[3]), ("agents", "miller", at[4])]
    clean = FakeSink()
    run(clean, [a, b], batch_lines=2, checkpoint=tmp_path / "clean.json", now=lambda: STARTED + timedelta(days=1))
    assert [f["updated_at"] - timedelta(days=1) for t, f in clean.acked if t in STATES] == [s[2] for s in sent]


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
def test_lines_appended_after_a_last_line_without_a_newline_are_sent_by_a_rerun(tmp_path, terminator):
    path = tmp_path / "in.ndjson"
    path.write_bytes(line(memory(0)) + line(memory(1)).rstrip(b"\n"))
    sink = FakeSink()
    assert run(sink, [path]).sent == 2
    with path.open("ab") as f:
        f.write(terminator + line(memory(2)))
    again = run(sink, [path])
    assert (again.state, again.sent, again.resumed_lines) == (bf.COMPLETE, 1, 2)


def test_appending_to_a_last_line_without_a_newline_changes_it_and_is_refused(tmp_path):
    path = tmp_path / "in.ndjson"
    path.write_bytes(line(memory(0)) + line(memory(1)).rstrip(b"\n"))
    sink = FakeSink()
    run(sink, [path])
    with path.open("ab") as f:
        f.write(line(memory(2)))
    with pytest.raises(bf.CheckpointMismatchError, match="changed in the 2 line"):
        run(sink, [path])


def test_a_batch_ends_early_at_batch_bytes(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(10, 30)])  # lines of one length
    size = len(line(memory(10)))
    sink = FakeSink()
    assert run(sink, [path], batch_lines=100, batch_bytes=3 * size).sent == 20
    assert sink.batches == 7  # three lines a batch (the third reaches the bound), then the last two


def test_skip_bad_with_no_valid_line_says_so(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [{**memory(i), "colour": "red"} for i in range(3)])
    result = run(FakeSink(), [path], skip_bad=True)
    assert (result.state, result.bad_lines, result.sent) == (bf.NO_VALID_LINE, 3, 0)
    assert run(FakeSink(), [path], skip_bad=True).state == bf.NO_VALID_LINE  # not "already backfilled"
    with path.open("ab") as f:
        f.write(line(memory(9)))
    assert run(FakeSink(), [path], skip_bad=True).state == bf.COMPLETE


# -- progress and stops on resume ---------------------------------------------------------------

def killed_after_two_batches(tmp_path: Path, n: int = 50) -> tuple[Path, FakeSink]:
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(n)])
    sink = FakeSink()
    sink.kill_after_ack_at = 3
    with pytest.raises(Killed):
        run(sink, [path])
    sink.kill_after_ack_at = None
    return path, sink


def test_a_resume_counts_the_lines_delivered_before_in_its_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "CHECK_LINES", 7)
    path, sink = killed_after_two_batches(tmp_path)
    counted: list[int] = []
    resumed = run(sink, [path], progress=counted.append)
    assert resumed.resumed_lines == 20 and counted == [7, 7, 6, 10, 10, 10] and sum(counted) == 50


def test_a_stop_while_the_delivered_lines_are_checked_sends_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "CHECK_LINES", 7)
    path, sink = killed_after_two_batches(tmp_path)
    acked = len(sink.acked)
    stopped = run(sink, [path], stop=lambda: True)
    assert (stopped.state, stopped.position, stopped.sent, stopped.was_complete) == (
        bf.INTERRUPTED, (str(path), 20), 0, False)
    assert len(sink.acked) == acked
    assert run(sink, [path]).resumed_lines == 20


def test_a_stop_after_the_last_batch_is_no_interruption_and_a_finished_backfill_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "CHECK_LINES", 7)
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(30)])
    sink = FakeSink()
    asked: list[bool] = []
    sink.after_ack = lambda n: asked.append(n == 3)
    assert run(sink, [path], stop=lambda: bool(asked and asked[-1])).state == bf.COMPLETE
    again = run(sink, [path], stop=lambda: True)
    assert (again.state, again.was_complete, again.sent) == (bf.INTERRUPTED, True, 0)


# -- error lines ----------------------------------------------------------------------------------

def test_inputs_must_be_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for name in (fifo, Path("/dev/null")):
        with pytest.raises(bf.BackfillError, match="is not a regular file: backfill reads regular files "
                                                   r"\(it re-reads them to resume\)"):
            run(FakeSink(), [name])


def test_a_checkpoint_under_a_file_names_the_folder_and_does_not_advise_restart(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [memory(1)])
    with pytest.raises(bf.BackfillError) as e:
        run(FakeSink(), [path], checkpoint=path / "cp.json", restart=True)
    assert f"its folder {path} is missing or not a folder" in str(e.value) and "--restart" not in str(e.value)


def test_an_unusable_report_path_is_refused_before_anything_is_sent(tmp_path):
    path = with_a_bad_line(tmp_path)
    sink = FakeSink()
    with pytest.raises(bf.BackfillError) as e:
        run(sink, [path], report=path / "bad.ndjson", checkpoint=tmp_path / "cp.json", skip_bad=True)
    assert str(e.value) == (f"cannot write the bad-line report {path / 'bad.ndjson'}: {path} is not a folder; "
                            "pass --report PATH to keep it elsewhere")
    assert sink.acked == [] and not (tmp_path / "cp.json").exists()


def test_a_checkpoint_unwritable_after_a_batch_says_the_batch_will_be_sent_again(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(30)])
    checkpoint = tmp_path / "cp.json"

    def turn_the_checkpoint_into_a_folder(n: int) -> None:
        if n == 2:
            checkpoint.unlink()
            (checkpoint / "x").mkdir(parents=True)

    sink = FakeSink()
    sink.after_ack = turn_the_checkpoint_into_a_folder
    with pytest.raises(bf.BackfillError) as e:
        run(sink, [path], checkpoint=checkpoint)
    assert str(e.value) == (f"cannot write the checkpoint {checkpoint}: Is a directory; lines 11–20 of {path} were "
                            "sent and acknowledged, so the resume sends them again (PostgreSQL still holds each row "
                            "once): make the checkpoint writable and run the same command again")


def test_a_delivery_failure_says_how_long_the_batch_waited():
    failure = DeliveryFailure("t.agent_memories", "run/agent_1", "Broker: Message size too large")
    producer = SimpleNamespace(
        settings=SimpleNamespace(max_message_bytes=1_000_000, message_timeout_ms=30_000),
        flush=lambda timeout: (_ for _ in ()).throw(
            DeliveryError(f"1 record(s) failed delivery and 2 still queued after {timeout}s", [failure], 2)),
    )
    with pytest.raises(bf.BackfillDeliveryError) as e:
        bf.ProducerSink(producer, "c").deliver()
    assert str(e.value) == ("Kafka did not acknowledge the batch within 0.0s: 1 record(s) failed (the first: "
                            "t.agent_memories key=run/agent_1: Broker: Message size too large) and 2 still queued")
