"""Run N worker processes of one consumer group, as one command.

One Python process decodes on one core at most; a machine with more cores
runs more workers in the same group, and Kafka shares the partitions out.
The parent only supervises:

- SIGTERM/SIGINT to the parent are forwarded to every child as SIGTERM (each
  finishes its batch, commits and exits 0); a second one is forwarded too,
  and children then exit at once (the worker's own second-signal rule).
  Children run in their own process group, so a terminal's Ctrl-C reaches
  the parent only and each child gets one signal, not two.
- When a child fails (a fatal error, or it dies), the parent stops the others
  the same way and raises ``WorkerProcessError`` with that child's error line.
- When the parent dies without stopping them (SIGKILL), each child notices
  (its end of a pipe from the parent closes) and stops as on SIGTERM.
- A child that exits 0 without the parent having asked (someone signalled
  only that child) is logged as a warning naming it, its status and how many
  still run; the others go on. When the last one stopped that way, the parent
  raises ``WorkerProcessError`` (exit 1): nothing consumes any more. Unless
  `finish` says children end on their own (``--idle-exit``): then that is
  their normal end.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from consumers.errors import FatalError

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)


class WorkerProcessError(FatalError):
    """A worker process failed; the message is its error line."""


#: work(index) runs worker `index` to its end; it returns its stats (JSON-able) or raises.
Work = Callable[[int], Any]
#: describe(error) -> the one line to report for a child's failure.
Describe = Callable[[BaseException], str]


def _stop_when_orphaned(parent_alive: int) -> None:
    """SIGTERM this process once `parent_alive` reads end of file: the parent is gone."""

    def watch() -> None:
        while os.read(parent_alive, 1):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child(work: Work, describe: Describe, index: int, results: Connection, parent_alive: tuple[int, int]) -> None:
    os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the parent, which forwards it once
    os.close(parent_alive[1])  # only the parent holds the write end open
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _stop_when_orphaned(parent_alive[0])
    try:
        stats = work(index)  # installs the worker's own signal handlers
    except BaseException as e:  # noqa: BLE001 - every failure becomes the parent's error line
        results.send(("failed", index, describe(e)))
        results.close()
        os._exit(1)
    results.send(("done", index, stats))
    results.close()


def run_processes(count: int, work: Work, describe: Describe, *, finish: bool = False) -> list[Any]:
    """Run `work(i)` for i in 0..count-1, each in its own (forked) process; return their stats.

    Forked, not spawned: the children inherit the CLI's settings, logging and
    password scrubbing as they are. The caller must hold no open Kafka client
    or database connection (their threads and sockets do not survive a fork).
    Raises WorkerProcessError when a child fails, or when every child stopped without being asked
    (unless `finish`: the children end on their own, e.g. after an idle time).
    """
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    parent_alive = os.pipe()
    children: list[Any] = []
    stopping = False

    signalled = 0  # how many times the children were told to stop (a second time: at once)

    def stop_children(times: int = 1) -> None:
        nonlocal signalled
        while signalled < times:
            signalled += 1
            for p in children:
                if p.exitcode is None and p.pid is not None:
                    try:
                        os.kill(p.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass

    def forward(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        stop_children(signalled + 1)

    # Blocked until the handlers are in place, in the parent and in each child.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        for i in range(count):
            p = ctx.Process(target=_child, args=(work, describe, i, writer, parent_alive),
                            name=f"society-ingest-worker-{i}")
            p.start()
            children.append(p)
        writer.close()
        os.close(parent_alive[0])
        for sig in _SIGNALS:
            signal.signal(sig, forward)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return _supervise(children, reader, stop_children, lambda: stopping, finish)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in children:
            p.join()
        reader.close()
        os.close(parent_alive[1])


def _supervise(children: list[Any], reader: Connection, stop_children: Callable[[], None],
               stopping: Callable[[], bool], finish: bool = False) -> list[Any]:
    stats: dict[int, Any] = {}
    failure: str | None = None
    alive = {p.sentinel: (i, p) for i, p in enumerate(children)}
    reader_open = True
    while alive:
        ready = wait([*alive, reader] if reader_open else list(alive))
        # Messages first: a failed child sends its line before it exits.
        while reader_open and reader.poll():
            try:
                kind, index, payload = reader.recv()
            except EOFError:
                reader_open = False
                break
            if kind == "done":
                stats[index] = payload
            elif failure is None:
                failure = f"worker process {index}: {payload}"
        for sentinel in ready:
            if sentinel not in alive:
                continue
            index, p = alive.pop(sentinel)
            p.join()
            if p.exitcode != 0 and failure is None and not stopping():
                failure = f"worker process {index} exited with status {p.exitcode}"
            elif p.exitcode == 0 and failure is None and not stopping():
                (log.info if finish else log.warning)(
                    "worker process %d (pid %d) %s with status 0; %d of %d still running", index, p.pid,
                    "finished" if finish else "stopped without the parent asking", len(alive), len(children))
                if not alive and not finish:
                    failure = (f"the worker processes stopped on their own (the last, worker process {index}, "
                               "exited with status 0 without the parent asking): nothing consumes any more")
        if failure is not None:
            stop_children()
    if failure is not None:
        raise WorkerProcessError(failure)
    return [stats.get(i) for i in range(len(children))]
