"""Memory and event ids: numbered per (subject, step), only for records enqueued, reproducible."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest

from producers import InvalidRecordError, ProducerSettings, SocietyProducer, ids
from producers._sequences import MEMORIES, StepSequences

#: No broker listens here: records stay queued, which is all these tests need.
NOWHERE = "127.0.0.1:9"
RUN = uuid.UUID("00000000-0000-4000-8000-000000000006")


@pytest.fixture
def make() -> Iterator[object]:
    made: list[SocietyProducer] = []

    def factory(**settings: object) -> SocietyProducer:
        p = SocietyProducer(ProducerSettings(bootstrap_servers=NOWHERE, **settings))
        p.start_run(run_id=RUN)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.abort()


def mem(agent: str, step: int, seq: int) -> uuid.UUID:
    return ids.memory_id(RUN, agent, step, seq)


def evt(subject: str, step: int, seq: int) -> uuid.UUID:
    return ids.event_uid(RUN, step, subject, seq)


def test_a_revisited_step_continues_its_numbering(make) -> None:
    # Steps 5, 6, then 5 again (a late asyncio task): the second step-5 memory used to get seq 0 again.
    p = make()
    got = [p.record_memory("a", "m", 5), p.record_memory("a", "m", 6), p.record_memory("a", "m", 5)]
    assert got == [mem("a", 5, 0), mem("a", 6, 0), mem("a", 5, 1)]
    assert len(set(got)) == 3


def test_events_without_a_primary_agent_are_numbered_per_step_too(make) -> None:
    p = make()
    got = [p.record_event("E", 5), p.record_event("E", 6), p.record_event("E", 5), p.record_event("E", 6)]
    assert got == [evt("", 5, 0), evt("", 6, 0), evt("", 5, 1), evt("", 6, 1)]


def test_memories_and_events_have_their_own_counters(make) -> None:
    p = make()
    assert p.record_event("E", 5, agent_id_primary="a") == evt("a", 5, 0)
    assert p.record_memory("a", "m", 5) == mem("a", 5, 0)
    assert p.record_memory("b", "m", 5) == mem("b", 5, 0)
    assert p.record_event("E", 5, agent_id_primary="a") == evt("a", 5, 1)


def test_explicit_ids_take_no_number(make) -> None:
    p = make()
    given = uuid.uuid4()
    assert p.record_memory("a", "m", 1, memory_id=given) == given
    assert p.record_memory("a", "m", 1) == mem("a", 1, 0)


def test_counters_are_bounded_and_an_evicted_step_warns_once(make, caplog: pytest.LogCaptureFixture) -> None:
    p = make(sequence_steps=2)
    with caplog.at_level(logging.WARNING, logger="producers"):
        assert p.record_memory("a", "m", 1) == mem("a", 1, 0)
        assert p.record_memory("a", "m", 2) == mem("a", 2, 0)
        assert p.record_memory("a", "m", 1) == mem("a", 1, 1)  # within the bound: no warning
        assert p.record_memory("a", "m", 3) == mem("a", 3, 0)  # evicts step 2, the least recently used
        assert caplog.records == []
        assert p.record_memory("a", "m", 2) == mem("a", 2, 0)  # its numbering restarted: a repeat id
        assert p.record_event("E", 2) == evt("", 2, 0)
        assert p.record_memory("a", "m", 2) == mem("a", 2, 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "step 2" in warnings[0].getMessage() and "sequence_steps" in warnings[0].getMessage()


def test_default_bound_is_64_steps() -> None:
    assert ProducerSettings(bootstrap_servers=NOWHERE).sequence_steps == 64


def test_a_rejected_call_takes_no_number(make) -> None:
    p = make()
    with pytest.raises(InvalidRecordError, match="content"):
        p.record_memory("a", "bad\x00", 1)
    with pytest.raises(InvalidRecordError, match="details"):
        p.record_event("E", 1, details={"x": float("nan")})
    assert p.record_memory("a", "good", 1) == mem("a", 1, 0)
    assert p.record_event("E", 1) == evt("", 1, 0)


def calls(p: SocietyProducer) -> list[uuid.UUID]:
    """One step of a simulation, with rejected calls in between; the ids it got."""
    got = [p.record_memory("a", "one", 7)]
    with pytest.raises(InvalidRecordError):
        p.record_memory("a", "bad\x00", 7)
    got.append(p.record_event("met", 7, agent_id_primary="a", details={"with": "b"}))
    with pytest.raises(InvalidRecordError):
        p.record_event("met", 7, agent_id_primary="a", details={"at": {1, 2}})
    got.append(p.record_memory("a", "two", 7))
    got.append(p.record_event("tick", 7))
    with pytest.raises(InvalidRecordError):
        p.record_memory(["a"], "unhashable", 7)
    got.append(p.record_memory("b", "three", 7))
    return got


def test_a_step_rerun_in_a_fresh_producer_gives_the_same_ids(make) -> None:
    first = calls(make())
    assert first == [mem("a", 7, 0), evt("a", 7, 0), mem("a", 7, 1), evt("", 7, 0), mem("b", 7, 0)]
    assert calls(make()) == first


def test_restart_step_reruns_a_step_with_the_same_ids(make) -> None:
    p = make()
    first = calls(p)
    p.record_memory("a", "next step", 8)
    p.restart_step(7)
    assert calls(p) == first
    assert p.record_memory("a", "next step", 8) == mem("a", 8, 1)  # other steps keep counting
    without_restart = calls(p)
    assert not set(without_restart) & set(first)


def test_restart_step_needs_an_int(make) -> None:
    with pytest.raises(InvalidRecordError, match="restart_step.step"):
        make().restart_step("7")


def test_threads_recording_for_one_agent_and_step_get_distinct_numbers(make) -> None:
    p = make()
    got: list[uuid.UUID] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [p.record_memory("a", "m", 3) for _ in range(200)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(mem("a", 3, n) for n in range(800))


def test_a_number_is_given_back_only_while_it_is_the_latest() -> None:
    seqs = StepSequences(max_steps=4)
    numbers, first = seqs.take(MEMORIES, "a", 1)
    _, second = seqs.take(MEMORIES, "a", 1)
    seqs.give_back(numbers, "a", first)  # another call took a number since: keep both
    assert seqs.take(MEMORIES, "a", 1)[1] == 2
    seqs.give_back(numbers, "a", 2)
    seqs.give_back(numbers, "a", second)
    assert seqs.take(MEMORIES, "a", 1)[1] == 1


def test_evicted_steps_are_remembered_as_ranges() -> None:
    seqs = StepSequences(max_steps=1)
    for step in [*range(10, 20), 30, 5, 21, 40]:
        seqs.take(MEMORIES, "a", step)
    assert (seqs._evicted_lo, seqs._evicted_hi) == ([5, 10, 21, 30], [5, 19, 21, 30])
    seqs.take(MEMORIES, "a", 20)  # evicts 40
    seqs.take(MEMORIES, "a", 22)  # evicts 20, which joins 10-19 and 21 into one range
    assert (seqs._evicted_lo, seqs._evicted_hi) == ([5, 10, 30, 40], [5, 21, 30, 40])
    assert [s for s in range(45) if seqs._was_evicted(s)] == [5, *range(10, 22), 30, 40]
