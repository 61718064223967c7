"""The sink against a real PostgreSQL: fencing, bisection down to the bad rows, commit contents."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from psycopg import pq

from consumers.batch import Batch, DeadLetter, Source
from consumers.errors import FencedError
from consumers.sink import PostgresSink
from consumers.table_specs import SPECS
from support.db import count, fetch

pytestmark = pytest.mark.integration

TOPIC = "t.agent_memories"
RUN = uuid.UUID("00000000-0000-4000-8000-000000000001")


def _memory(offset: int, **overrides) -> tuple:
    values = {
        "memory_id": uuid.uuid5(RUN, str(offset)), "agent_id_str": "agent_0", "simulation_run_id": RUN,
        "step_timestamp": offset, "real_timestamp": dt.datetime.now(dt.timezone.utc), "content": f"m{offset}",
        "importance": 0.5, "tags": ["x"], "related_agent_id": None,
    }
    values.update(overrides)
    return tuple(values[c] for c in SPECS["agent_memories"].column_names)


def _batch(rows: dict[int, tuple], partition: int = 0) -> Batch:
    batch = Batch()
    for offset, row in rows.items():
        batch.track(TOPIC, partition, offset, 100)
        batch.add("agent_memories", row, Source(TOPIC, partition, offset, None, None, b"raw"))
    return batch


def _never_dead(dead: list[DeadLetter]) -> None:
    raise AssertionError(f"unexpected dead letters: {dead}")


def test_a_stale_owner_is_fenced_and_commits_nothing(database_url):
    # Two workers believe they own partition 0 (a rebalance in flight): both read "nothing stored".
    old_owner, new_owner = PostgresSink(database_url, "g"), PostgresSink(database_url, "g")
    try:
        assert old_owner.load_offsets([(TOPIC, 0)]) == {} == new_owner.load_offsets([(TOPIC, 0)])
        rows = {o: _memory(o) for o in range(10)}
        result = new_owner.write(_batch(rows), {(TOPIC, 0): None}, _never_dead)
        assert result.inserted["agent_memories"] == 10
        # The old owner's batch of the same records expected the offset it read: its compare-and-set fails...
        with pytest.raises(FencedError, match=r"t\.agent_memories\[0\]"):
            old_owner.write(_batch(rows), {(TOPIC, 0): None}, _never_dead)
        # ...and its rows were rolled back with the offsets: nothing is duplicated.
        assert count(database_url, "agent_memories") == 10
        assert fetch(database_url, "SELECT next_offset FROM ingest_offsets") == [(10,)]
        # Re-seeking to the stored offset, the old owner continues from there and commits.
        assert old_owner.load_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 10}
        more = {o: _memory(o) for o in range(10, 15)}
        old_owner.write(_batch(more), {(TOPIC, 0): 10}, _never_dead)
        assert count(database_url, "agent_memories") == 15
        assert fetch(database_url, "SELECT next_offset FROM ingest_offsets") == [(15,)]
    finally:
        old_owner.close()
        new_owner.close()


@pytest.mark.parametrize("bad_offsets", [[0], [99], [3, 4, 5], [0, 37, 38, 64, 99], list(range(0, 100, 7))])
def test_bisection_dead_letters_exactly_the_bad_rows(database_url, bad_offsets):
    # Rows the models did not validate (the worker's --no-validate): PostgreSQL's CHECK rejects them.
    rows = {o: _memory(o, importance=1.5 if o in bad_offsets else 0.5) for o in range(100)}
    published: list[DeadLetter] = []
    sink = PostgresSink(database_url, "g")
    try:
        result = sink.write(_batch(rows), {(TOPIC, 0): None}, published.extend)
    finally:
        sink.close()
    assert sorted(d.source.offset for d in published) == bad_offsets
    assert {d.error_class for d in published} == {"CheckViolation"}
    assert [d.source.offset for d in result.dead] == [d.source.offset for d in published]
    assert result.inserted["agent_memories"] == 100 - len(bad_offsets)
    stored = {s for (s,) in fetch(database_url, "SELECT step_timestamp FROM agent_memories")}
    assert stored == set(range(100)) - set(bad_offsets)
    assert fetch(database_url, "SELECT next_offset FROM ingest_offsets") == [(100,)]


def test_a_failed_dead_letter_publish_commits_nothing(database_url):
    rows = {0: _memory(0), 1: _memory(1, importance=1.5)}

    def broker_down(dead: list[DeadLetter]) -> None:
        raise ConnectionError("broker unavailable")

    sink = PostgresSink(database_url, "g")
    try:
        with pytest.raises(ConnectionError):
            sink.write(_batch(rows), {(TOPIC, 0): None}, broker_down)
    finally:
        sink.close()
    # Rows, offsets and the letter go together or not at all.
    assert count(database_url, "agent_memories") == 0
    assert count(database_url, "ingest_offsets") == 0


@pytest.mark.parametrize("tags", [[], ["a"], ["trade", "ünïcode", ""], ["x" * 255] * 3, ["a", None, "b"]])
def test_text_array_dumper_writes_psycopgs_bytes(database_url, tags):
    # The sink's own text[] dumper is faster than psycopg's generic list dumper; the bytes must be equal.
    sink = PostgresSink(database_url, "g")
    try:
        conn = sink._connection()
        ours = conn.adapters.get_dumper_by_oid(conn.adapters.types["text"].array_oid, pq.Format.BINARY)
        reference = psycopg.adapt.Transformer(psycopg.adapt.AdaptersMap(psycopg.adapters))
        reference.set_dumper_types([conn.adapters.types["text"].array_oid], pq.Format.BINARY)
        assert ours(list, conn).dump(tags) == reference.dump_sequence([tags], [pq.Format.BINARY])[0]
    finally:
        sink.close()


def test_jsonb_values_load_as_written(database_url):
    # Direct COPY writes jsonb through psycopg's dumper, fed the validated text unchanged.
    details = '{"b": [1, 2.5, null], "a": {"ü": "x"}}'
    sink = PostgresSink(database_url, "g")
    try:
        batch = Batch()
        row = {c: None for c in SPECS["simulation_events"].column_names}
        row.update(event_uid=uuid.uuid4(), simulation_run_id=RUN, step_timestamp=1, event_type="E", details=details)
        batch.track("t.simulation_events", 0, 0, 1)
        batch.add("simulation_events", tuple(row[c] for c in SPECS["simulation_events"].column_names),
                  Source("t.simulation_events", 0, 0, None, None, b""))
        sink.write(batch, {("t.simulation_events", 0): None}, _never_dead)
    finally:
        sink.close()
    assert fetch(database_url, "SELECT details FROM simulation_events") == [({"b": [1, 2.5, None], "a": {"ü": "x"}},)]
