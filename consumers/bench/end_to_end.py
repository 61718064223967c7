"""Mode ``e2e``: a society paced in real time, through one worker, measured from outside.

Producer processes (``--e2e-producers``; one Python thread falls short of
54,000 records a second today) each record half of the agents, one step every
1/steps-per-second seconds, with the real SocietyProducer ``record_*`` calls;
a step that starts late is counted. One ``society-ingest consume`` process
loads them. Every POLL_S this process reads ``ingest_offsets`` (committed with
the rows, so it says what is visible) with the wall-clock time it got the
answer. Afterwards Kafka's time index (``offsets_for_times``) says, for each of
those instants, how many records had been produced (by their Kafka
timestamp, set when ``produce`` was called). A record's latency is the
first instant its row was visible minus the first instant it had been
produced (resolution: one POLL_S); lag is produced minus visible.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from consumers._orphans import stop_with
from consumers.bench import loads, workers
from consumers.bench.mix import RECORDS_PER_AGENT_STEP, Society, call
from consumers.bench.report import Line, ModeResult, histogram
from consumers.bench.rows import end_offsets, reader
from consumers.bench.scratch import Scratch
from consumers.topics import ADMIN_TIMEOUT_S
from producers import ProducerSettings, SocietyProducer, tables
from producers.kafka_config import KafkaClientSettings

log = logging.getLogger(__name__)

POLL_S = workers.POLL_S
TARGET_P95_S = 2.0
#: Width of the latency histogram's buckets in the JSON.
LATENCY_BUCKET_S = 0.01
#: How long the worker may take to drain the topics once the producers stopped.
DRAIN_TIMEOUT_S = 600.0
#: How long the producer processes may take to start (imports, connect, record their agents) and wait for go.
GO_TIMEOUT_S = 300.0


def produce_paced(kafka: KafkaClientSettings, prefix: str, first: int, agents: int, steps_per_s: float,
                  seconds: float, results: Any, ready: Any = None, go: Any = None, parent: int | None = None) -> None:
    """Record agents `first`… for `seconds`, a step every 1/`steps_per_s` s (a producer process's body).

    A step due while the previous one is still being recorded starts at once and counts as late.
    With `ready` (a queue) and `go` (an event): once its agents are recorded the process puts `first`
    on `ready` and waits for `go`; its step clock starts then, together with the other producers'.
    """
    if parent is not None:
        stop_with(parent)  # a bench killed with SIGKILL leaves no producer running
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the bench stops this process
    society = Society(agents, first, seed=first + 1)
    period = 1.0 / steps_per_s
    with SocietyProducer(ProducerSettings(kafka=kafka, topic_prefix=prefix)) as producer:
        producer.start_run({"bench": "e2e", "first_agent": first, "agents": agents})
        for c in society.agents():
            call(producer, c)
        if ready is not None and go is not None:
            ready.put(first)
            if not go.wait(GO_TIMEOUT_S):
                raise RuntimeError(f"no go signal within {GO_TIMEOUT_S:g}s")
        started, started_at, steps, late = time.monotonic(), time.time(), 0, 0
        for calls in society.steps():
            due, now = started + steps * period, time.monotonic()
            if due >= started + seconds or now >= started + seconds:  # a producer behind makes fewer steps
                break
            if due > now:
                time.sleep(due - now)  # the simulation's step clock, not a wait for a condition
            elif now - due > period:
                late += 1
            for c in calls:
                call(producer, c)
            steps += 1
        stopped = time.time()
        producer.end_run()
    results.put({"first_agent": first, "steps": steps, "late_steps": late,
                 "seconds": time.monotonic() - started, "started_at": started_at, "stopped_at": stopped,
                 "planned_s": steps * period, "sent": producer.stats().sent})


class Sampler(threading.Thread):
    """Reads the committed offsets every POLL_S, with the wall-clock time of each answer."""

    def __init__(self, database_url: str, group: str) -> None:
        super().__init__(name="offset-sampler", daemon=True)
        self.samples: list[tuple[float, workers.Offsets]] = []
        self._url, self._group, self._stopping = database_url, group, threading.Event()

    def run(self) -> None:
        with loads.connect(self._url) as conn:
            while not self._stopping.is_set():
                offsets = workers.committed(conn, self._group)
                self.samples.append((time.time(), offsets))
                self._stopping.wait(POLL_S)

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _produced(kafka: KafkaClientSettings, ends: workers.Offsets, times: list[float]) -> list[workers.Offsets]:
    """For each instant, per partition: how many records had a Kafka timestamp before it."""
    consumer = reader(kafka)
    out = []
    try:
        for t in times:
            asked = [TopicPartition(topic, p, int(t * 1000)) for topic, p in ends]
            found = consumer.offsets_for_times(asked, timeout=ADMIN_TIMEOUT_S)
            out.append({(f.topic, f.partition): ends[(f.topic, f.partition)] if f.offset < 0 else f.offset
                        for f in found})
    finally:
        consumer.close()
    return out


def latencies(times: list[float], produced: list[int], visible: list[int]) -> list[tuple[float, int]]:
    """(latency, records) of one partition: for each run of offsets, first visible minus first produced instant."""
    out = []
    i = j = o = 0
    end = visible[-1]
    while o < end:
        while produced[i] <= o:
            i += 1
        while visible[j] <= o:
            j += 1
        nxt = min(produced[i], visible[j])
        out.append((times[j] - times[i], nxt - o))
        o = nxt
    return out


def weighted_percentiles(pairs: list[tuple[float, int]]) -> dict[str, float]:
    """p50, p95, p99 of (value, weight) pairs."""
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    out, seen, qs = {}, 0, [50, 95, 99]
    for value, weight in pairs:
        seen += weight
        while qs and seen >= qs[0] / 100 * total:
            out[f"p{qs.pop(0)}"] = value
    return out


def lag_bounded(series: list[tuple[float, int]], start: float, stop: float, step_records: float) -> bool:
    """Lag bounded: its peak in the last third of the producing window is at most 1.2 × the middle
    third's plus two steps' records (a lag growing steadily from 0 peaks 1.5 × higher)."""
    third = (stop - start) / 3
    mid = [lag for t, lag in series if start + third <= t < start + 2 * third]
    last = [lag for t, lag in series if start + 2 * third <= t <= stop]
    return bool(mid and last) and max(last) <= 1.2 * max(mid) + 2 * step_records


def run(scratch: Scratch, *, agents: int, steps_per_s: float, seconds: float, producers: int, partitions: int,
        logs: Path) -> ModeResult:
    """Measure end to end (see the module doc)."""
    prefix = scratch.topics("e2e", partitions)
    group = f"{prefix}-workers"
    with loads.connect(scratch.database_url) as conn:
        loads.empty(conn)
    running = workers.start_workers(scratch, prefix, group, 1, logs)
    running.wait_assigned()
    sampler = Sampler(scratch.database_url, group)
    sampler.start()
    ctx = multiprocessing.get_context("spawn")
    results, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    share = [agents // producers + (i < agents % producers) for i in range(producers)]
    children = [ctx.Process(target=produce_paced, args=(scratch.kafka, prefix, sum(share[:i]), n, steps_per_s,
                                                        seconds, results, ready, go, os.getpid()),
                            daemon=True)
                for i, n in enumerate(share)]
    log.info("e2e: %d agents, %g steps/s for %gs, %d producer process(es)", agents, steps_per_s, seconds, producers)
    try:
        for child in children:
            child.start()
        _wait_ready(ready, children, GO_TIMEOUT_S)
        go.set()  # every producer's step clock starts now
        reports = _reports(results, children, seconds + DRAIN_TIMEOUT_S)
        for child in children:
            child.join()
        ends = end_offsets(scratch.kafka, prefix)
        log.info("e2e: producers stopped; waiting for the worker to drain")
        caught_up = _wait_drained(sampler, ends, running)
    finally:
        sampler.stop()
        for child in children:
            if child.is_alive():
                child.kill()
        for child in children:
            if child.pid is not None:
                child.join(workers.STOP_TIMEOUT_S)  # killed: ends at once
    with loads.connect(scratch.database_url) as conn:
        got = loads.count_rows(conn)
    worker_stats = running.stop()
    expected = {t: sum(r["sent"][t] for r in reports) for t in tables.TABLES}
    expected[tables.SIMULATION_RUNS] = producers  # two states of one row each
    if got != expected:
        raise workers.WorkerFailed(f"end to end loaded {got}, expected {expected}")
    return _analyse(scratch, ends, sampler.samples, reports, worker_stats, caught_up,
                    agents * steps_per_s * RECORDS_PER_AGENT_STEP, agents * RECORDS_PER_AGENT_STEP)


def _wait_ready(ready: Any, children: list[Any], timeout: float) -> None:
    """Wait until every producer process recorded its agents and waits for go; fails as soon as one died."""
    deadline, waiting = time.monotonic() + timeout, len(children)
    while waiting:
        try:
            ready.get(timeout=POLL_S)
            waiting -= 1
        except queue.Empty:
            crashed = [c.exitcode for c in children if c.exitcode is not None]
            if crashed or time.monotonic() > deadline:
                raise workers.WorkerFailed(
                    f"a producer process did not get ready (exit {crashed or 'none, timed out'})") from None


def _reports(results: Any, children: list[Any], timeout: float) -> list[dict[str, Any]]:
    """Each producer process's report; fails as soon as one died without one."""
    deadline, reports = time.monotonic() + timeout, []
    while len(reports) < len(children):
        try:
            reports.append(results.get(timeout=POLL_S))
        except queue.Empty:
            crashed = [c.exitcode for c in children if c.exitcode not in (None, 0)]
            if crashed or time.monotonic() > deadline:
                raise workers.WorkerFailed(f"a producer process failed (exit {crashed or 'none, timed out'})") from None
    return reports


def _wait_drained(sampler: Sampler, ends: workers.Offsets, running: workers.Workers) -> float:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not (sampler.samples and workers.caught_up(sampler.samples[-1][1], ends)):
        if running.exited() is not None or time.monotonic() > deadline:
            raise workers.WorkerFailed("the worker did not drain the topics")
        time.sleep(POLL_S)
    return sampler.samples[-1][0]


def _analyse(scratch: Scratch, ends: workers.Offsets, samples: list[tuple[float, workers.Offsets]],
             reports: list[dict[str, Any]], worker_stats: list[dict[str, Any]], caught_up: float,
             target_rate: float, step_records: float) -> ModeResult:
    samples = [s for s in samples if s[0] <= caught_up]
    times = [t for t, _ in samples]
    produced = _produced(scratch.kafka, ends, times)
    pairs: list[tuple[float, int]] = []
    for tp, end in ends.items():
        if end:
            prod, vis, top = [], [], 0
            for p in produced:
                top = max(top, p[tp])
                prod.append(top)
            prod[-1] = max(prod[-1], end)  # the last instant came after every produce call
            vis = [s[1].get(tp, 0) for s in samples]
            pairs += latencies(times, prod, vis)
    latency = weighted_percentiles(pairs)
    tps = sorted(ends)
    lag = [(t, sum(p.values()) - sum(s.values())) for (t, s), p in zip(samples, produced, strict=True)]
    started, stopped = min(r["started_at"] for r in reports), max(r["stopped_at"] for r in reports)
    # The verdicts are judged while every producer was producing (they start together, at go).
    all_started, all_stopped = max(r["started_at"] for r in reports), min(r["stopped_at"] for r in reports)
    records = sum(ends.values())
    window = [(t, sum(s.values())) for t, s in samples if all_started <= t <= all_stopped]
    loaded_rate = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) > 1 else 0.0
    # Records of the paced steps (not the agents and run states around them), over the steps' time.
    stepped = sum(sum(r["sent"].values()) - r["sent"][tables.AGENTS] - r["sent"][tables.SIMULATION_RUNS]
                  for r in reports)
    produced_rate = stepped / max(stopped - started, max(r["planned_s"] for r in reports))
    bounded = lag_bounded(lag, all_started, all_stopped, step_records)
    p95_met = latency.get("p95", float("inf")) <= TARGET_P95_S
    lines = [
        Line("end to end: produced (all producer processes)", produced_rate, unit="records/s",
             ratio=produced_rate / target_rate, ratio_to="× the paced rate",
             target=f"{target_rate:,.0f}/s for ≥ 60 s", met=produced_rate >= 0.95 * target_rate),
        Line("end to end: loaded while producing (sustained)", loaded_rate, unit="records/s",
             ratio=loaded_rate / produced_rate, ratio_to="× produced"),
        Line("end to end: lag bounded (peak lag)", max(n for _, n in lag), unit="records", target="bounded",
             met=bounded),
        Line("end to end: record to row, p95", latency.get("p95"), unit="s", target=f"≤ {TARGET_P95_S:g} s",
             met=p95_met, p50=latency.get("p50"), p95=latency.get("p95"), p99=latency.get("p99")),
        Line("end to end: drain after the producers stopped", caught_up - stopped, unit="s"),
    ]
    data = {"records": records, "producers": reports, "worker": worker_stats, "target_records_per_s": target_rate,
            "produced_records_per_s": produced_rate, "loaded_records_per_s": loaded_rate,
            "latency_s": latency, "poll_s": POLL_S, "lag_bounded": bounded, "drain_s": caught_up - stopped,
            "all_producing_s": [round(all_started - started, 3), round(all_stopped - started, 3)],
            "start_skew_s": all_started - started,
            "lag_series": [[round(t - started, 3), n] for t, n in lag],
            # Every sample the figures derive from: per POLL_S instant (seconds from the first producer's
            # start), each partition's committed (visible) and produced offsets; and the latencies per record
            # as a histogram of LATENCY_BUCKET_S buckets (per-record values would be millions of numbers).
            "samples": {"partitions": [f"{t}:{p}" for t, p in tps],
                        "t": [round(t - started, 3) for t in times],
                        "visible": [[s[1].get(tp, 0) for tp in tps] for s in samples],
                        "produced": [[p.get(tp, 0) for tp in tps] for p in produced]},
            "latency_histogram_s": histogram(pairs, LATENCY_BUCKET_S)}
    return ModeResult(data, lines)
