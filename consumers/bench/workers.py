"""``society-ingest consume`` processes, as a user starts them, and the offsets they commit.

A measurement starts its workers in a fresh consumer group and ends when
``ingest_offsets`` (written in the same transaction as the rows) reaches the
topics' end offsets: from then on every row is visible.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers._orphans import die_with_parent
from consumers.bench.scratch import Scratch, kafka_environment

#: How often the offsets table is read while waiting.
POLL_S = 0.05
#: How long workers may take to finish a batch and exit after SIGTERM, and to join their group.
STOP_TIMEOUT_S, READY_TIMEOUT_S = 120.0, 60.0

Offsets = dict[tuple[str, int], int]


class WorkerFailed(RuntimeError):
    """A worker process exited early or did not load every row."""


@dataclass
class Workers:
    """``society-ingest consume`` processes of one group, and their log files."""

    procs: list[subprocess.Popen[Any]]
    logs: list[Path]
    scratch: Scratch

    def wait_assigned(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every worker runs (logged its partition assignment): a SIGTERM before that
        would find Python's default handler, not the worker's."""
        deadline = time.monotonic() + timeout
        for proc, log in zip(self.procs, self.logs, strict=True):
            while "assigned" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise WorkerFailed(f"a worker did not join its group: {log.read_text()[-2000:]}")
                time.sleep(POLL_S)

    def exited(self) -> int | None:
        """The exit code of a worker that ended, if one did."""
        return next((p.returncode for p in self.procs if p.poll() is not None), None)

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM the workers once they run; return each one's final stats (its stdout JSON)."""
        self.wait_assigned()
        for p in self.procs:
            self.scratch.terminate(p)  # once: a second SIGTERM would make it exit without leaving its group
        out = []
        for p, log in zip(self.procs, self.logs, strict=True):
            stdout, _ = p.communicate(timeout=STOP_TIMEOUT_S)
            if p.returncode != 0:
                raise WorkerFailed(f"a worker exited with {p.returncode}: {log.read_text()[-2000:]}")
            out.append(json.loads(stdout))
        return out


def start_workers(scratch: Scratch, prefix: str, group: str, count: int, logs: Path) -> Workers:
    """Start `count` ``society-ingest consume`` processes in `group`; stderr goes to `logs`/<group>-<i>.log."""
    env = kafka_environment(scratch.kafka)
    env.pop("KAFKA_CONFIG_FILE", None)
    env["DATABASE_URL"] = scratch.database_url  # never on a command line: `ps` shows those to every user
    started = Workers([], [], scratch)
    scratch.groups.append(group)
    for i in range(count):
        path = logs / f"{group}-{i}.log"
        with open(path, "w") as err:  # the child keeps its own descriptor
            started.procs.append(scratch.adopt(subprocess.Popen(
                [sys.executable, "-m", "consumers.cli", "consume", "--topic-prefix",
                 prefix, "--group", group], env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                # Its own process group: a terminal's Ctrl-C reaches the bench alone, which stops the worker
                # with one SIGTERM (a second signal would make it exit without leaving its group).
                process_group=0,
                preexec_fn=die_with_parent())))  # a bench killed with SIGKILL leaves no worker running
        started.logs.append(path)
    return started


def committed(conn: Any, group: str) -> Offsets:
    """(topic, partition) → next offset, as committed with the rows."""
    return {(t, p): o for t, p, o in conn.execute(
        "SELECT topic, kafka_partition, next_offset FROM ingest_offsets WHERE consumer_group = %s", (group,))}


def caught_up(done: Offsets, ends: Offsets) -> bool:
    """Has every partition been committed up to its end?"""
    return all(done.get(tp, 0) >= end for tp, end in ends.items() if end)


def wait_caught_up(conn: Any, group: str, ends: Offsets, running: Workers, timeout: float) -> float:
    """Poll until `group` committed up to `ends`; return the time.monotonic() it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        done = committed(conn, group)
        now = time.monotonic()
        if caught_up(done, ends):
            return now
        code = running.exited()
        if code is not None:
            raise WorkerFailed(f"a worker exited with {code} before loading every record")
        if now > deadline:
            raise WorkerFailed(f"the workers did not catch up within {timeout:.0f}s")
        time.sleep(POLL_S)
