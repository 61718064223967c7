"""Run producers and workers against the test services."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
import time
from collections.abc import Callable
from typing import Any

from consumers.settings import WorkerSettings
from consumers.worker import Worker, WorkerStats
from producers import AvroCodec, ProducerSettings, SocietyProducer
from producers.codec import default_schema_dir

#: Upper bound for any wait on the pipeline in tests (a hang fails, never passes).
WAIT_TIMEOUT_S = 90.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_TIMEOUT_S, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def producer(bootstrap: str, prefix: str, **overrides: Any) -> SocietyProducer:
    return SocietyProducer(ProducerSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, **overrides))


def record_memories(bootstrap: str, prefix: str, n: int) -> None:
    """A run of `n` memories of agent_0 (steps 0..n-1), delivered."""
    p = producer(bootstrap, prefix)
    p.start_run()
    for i in range(n):
        p.record_memory("agent_0", f"memory {i}", i)
    p.end_run()
    p.close()


def add_memories(p: SocietyProducer, start: int, n: int) -> None:
    """Memories `start`..`start+n-1` of agent_0 (one a step) in the producer's run, delivered."""
    for i in range(start, start + n):
        p.record_memory("agent_0", f"memory {i}", i)
    p.flush()


def codec_lacking_newest_memory_schema(tmp_path: Path) -> AvroCodec:
    """The codec of a worker deployed without the newest agent_memories schema."""
    old = tmp_path / "schemas"
    shutil.copytree(default_schema_dir(), old)
    (old / "agent_memories" / "v2.avsc").unlink()
    return AvroCodec(old)


def worker_settings(bootstrap: str, database_url: str, prefix: str, **overrides: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "database_url": database_url,
        "topic_prefix": prefix,
        "group_id": f"{prefix}-workers",
        "linger_ms": 200,
        "retry_initial_s": 0.1,
        "retry_max_s": 1.0,
    }
    base.update(overrides)
    return WorkerSettings(**base)


class WorkerThread:
    """A Worker running in a background thread; use as a context manager."""

    def __init__(self, settings: WorkerSettings, codec: AvroCodec | None = None, metrics: Any = None) -> None:
        self.worker = Worker(settings, codec, metrics=metrics)
        self.error: BaseException | None = None
        self.stats: WorkerStats | None = None
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)

    def _run(self) -> None:
        try:
            self.stats = self.worker.run()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failure(self, timeout: float = WAIT_TIMEOUT_S) -> BaseException:
        """Wait until the worker ends on its own and return its error (fail if it does neither)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the worker kept running for {timeout}s")
        error, self.error = self.error, None
        if error is None:
            raise AssertionError("the worker ended without an error")
        self.stats = self.worker.stats
        return error

    def stop(self, timeout: float = WAIT_TIMEOUT_S) -> WorkerStats:
        self.worker.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("worker did not stop")
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


def drain(
    settings: WorkerSettings, done: Callable[[], Any], what: str, codec: AvroCodec | None = None
) -> WorkerStats:
    """Run a worker until `done()` holds, then stop it and return its stats."""
    with WorkerThread(settings, codec) as w:
        wait_for(lambda: w.error is not None or done(), what)
        return w.stop()


#: Fast failure detection for tests that kill workers (the broker's minimum session timeout).
FAST_GROUP_PROPS = ("-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000")


class SpawnedWorker:
    """``society-ingest consume`` in a separate process; stderr goes to a log file, not a pipe
    (a full pipe would block the worker)."""

    def __init__(self, bootstrap: str, database_url: str, prefix: str, group: str, log: Path, *args: str) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url}
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumers.cli", "consume", "--topic-prefix", prefix, "--group", group, *args],
            env=env, stdout=subprocess.PIPE, stderr=self._err, text=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def terminate(self) -> dict:
        """SIGTERM; assert exit code 0; return the stats it printed."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=WAIT_TIMEOUT_S)
        self._err.close()
        assert self.proc.returncode == 0, self.log_tail()
        return json.loads(out)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or commit."""
        if self.alive():
            self.proc.kill()
        self.proc.communicate(timeout=WAIT_TIMEOUT_S)
        self._err.close()

    def check_alive(self) -> None:
        """Fail with the worker's log if it exited on its own."""
        if not self.alive():
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
