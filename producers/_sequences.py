"""Sequence numbers of client-side ids, counted per (subject, step) in bounded memory.

A memory's id is UUIDv5(run, agent, step, n) where n counts the memories that
agent recorded at that step; an event's uses its primary agent (or "" when it
has none). Counters are kept for the `max_steps` most recently used steps, so
a late asyncio task recording for an earlier step still gets the next number.
When a step whose counters were evicted is used again its numbers restart at 0
and may repeat ids already sent: that is logged once per such return, and a
repeated id with different content is kept in ``ingest_conflicts`` by the
workers, so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_right
from collections import OrderedDict

log = logging.getLogger("producers.producer")

#: Kinds of ids, each with its own counters.
MEMORIES = 0
EVENTS = 1


class StepSequences:
    """Thread-safe counters; `take` a number, `give_back` it if the record was not enqueued."""

    __slots__ = ("max_steps", "_lock", "_steps", "_evicted_lo", "_evicted_hi", "_newest")

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self._lock = threading.Lock()
        # step -> (memory counters, event counters), each subject -> next number; oldest first.
        self._steps: OrderedDict[int, tuple[dict[str, int], dict[str, int]]] = OrderedDict()
        # Evicted steps as sorted disjoint ranges [lo, hi]: one range for a run that moves forward.
        self._evicted_lo: list[int] = []
        self._evicted_hi: list[int] = []
        #: (step, counters) of the most recently used step: most calls are for it, already last in order.
        self._newest: tuple[int | None, tuple[dict[str, int], dict[str, int]]] = (None, ({}, {}))

    def take(self, kind: int, subject: str, step: int) -> tuple[dict[str, int], int]:
        """The next number of (`subject`, `step`) and the counters it was taken from."""
        with self._lock:
            newest, counters = self._newest
            if newest != step:
                counters = self._steps.get(step)
                if counters is None:
                    counters = self._add_step(step)
                else:
                    self._steps.move_to_end(step)
                self._newest = (step, counters)
            numbers = counters[kind]
            seq = numbers.get(subject, 0)
            numbers[subject] = seq + 1
            return numbers, seq

    def give_back(self, numbers: dict[str, int], subject: str, seq: int) -> None:
        """Return `seq` if it is still the latest number taken for `subject` in `numbers`."""
        with self._lock:
            if numbers.get(subject) == seq + 1:
                if seq:
                    numbers[subject] = seq
                else:
                    del numbers[subject]

    def restart(self, step: int) -> None:
        """Forget `step`'s counters: its next ids are those of its first run again."""
        with self._lock:
            self._steps.pop(step, None)
            self._newest = (step, self._add_step(step, warn=False))

    def clear(self) -> None:
        """Forget everything (a new run)."""
        with self._lock:
            self._newest = (None, ({}, {}))
            self._steps.clear()
            self._evicted_lo.clear()
            self._evicted_hi.clear()

    def _add_step(self, step: int, warn: bool = True) -> tuple[dict[str, int], dict[str, int]]:
        if warn and self._was_evicted(step):
            log.warning(
                "step %d is recorded again after its id counters were evicted (more than %d other steps "
                "were used since; ProducerSettings.sequence_steps): its memory and event ids restart at 0 "
                "and may repeat ids already sent (a repeat with different content is kept in "
                "ingest_conflicts)",
                step,
                self.max_steps,
            )
        counters: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._steps[step] = counters
        if len(self._steps) > self.max_steps:
            old, _ = self._steps.popitem(last=False)
            self._mark_evicted(old)
        return counters

    def _was_evicted(self, step: int) -> bool:
        i = bisect_right(self._evicted_lo, step)
        return i > 0 and self._evicted_hi[i - 1] >= step

    def _mark_evicted(self, step: int) -> None:
        lo, hi = self._evicted_lo, self._evicted_hi
        i = bisect_right(lo, step)  # ranges before i start at or below step
        if i and hi[i - 1] >= step:
            return
        joins_left = i > 0 and hi[i - 1] == step - 1
        joins_right = i < len(lo) and lo[i] == step + 1
        if joins_left and joins_right:
            hi[i - 1] = hi[i]
            del lo[i], hi[i]
        elif joins_left:
            hi[i - 1] = step
        elif joins_right:
            lo[i] = step
        else:
            lo.insert(i, step)
            hi.insert(i, step)
