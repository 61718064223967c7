"""A background thread that writes batches, so decoding the next batch overlaps the database.

On two cores the client's CPU (decode, validate) and PostgreSQL's (COPY,
indexes, foreign keys) are each about half the cost of a row; writing in a
thread lets them run at the same time. Batches are written one at a time, in
the order handed over, so offsets are still committed in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from consumers.batch import Batch, TopicPartition
from consumers.errors import FencedError, Interrupted
from consumers.sink import WriteResult

#: Batches waiting behind the one being written; the consumer blocks beyond that (backpressure).
MAX_QUEUED_BATCHES = 1
#: How often a blocked hand-over looks at the stop flag.
_WAKE_S = 0.2


@dataclass(slots=True)
class Job:
    """A batch and the stored offsets its commit must find (compare-and-set)."""

    batch: Batch
    expected: dict[TopicPartition, int | None]


@dataclass(slots=True)
class Outcome:
    """What became of a job: a result, a fence, or an unexpected error."""

    job: Job
    result: WriteResult | None = None
    fenced: FencedError | None = None
    error: BaseException | None = None


class BatchWriter:
    """Runs `write(job)` for each submitted job in a thread; outcomes come back in order."""

    def __init__(self, write: Callable[[Job], WriteResult]) -> None:
        self._write = write
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=MAX_QUEUED_BATCHES)
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Job, stop: threading.Event | None = None) -> None:
        """Queue a job; blocks while the writer is busy and the queue is full.

        Raises Interrupted when `stop` is set while waiting.
        """
        while True:
            try:
                self._jobs.put(job, timeout=_WAKE_S)
                return
            except queue.Full:
                if stop is not None and stop.is_set():
                    raise Interrupted("handing a batch to a writer that is still busy") from None

    def outcomes(self) -> list[Outcome]:
        """Outcomes finished so far, oldest first."""
        done = []
        while True:
            try:
                done.append(self._outcomes.get_nowait())
            except queue.Empty:
                return done

    def drain(self, timeout: float | None = None) -> list[Outcome]:
        """Wait (at most `timeout`) until every submitted job is finished; return the outcomes so far."""
        with self._jobs.all_tasks_done:
            self._jobs.all_tasks_done.wait_for(lambda: not self._jobs.unfinished_tasks, timeout)
        return self.outcomes()

    @property
    def busy(self) -> bool:
        """True while a submitted job is not finished."""
        return bool(self._jobs.unfinished_tasks)

    def close(self, timeout: float | None = None) -> list[Outcome]:
        """Finish every job (at most `timeout`), stop the thread, return the last outcomes.

        After a timeout the thread is left behind (a daemon): the job it is on is given up.
        """
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:
            return self.outcomes()
        self._thread.join(timeout)
        return self.outcomes()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                try:
                    self._outcomes.put(Outcome(job, result=self._write(job)))
                except FencedError as e:
                    self._outcomes.put(Outcome(job, fenced=e))
                except BaseException as e:  # handed to the consumer thread, which raises it
                    self._outcomes.put(Outcome(job, error=e))
            finally:
                self._jobs.task_done()
