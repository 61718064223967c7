"""A soak: one long simulated run through Kafka into PostgreSQL with one worker, watched throughout.

:func:`run_soak` creates a scratch database (migrated) and a topic prefix of its
own, starts one ``society-ingest consume`` worker and the synthetic society
(``society-ingest simulate``) as separate processes, and samples every few
seconds the RSS of both processes (Linux ``/proc``), the records in the topics,
the records loaded (offsets the worker committed to PostgreSQL with their rows)
and the lag. Once the producer is done and the worker has caught up, it stops
the worker, asks ``society-ingest status --run ID --json`` whether the run
landed exactly (every table: recorded == loaded), writes ``samples.csv``,
``summary.json`` and ``soak.png`` and removes the database and topics (unless
asked to keep them).
"""

from __future__ import annotations

import csv
import logging
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from confluent_kafka import KafkaException
from pydantic import SecretStr

from consumers import status
from consumers._orphans import die_with_parent
from consumers._deps import psycopg
from consumers.errors import ConsumerError
from consumers.migrations import migrate
from consumers.tools import soak_figures
from consumers.tools.proc_memory import rss_bytes
from consumers.tools.soak_figures import DRAIN, PRODUCE, Figures, Sample
from consumers.topics import (DEFAULT_PARTITIONS, admin_client, all_topics, create_topics, delete_groups,
                             delete_topics)
from producers.kafka_config import CONFIG_FILE_ENV, SETTINGS, KafkaClientSettings

#: The issue's bound: the worker's RSS may grow this much after warm-up.
DEFAULT_MAX_WORKER_GROWTH_MB = 50.0
#: How long a stopped worker may take to finish its batch and exit.
WORKER_STOP_TIMEOUT_S = 60.0
#: Give up when no sample could be taken for this long (Kafka or PostgreSQL not answering).
MAX_MISSED_SAMPLES_S = 120.0
log = logging.getLogger(__name__)

#: Environment variables of ours that would change what the child processes do.
_CHILD_UNSET = ("SOCIETY_METRICS_PORT", "SOCIETY_TOPIC_PREFIX", "SOCIETY_CONSUMER_GROUP", CONFIG_FILE_ENV)


class SoakError(ConsumerError):
    """The soak could not run to its end (a process failed, the worker did not catch up)."""


@dataclass(frozen=True, slots=True)
class SoakSettings:
    """What to run and how to watch it."""

    agents: int
    steps: int
    kafka: KafkaClientSettings
    #: The PostgreSQL server's URL; the soak creates its own database there.
    database_url: str
    out: Path
    #: None: the producer runs flat out.
    steps_per_second: float | None = 1.0
    sample_seconds: float = 5.0
    partitions: int = DEFAULT_PARTITIONS
    #: Give up when the worker has not caught up this long after the producer finished.
    drain_timeout_s: float = 900.0
    max_worker_growth_mb: float = DEFAULT_MAX_WORKER_GROWTH_MB
    keep: bool = False
    seed: int = 7
    #: The scratch database's name, also the topic prefix and the consumer group.
    name: str = field(default_factory=lambda: f"soak_{uuid.uuid4().hex[:10]}")


@dataclass(frozen=True, slots=True)
class SoakResult:
    """What a soak found; ``summary`` is what ``summary.json`` holds."""

    summary: dict[str, Any]
    samples: list[Sample]
    figures: Figures

    @property
    def passed(self) -> bool:
        """Reconciled exactly, and no bound judged was broken."""
        return all(v is not False for v in self.summary["verdicts"].values())


def child_environment(kafka: KafkaClientSettings, database_url: str) -> dict[str, str]:
    """The environment of the soak's processes: these Kafka settings and this database, nothing inherited
    that would change them (passwords go through the environment, never a command line)."""
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_UNSET}
    for s in SETTINGS:
        env.pop(s.env, None)
        env.pop(s.file_env, None)
        value = getattr(kafka, s.field)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[s.env] = str(value).lower() if isinstance(value, bool) else str(value)
    env["DATABASE_URL"] = database_url
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "consumers.cli", *args]


