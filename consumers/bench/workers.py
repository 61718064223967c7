"""``society-ingest consume`` processes, as a user starts them, and the offsets they commit.

A measurement starts its workers in a fresh consumer group and ends when
``ingest_offsets`` (written in the same transaction as the rows) reaches the
topics' end offsets: from then on every row is visible.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from consumers.bench.scratch import Scratch, kafka_environment

#: How often the offsets table is read while waiting.
POLL_S = 0.05
#: How long workers may take to finish a batch and exit after SIGTERM.
STOP_TIMEOUT_S = 120.0

Offsets = dict[tuple[str, int], int]


class WorkerFailed(RuntimeError):
    """A worker process exited early or did not load every row."""


def start_workers(scratch: Scratch, prefix: str, group: str, count: int, logs: Path) -> list[subprocess.Popen[Any]]:
    """Start `count` ``society-ingest consume`` processes in `group`; stderr goes to `logs`/<group>-<i>.log."""
    env = kafka_environment(scratch.kafka)
    env.pop("KAFKA_CONFIG_FILE", None)
    procs = []
    for i in range(count):
        err = open(logs / f"{group}-{i}.log", "w")  # noqa: SIM115 (the child owns it)
        procs.append(scratch.adopt(subprocess.Popen(
            [sys.executable, "-m", "consumers.cli", "consume", "-d", scratch.database_url, "--topic-prefix", prefix,
             "--group", group], env=env, stdout=subprocess.PIPE, stderr=err, text=True)))
        err.close()
    return procs


def committed(conn: Any, group: str) -> Offsets:
    """(topic, partition) → next offset, as committed with the rows."""
    return {(t, p): o for t, p, o in conn.execute(
        "SELECT topic, kafka_partition, next_offset FROM ingest_offsets WHERE consumer_group = %s", (group,))}


def caught_up(done: Offsets, ends: Offsets) -> bool:
    """Has every partition been committed up to its end?"""
    return all(done.get(tp, 0) >= end for tp, end in ends.items() if end)


def wait_caught_up(conn: Any, group: str, ends: Offsets, procs: list[subprocess.Popen[Any]], timeout: float) -> float:
    """Poll until `group` committed up to `ends`; return the time.monotonic() it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        done = committed(conn, group)
        now = time.monotonic()
        if caught_up(done, ends):
            return now
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise WorkerFailed(f"a worker exited with {dead[0]} before loading every record")
        if now > deadline:
            raise WorkerFailed(f"the workers did not catch up within {timeout:.0f}s")
        time.sleep(POLL_S)


def stop_workers(procs: list[subprocess.Popen[Any]]) -> list[dict[str, Any]]:
    """SIGTERM the workers; return each one's final stats (its stdout JSON)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=STOP_TIMEOUT_S)
        if p.returncode != 0:
            raise WorkerFailed(f"a worker exited with {p.returncode}")
        out.append(json.loads(stdout))
    return out
