"""The batch writer thread: order, hand-back of errors and fences, bounded waits (no services)."""

from __future__ import annotations

import threading

import pytest

from consumers.batch import Batch
from consumers.errors import FencedError, Interrupted
from consumers.sink import WriteResult
from consumers.writer import BatchWriter, Job


def _job(n: int) -> Job:
    batch = Batch()
    batch.track("t", 0, n, 1)
    return Job(batch, {("t", 0): n})


def test_outcomes_come_back_in_submission_order():
    seen: list[int] = []

    def write(job: Job) -> WriteResult:
        seen.append(job.expected[("t", 0)])
        return WriteResult()

    writer = BatchWriter(write)
    for n in range(20):
        writer.submit(_job(n))
    outcomes = writer.drain()
    outcomes += writer.close()
    assert seen == list(range(20))
    assert [o.job.expected[("t", 0)] for o in outcomes] == list(range(20))
    assert all(o.result is not None and o.error is None and o.fenced is None for o in outcomes)


def test_errors_and_fences_are_handed_back_not_raised_in_the_thread():
    def write(job: Job) -> WriteResult:
        n = job.expected[("t", 0)]
        if n == 1:
            raise FencedError("moved")
        if n == 2:
            raise RuntimeError("boom")
        return WriteResult()

    writer = BatchWriter(write)
    for n in range(4):
        writer.submit(_job(n))
    outcomes = writer.drain() + writer.close()
    assert [type(o.fenced).__name__ if o.fenced else type(o.error).__name__ if o.error else "ok"
            for o in outcomes] == ["ok", "FencedError", "RuntimeError", "ok"]


def test_drain_and_close_are_bounded_when_a_write_hangs():
    release = threading.Event()

    def write(job: Job) -> WriteResult:
        release.wait(30)
        return WriteResult()

    writer = BatchWriter(write)
    writer.submit(_job(0))
    assert writer.drain(timeout=0.2) == []
    assert writer.busy
    release.set()
    [outcome] = writer.drain(timeout=30)
    assert outcome.result is not None and not writer.busy
    assert writer.close(timeout=30) == []


def test_a_blocked_hand_over_wakes_on_stop():
    release = threading.Event()
    stop = threading.Event()
    writer = BatchWriter(lambda job: release.wait(30) and WriteResult())
    writer.submit(_job(0), stop)  # being written
    writer.submit(_job(1), stop)  # queued: the queue is now full
    stop.set()
    with pytest.raises(Interrupted):
        writer.submit(_job(2), stop)
    release.set()
    assert len(writer.drain(timeout=30)) == 2
