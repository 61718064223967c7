"""Backfill without services: parsing lines, deriving ids, and the checkpoint's resume logic (fake sink)."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from consumers import backfill as bf
from consumers._files import write_atomically
from producers import ids
from support.backfill_fakes import RUN, STARTED, FakeSink, Killed, keys, line, memory, run, write_lines


def parse(raw: bytes | str, table: str | None = None) -> tuple[str, dict[str, Any]] | None:
    return bf.LineParser(table, STARTED).parse(raw.encode() if isinstance(raw, str) else raw)


# -- parsing ------------------------------------------------------------------------

def test_a_line_becomes_its_table_and_record_in_the_producers_terms():
    table, record = parse(line(memory(3, memory_id=str(uuid.UUID(int=5)))))
    assert table == "agent_memories"
    assert record["memory_id"] == str(uuid.UUID(int=5)) and record["importance"] == 0.25
    assert type(record["importance"]) is float and record["tags"] == ["trade"]
    assert "table" not in record


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (b'{"table": "agents", "agent_id_str": "a\xff"}', "<line>", "not valid UTF-8 (byte 39)"),
    (b'{"table": "agents",', "<line>", "not valid JSON"),
    (b'{"table": "agent_memories", "importance": NaN}', "<line>", "NaN is not valid JSON"),
    (b'{"table": "agent_memories", "importance": -Infinity}', "<line>", "-Infinity is not valid JSON"),
    (b'[1, 2]', "<line>", "an array is not a JSON object"),
    (b'"text"', "<line>", "a string is not a JSON object"),
    (b'{"table": "agents", "persona": "a", "persona": "b"}', "<line>", "duplicate key 'persona'"),
    (b'{"table": "agents", "nickname": "x"}', "nickname", "not a column of agents"),
    (b'{"table": "people"}', "table", "unknown table 'people'"),
    (b'{"agent_id_str": "a"}', "table", 'no table: give --table or a "table" field'),
    (b'{"table": "agent_memories", "real_timestamp": 1714560000}', "real_timestamp", "a number is not a time"),
])
def test_bad_lines_name_the_field_and_the_reason(raw, field, reason):
    with pytest.raises(bf.BadLine) as e:
        parse(raw)
    assert e.value.field == field and reason in e.value.reason


def test_table_from_the_option_and_a_conflicting_table_field():
    assert parse(b'{"agent_id_str": "a"}', table="agents")[0] == "agents"
    assert parse(b'{"table": "agents", "agent_id_str": "a"}', table="agents")[0] == "agents"
    with pytest.raises(bf.BadLine, match="the line is a agent_memories record, but --table is agents"):
        parse(line(memory(1)), table="agents")


def test_blank_lines_are_skipped():
    assert parse(b"   \r\n") is None and parse(b"") is None


def test_database_generated_keys_are_ignored_and_counted():
    parser = bf.LineParser(None, STARTED)
    _, record = parser.parse(line({"table": "simulation_events", "event_id": 17, "simulation_run_id": RUN,
                                   "step_timestamp": 1, "event_type": "BORN"}))
    assert "event_id" not in record and parser.ignored == {"simulation_events.event_id": 1}


def test_jsonb_takes_any_json_value_and_a_string_as_json_text_keeping_every_digit():
    base = {"table": "simulation_events", "simulation_run_id": RUN, "step_timestamp": 1, "event_type": "X"}
    _, rec = parse('{"details": {"b": [1, 2.50], "pi": 3.14159265358979323846264}, ' + json.dumps(base)[1:])
    assert rec["details"] == '{"b":[1,2.50],"pi":3.14159265358979323846264}'
    _, rec = parse(line({**base, "details": '"a jsonb string"'}))
    assert rec["details"] == '"a jsonb string"'
    _, rec = parse(line({**base, "details": None}))
    assert rec["details"] is None


def test_negative_zero_keeps_its_sign_in_a_real_column_and_is_0_in_an_integer_one():
    # PostgreSQL writes a REAL -0 as -0, which JSON reads as an integer (Python's int 0 has no sign).
    for text in ("-0", "-0.0", "-0e0"):
        raw = f'{{"table": "agent_memories", "importance": {text}, "step_timestamp": -0}}'
        _, rec = parse(raw)
        assert math.copysign(1, rec["importance"]) == -1.0 and type(rec["importance"]) is float, text
        assert rec["step_timestamp"] == 0 and type(rec["step_timestamp"]) is int
    _, rec = parse(b'{"table": "simulation_events", "details": {"x": -0}, "step_timestamp": 1}')
    assert rec["details"] == '{"x":0}'  # jsonb numbers have no negative zero


def test_states_without_updated_at_get_the_backfills_start_time():
    _, rec = parse(line({"table": "agents", "creation_run_id": RUN, "agent_id_str": "a"}))
    assert rec["updated_at"] == STARTED
    _, rec = parse(line({"table": "agents", "creation_run_id": RUN, "agent_id_str": "a",
                         "updated_at": "2020-01-01T00:00:00Z"}))
    assert rec["updated_at"] == "2020-01-01T00:00:00Z"


# -- derived ids ----------------------------------------------------------------------

def test_derived_ids_depend_on_content_not_on_spelling_and_count_identical_lines():
    one = b'{"table":"agent_memories","content":"x","step_timestamp":1,"agent_id_str":"a","tags":null}'
    same = b'{ "agent_id_str": "a", "step_timestamp": 1, "content": "x", "table": "agent_memories" }'
    other = b'{"table":"agent_memories","content":"y","step_timestamp":1,"agent_id_str":"a"}'
    parser = bf.LineParser(None, STARTED)
    got = [parser.parse(raw)[1]["memory_id"] for raw in (one, same, other, one)]
    assert got[0] != got[1] != got[3] and len(set(got)) == 4  # identical content: numbered 0, 1, 2
    canonical = '{"agent_id_str":"a","content":"x","step_timestamp":1}'
    assert got == [bf.derived_id("agent_memories", canonical, 0), bf.derived_id("agent_memories", canonical, 1),
                   got[2], bf.derived_id("agent_memories", canonical, 2)]
    assert got[0] == uuid.uuid5(ids.NAMESPACE, f"backfill/agent_memories/{canonical}")
    # A second parser (a re-run of the same input) derives the same ids in the same order.
    again = bf.LineParser(None, STARTED)
    assert [again.parse(raw)[1]["memory_id"] for raw in (one, same, other, one)] == got


def test_lines_that_carry_ids_keep_them():
    given = str(uuid.uuid4())
    parser = bf.LineParser(None, STARTED)
    assert parser.parse(line(memory(1, memory_id=given)))[1]["memory_id"] == given
    assert parser.derived == 0


# -- backfill runs with a fake sink ----------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_a_backfill_sends_every_line_once_and_a_rerun_sends_nothing(tmp_path, compress):
    # gzip is told by its magic bytes: the name says nothing.
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(25)] + [memory(0)], compress)
    sink = FakeSink()
    result = run(sink, [path])
    assert result.state == bf.COMPLETE and result.sent == 26 and result.derived_ids == 26
    assert len(keys(sink.acked)) == 26  # the repeated line got its own id
    again = run(sink, [path])
    assert again.state == bf.ALREADY_DONE and again.sent == 0 and len(sink.acked) == 26
    assert again.resumed_lines == 26 and again.totals["agent_memories"].sent == 26


@pytest.mark.parametrize("kill", ["kill_before_ack_at", "kill_after_ack_at"])
def test_a_killed_backfill_resumes_with_the_same_ids_resending_at_most_one_batch(tmp_path, kill):
    objs = [memory(i % 12) for i in range(95)]  # many identical lines: ids count occurrences
    path = write_lines(tmp_path / "in.ndjson", objs)
    sink = FakeSink()
    setattr(sink, kill, 4)
    with pytest.raises(Killed):
        run(sink, [path])
    checkpoint = json.loads(next(tmp_path.glob("*.checkpoint.json")).read_text())
    assert checkpoint["files"][str(path)]["lines"] == 30 and not checkpoint["complete"]
    setattr(sink, kill, None)
    resumed = run(sink, [path])
    assert resumed.state == bf.COMPLETE and resumed.resumed_lines == 30
    counts = keys(sink.acked)
    clean = FakeSink()
    run(clean, [path], checkpoint=tmp_path / "fresh.json")
    assert set(counts) == set(keys(clean.acked)) and len(counts) == 95  # same ids as an uninterrupted run
    resent = sum(n - 1 for n in counts.values())
    assert resent == (10 if kill == "kill_after_ack_at" else 0)  # the acknowledged, uncheckpointed batch


def test_a_bad_line_stops_before_its_batch_is_sent_and_skip_bad_reports_it(tmp_path):
    objs = [memory(i) for i in range(30)]
    objs[14] = {**memory(14), "importance": 1.5}
    objs[22] = {**memory(22), "colour": "red"}
    path = write_lines(tmp_path / "in.ndjson", objs)
    sink = FakeSink()
    stopped = run(sink, [path])
    assert stopped.state == bf.STOPPED and stopped.position == (str(path), 10)
    assert [(e.line, e.field) for e in stopped.errors] == [(15, "importance")]
    assert "less than or equal to 1" in stopped.errors[0].reason
    assert len(sink.acked) == 10  # the first batch only
    done = run(sink, [path], skip_bad=True)
    assert done.state == bf.COMPLETE and done.sent == 18 and done.bad_lines == 2 and len(sink.acked) == 28
    header, *report = [json.loads(x) for x in Path(done.report).read_text().splitlines()]
    assert header["format"] == bf.REPORT_FORMAT
    # The stopped run's entry was cut off (its batch was not checkpointed); each bad line is listed once.
    assert [(r["line"], r["field"]) for r in report] == [(15, "importance"), (23, "colour")]
    assert json.loads(report[1]["raw"])["colour"] == "red" and report[0]["file"] == str(path)


def test_fixing_a_bad_line_after_the_checkpoint_resumes_but_changed_delivered_lines_are_refused(tmp_path):
    objs = [memory(i) for i in range(20)]
    path = tmp_path / "in.ndjson"
    write_lines(path, objs[:15] + [{**memory(15), "step_timestamp": -1}] + objs[16:])
    sink = FakeSink()
    assert run(sink, [path]).state == bf.STOPPED
    write_lines(path, objs)  # fixed
    assert run(sink, [path]).state == bf.COMPLETE and len(keys(sink.acked)) == 20
    write_lines(path, [memory(99)] + objs[1:])
    with pytest.raises(bf.CheckpointMismatchError, match="changed in the 20 line"):
        run(sink, [path])
    assert run(sink, [path], restart=True).sent == 20


def test_a_checkpoint_of_other_inputs_is_never_applied(tmp_path):
    a = write_lines(tmp_path / "a.ndjson", [memory(i) for i in range(3)])
    b = write_lines(tmp_path / "b.ndjson", [memory(i) for i in range(3)])
    checkpoint = tmp_path / "cp.json"
    run(FakeSink(), [a], checkpoint=checkpoint)
    with pytest.raises(bf.CheckpointMismatchError, match="belongs to another backfill"):
        run(FakeSink(), [b], checkpoint=checkpoint)
    with pytest.raises(bf.CheckpointMismatchError):
        bf.Backfill([a], topic_prefix="other", checkpoint=checkpoint).run(FakeSink())
    # Different arguments have different default checkpoints; the report sits beside its checkpoint.
    assert bf.default_checkpoint([a], None, "t") != bf.default_checkpoint([a], None, "other")
    assert bf.default_checkpoint([a], None, "t").parent == tmp_path
    assert bf.default_report(checkpoint) == tmp_path / "cp.json.bad.ndjson"
    assert bf.default_report(tmp_path / "x.checkpoint.json") == tmp_path / "x.bad.ndjson"


def test_lines_appended_to_a_finished_file_are_sent_by_a_rerun(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [memory(i) for i in range(12)])
    sink = FakeSink()
    run(sink, [path])
    with path.open("ab") as f:
        f.write(line(memory(12)) + line(memory(0)))
    again = run(sink, [path])
    assert again.state == bf.COMPLETE and again.sent == 2 and len(keys(sink.acked)) == 14


def test_several_files_number_identical_lines_across_files(tmp_path):
    a = write_lines(tmp_path / "a.ndjson", [memory(1)] * 3)
    b = write_lines(tmp_path / "b.ndjson", [memory(1)] * 2)
    sink = FakeSink()
    sink.kill_after_ack_at = 2  # after a.ndjson (one batch) and b's first batch
    with pytest.raises(Killed):
        run(sink, [a, b], batch_lines=3)
    sink.kill_after_ack_at = None
    run(sink, [a, b], batch_lines=3)
    assert len(keys(sink.acked)) == 5


def test_a_record_over_the_message_limit_is_a_bad_line(tmp_path):
    path = write_lines(tmp_path / "in.ndjson", [memory(1, content="x" * 5000), memory(2)])
    sink = FakeSink(max_message_bytes=2000)
    result = run(sink, [path], skip_bad=True)
    assert [(e.line, e.field) for e in result.errors] == [(1, "<record>")]
    assert "over the 2,000-byte message limit" in result.errors[0].reason and result.sent == 1


def test_the_checkpoint_is_replaced_whole(tmp_path):
    target = tmp_path / "cp.json"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["cp.json"]
