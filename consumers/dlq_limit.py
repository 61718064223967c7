"""A limit on dead letters, in the spirit of getsentry/arroyo's DlqLimit.

Bad records are rare; a stream where most records fail is a deployment problem
(a worker without the newest schemas/, a wrong topic prefix, a changed table),
and dead-lettering it would empty the topic into the DLQ. Past either bound the
worker stops before publishing the letters, so a fixed worker loads them.
"""

from __future__ import annotations

import time
from collections import deque

from consumers.errors import DeadLetterLimitError

#: Window of the rate bound.
RATE_WINDOW_S = 60.0


class DeadLetterLimit:
    """Counts dead letters: a run of consecutive ones, and how many in the last minute.

    `max_consecutive` counts letters with no loadable record between them (in the order
    the worker consumed them); `max_per_minute` counts all letters, including the rows
    PostgreSQL rejected. 0 turns a bound off.
    """

    def __init__(self, max_consecutive: int, max_per_minute: int) -> None:
        self.max_consecutive = max_consecutive
        self.max_per_minute = max_per_minute
        self.consecutive = 0
        self._times: deque[float] = deque()

    def good(self) -> None:
        """A loadable record: the run of consecutive letters ends."""
        self.consecutive = 0

    def dead(self, reason: str, *, consecutive: bool = True) -> None:
        """Count one letter; raise DeadLetterLimitError when a bound is passed."""
        now = time.monotonic()
        if consecutive:
            self.consecutive += 1
            if self.max_consecutive and self.consecutive > self.max_consecutive:
                raise DeadLetterLimitError(
                    f"more than {self.max_consecutive} dead letters in a row (--dead-letter-max-consecutive); "
                    f"last: {reason}. {_ADVICE}"
                )
        if self.max_per_minute:
            self._times.append(now)
            while self._times and self._times[0] <= now - RATE_WINDOW_S:
                self._times.popleft()
            if len(self._times) > self.max_per_minute:
                raise DeadLetterLimitError(
                    f"more than {self.max_per_minute} dead letters within a minute (--dead-letter-max-per-minute); "
                    f"last: {reason}. {_ADVICE}"
                )


_ADVICE = (
    "Stopping instead of emptying the topic into the dead-letter topic: this looks like a deployment "
    "problem (e.g. a worker without the newest schemas/), not bad data. The records of the batch in hand "
    "were not committed; a fixed worker loads them."
)