def _tail(path: Path, chars: int = 2000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


class _Scratch:
    """The soak's own database and topics, removed on exit unless kept."""

    def __init__(self, settings: SoakSettings, tag: str,
                 on_removed: Callable[[list[str]], None] | None = None) -> None:
        self.settings = settings
        self.on_removed = on_removed
        self.database = tag
        self.prefix = tag
        self.group = tag
        info = psycopg.conninfo.conninfo_to_dict(settings.database_url)
        self.url = psycopg.conninfo.make_conninfo(**{**info, "dbname": tag})
        self.admin = admin_client(settings.kafka)
        #: What the clean-up could not remove (said after an interruption).
        self.left: list[str] = []

    def __enter__(self) -> _Scratch:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        try:
            migrate(self.url)
            create_topics(self.admin, self.prefix, self.settings.kafka, partitions=self.settings.partitions)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.settings.keep:
            return
        self.left = []
        self.delete_group()  # before the topics: its processes have exited (run_soak stops them first)
        delete_topics(self.admin, all_topics(self.prefix))
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if self.on_removed is not None:
            self.on_removed(self.left)

    def delete_group(self) -> None:
        """Delete the worker's consumer group (its worker has exited); one that could not be deleted is
        logged and named in ``left``."""
        # By name: a group its worker just left is not always listed yet.
        _, kept = delete_groups(self.admin, [self.group])
        for name, why in kept.items():
            log.warning("consumer group %s not deleted: %s", name, why)
            self.left.append(f"consumer group {name} ({why})")


class _Process:
    """A child process with its stdout and stderr in files of the output folder."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], out: Path) -> None:
        self.name = name
        self.stdout_path, self.log_path = out / f"{name}.json", out / f"{name}.log"
        self._files: list[IO[Any]] = [self.stdout_path.open("w"), self.log_path.open("w")]
        # Its own process group: a terminal's Ctrl-C reaches the soak alone, which stops the child with one
        # SIGTERM (a worker given a second signal exits at once, without leaving its consumer group).
        self.proc = subprocess.Popen(args, env=env, stdout=self._files[0], stderr=self._files[1], process_group=0,
                                     preexec_fn=die_with_parent())  # a soak killed with SIGKILL leaves none
        self._terminated = False

    def rss(self) -> int | None:
        return rss_bytes(self.proc.pid) if self.proc.poll() is None else None

    def failed(self, what: str) -> SoakError:
        return SoakError(f"the {self.name} {what} (exit {self.proc.returncode}); its log {self.log_path} ends:\n"
                         f"{_tail(self.log_path)}")

    def output(self) -> Any:
        return json.loads(self.stdout_path.read_text())

    def stop(self, timeout_s: float) -> None:
        """SIGTERM once (the worker finishes its batch and leaves its group), SIGKILL after `timeout_s`;
        returns once the process has exited."""
        if self.proc.poll() is None:
            if not self._terminated:
                self._terminated = True
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in self._files:
            f.close()


class _Sampler:
    """Takes one :class:`Sample` of the producer, the worker and the lag."""

    def __init__(self, scratch: _Scratch, kafka: KafkaClientSettings, producer: _Process, worker: _Process) -> None:
        self.scratch, self.kafka, self.producer, self.worker = scratch, kafka, producer, worker
        self.started = time.monotonic()
        self.last_ok: float | None = None
        #: Samples Kafka or PostgreSQL did not answer for.
        self.missed = 0
        self.samples: list[Sample] = []

    def take(self, phase: str) -> Sample | None:
        """A sample, or None when Kafka or PostgreSQL did not answer this time (a busy broker moving a
        partition's leader, say); SoakError once they have not answered for MAX_MISSED_SAMPLES_S."""
        s = self.scratch
        try:
            lags = status.consumer_lag(self.kafka, s.url, s.prefix, s.group)
        except (KafkaException, psycopg.OperationalError) as e:
            self.missed += 1
            since = self.last_ok or self.started
            if time.monotonic() - since > MAX_MISSED_SAMPLES_S:
                raise SoakError(f"no sample for {MAX_MISSED_SAMPLES_S:.0f}s: {e}") from e
            return None
        self.last_ok = time.monotonic()
        sample = Sample(
            seconds=round(self.last_ok - self.started, 2),
            phase=phase,
            producer_rss=self.producer.rss(),
            worker_rss=self.worker.rss(),
            in_kafka=sum(p.high_watermark for p in lags),
            committed=sum(p.stored_offset or 0 for p in lags),
            lag=sum(p.lag for p in lags),
        )
        self.samples.append(sample)
        return sample


def _wait(proc: subprocess.Popen[Any], seconds: float) -> None:
    """Wait up to `seconds` for `proc` to exit (it wakes the soak at once when it does)."""
    try:
        proc.wait(max(0.0, seconds))
    except subprocess.TimeoutExpired:
        pass


def _reconcile(scratch: _Scratch, env: dict[str, str], run_id: str) -> dict[str, Any]:
    """``society-ingest status --run ID --json`` on the soak's database, topics and group."""
    done = subprocess.run(_cli("status", "--run", run_id, "--json", "--topic-prefix", scratch.prefix,
                               "--group", scratch.group), env=env, capture_output=True, text=True, timeout=300)
    if not done.stdout.strip():
        raise SoakError(f"status --run {run_id} printed nothing (exit {done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def write_samples(samples: list[Sample], path: Path) -> Path:
    """The samples as CSV, one row each, RSS in bytes (empty once a process has exited)."""
    fields = [f.name for f in dataclasses.fields(Sample)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for s in samples:
            writer.writerow(["" if v is None else v for v in dataclasses.astuple(s)])
    return path


def run_soak(settings: SoakSettings, on_sample: Callable[[Sample], None] = lambda s: None,
             on_removed: Callable[[list[str]], None] | None = None) -> SoakResult:
    """Run a soak (see the module's docstring); raise SoakError when it cannot finish.

    `on_removed(left)` is called once the clean-up ran (not with ``keep``), whether the soak finished,
    failed or was interrupted: `left` names what it could not remove (empty: everything went).
    """
    out = settings.out
    with _Scratch(settings, settings.name, on_removed) as scratch:
        out.mkdir(parents=True, exist_ok=True)
        env = child_environment(settings.kafka, scratch.url)
        consume = _cli("consume", "--topic-prefix", scratch.prefix, "--group", scratch.group)
        pace = [] if settings.steps_per_second is None else ["--steps-per-second", str(settings.steps_per_second)]
        simulate = _cli("simulate", "--agents", str(settings.agents), "--steps", str(settings.steps),
                        "--seed", str(settings.seed), "--topic-prefix", scratch.prefix, "--json", *pace)
        children: list[_Process] = []
        sampler = None
        try:
            worker = _Process("worker", consume, env, out)
            children.append(worker)
            producer = _Process("producer", simulate, env, out)
            children.append(producer)
            sampler = _Sampler(scratch, settings.kafka, producer, worker)
            simulated, answer, produced_at, drained_at = _watch(settings, scratch, env, sampler, producer, worker,
                                                                on_sample)
        except BaseException as e:  # interrupted or failed: what was sampled still goes to the folder
            for child in reversed(children):  # every child has exited before the group is deleted
                child.stop(WORKER_STOP_TIMEOUT_S)
            write_partial(settings, scratch, sampler.samples if sampler else [], e)
            raise
        finally:
            for child in reversed(children):
                child.stop(WORKER_STOP_TIMEOUT_S)
    return _result(settings, scratch, sampler, simulated, answer,
                   produced_at - sampler.started, drained_at - sampler.started)


def _watch(settings: SoakSettings, scratch: _Scratch, env: dict[str, str], sampler: _Sampler, producer: _Process,
           worker: _Process, on_sample: Callable[[Sample], None]) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """Sample until the producer is done and the worker caught up; stop the worker; reconcile."""
    while producer.proc.poll() is None:
        tick = time.monotonic()
        sample = sampler.take(PRODUCE)
        if sample is not None:
            on_sample(sample)
        if worker.proc.poll() is not None:
            raise worker.failed("exited while the producer ran")
        _wait(producer.proc, settings.sample_seconds - (time.monotonic() - tick))
    produced_at = time.monotonic()
    if producer.proc.returncode != 0:
        raise producer.failed("failed")
    simulated = producer.output()
    while True:
        tick = time.monotonic()
        sample = sampler.take(DRAIN)
        if sample is not None:
            on_sample(sample)
            if sample.lag == 0 and sample.committed == sample.in_kafka:
                break
        if worker.proc.poll() is not None:
            raise worker.failed("exited before it caught up")
        if tick - produced_at > settings.drain_timeout_s:
            left = sampler.samples[-1].lag if sampler.samples else "?"
            raise SoakError(f"the worker had {left} records to load {settings.drain_timeout_s:.0f}s "
                            "after the producer finished")
        _wait(worker.proc, settings.sample_seconds - (time.monotonic() - tick))
    drained_at = time.monotonic()
    worker.stop(WORKER_STOP_TIMEOUT_S)
    if worker.proc.returncode != 0:
        raise worker.failed("did not stop cleanly")
    return simulated, _reconcile(scratch, env, simulated["run_id"]), produced_at, drained_at


def _result(settings: SoakSettings, scratch: _Scratch, sampler: _Sampler, simulated: dict[str, Any],
            answer: dict[str, Any], production_s: float, drained_s: float) -> SoakResult:
    samples = sampler.samples
    figs = soak_figures.figures(samples, settings.steps)
    recorded: dict[str, int] = answer["recorded"] or {}
    loaded: dict[str, int] = answer["loaded"]
    exact = bool(recorded) and all(loaded.get(t) == n for t, n in recorded.items())
    growth = figs.worker.growth
    produced, landed = sum(recorded.values()), sum(loaded.get(t, 0) for t in recorded)
    summary = {
        "run_id": simulated["run_id"],
        "agents": settings.agents,
        "steps": settings.steps,
        "steps_per_second": settings.steps_per_second,
        "sample_seconds": settings.sample_seconds,
        "samples": len(samples),
        "samples_missed": sampler.missed,
        "records_produced": produced,
        "records_loaded": landed,
        "recorded": recorded,
        "loaded": loaded,
        "status": answer["state"],
        "production_s": round(production_s, 1),
        "duration_s": round(drained_s, 1),
        "drain_s": round(drained_s - production_s, 1),
        "records_per_s": round(landed / drained_s) if drained_s else None,
        "max_worker_growth_mb": settings.max_worker_growth_mb,
        "figures": dataclasses.asdict(figs),
        "verdicts": {
            "reconciled": answer["state"] == status.COMPLETE and exact,
            "worker_rss_within_bound": None if growth is None else growth <= settings.max_worker_growth_mb,
            "lag_bounded": figs.lag.bounded,
        },
        "database": scratch.database,
        "topic_prefix": scratch.prefix,
        "kept": settings.keep,
    }
    return SoakResult(summary, samples, figs)


def write_files(result: SoakResult, out: Path) -> dict[str, str]:
    """Write ``samples.csv``, ``soak.png`` and ``summary.json`` (with these paths in it) into `out`."""
    from consumers.tools.soak_chart import draw  # matplotlib: the charts extra

    s = result.summary
    files = {
        "samples": str(write_samples(result.samples, out / "samples.csv")),
        "chart": str(draw(result.samples, result.figures, out / "soak.png",
                          f"soak: {s['agents']:,} agents × {s['steps']:,} steps, {s['records_loaded']:,} records")),
        "summary": str(out / "summary.json"),
    }
    s["files"] = files
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    return files


def write_partial(settings: SoakSettings, scratch: _Scratch, samples: list[Sample], error: BaseException) -> None:
    """After an interruption or a failure: ``samples.csv``, ``soak.png`` (when the samples make one) and a
    ``summary.json`` that says what happened; never raises (the clean-up and the error come next)."""
    out = settings.out
    outcome = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    summary: dict[str, Any] = {
        "outcome": outcome, "error": None if outcome == "interrupted" else str(error).splitlines()[0][:500],
        "agents": settings.agents, "steps": settings.steps, "steps_per_second": settings.steps_per_second,
        "sample_seconds": settings.sample_seconds, "samples": len(samples),
        "database": scratch.database, "topic_prefix": scratch.prefix, "kept": settings.keep, "files": {},
    }
    try:
        summary["files"]["samples"] = str(write_samples(samples, out / "samples.csv"))
        try:
            from consumers.tools.soak_chart import draw  # matplotlib: the charts extra

            figs = soak_figures.figures(samples, settings.steps)
            summary["files"]["chart"] = str(draw(samples, figs, out / "soak.png",
                                                 f"soak ({outcome}): {settings.agents:,} agents × "
                                                 f"{settings.steps:,} steps, {len(samples)} samples"))
        except Exception as e:  # too few samples for figures, or no matplotlib: the CSV and summary remain
            summary["chart_error"] = str(e)[:500]
        summary["files"]["summary"] = str(out / "summary.json")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except OSError:
        pass
