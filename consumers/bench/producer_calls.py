"""Mode ``producer``: the embedded producer on the caller's thread.

One thread makes the mix's ``record_*`` calls (made up beforehand, not timed)
on a SocietyProducer, timing each call with ``perf_counter_ns``: µs per call
(p50, p99) for each method, and records a second for the whole mix (the calls
back to back, timing included). The baseline is raw confluent-kafka
``Producer.produce`` (then ``poll(0)``) of the same records, read back from
the topics pre-encoded (key and value), into the same topics.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import Producer

from consumers.bench.mix import Society, call
from consumers.bench.report import Line, ModeResult, percentiles
from consumers.bench.rows import messages
from consumers.bench.scratch import Scratch
from producers import ProducerSettings, SocietyProducer

log = logging.getLogger(__name__)

TARGET_P50_US, TARGET_P99_US, TARGET_RATE = 8.0, 40.0, 120_000.0


def _calls(records: int, agents: int) -> list[Any]:
    society = Society(agents, seed=11)
    calls = society.agents()
    for step_calls in society.steps():
        calls += step_calls
        if len(calls) >= records:
            return calls[:records]
    raise AssertionError("unreachable")


def _raw_rate(scratch: Scratch, messages: list[tuple[str, bytes, bytes]]) -> float:
    producer = Producer(ProducerSettings(kafka=scratch.kafka).librdkafka())
    start = time.perf_counter()
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    seconds = time.perf_counter() - start
    producer.flush(120)
    return len(messages) / seconds


def run(scratch: Scratch, *, records: int, agents: int, repeats: int, partitions: int) -> ModeResult:
    """Measure ``record_*`` calls and raw produce (see the module doc)."""
    prefix = scratch.topics("producer", partitions)
    calls = _calls(records, agents)
    per_call: dict[str, list[float]] = defaultdict(list)
    rates, raw_rates, perf = [], [], time.perf_counter_ns
    for _ in range(repeats):
        with SocietyProducer(ProducerSettings(kafka=scratch.kafka, topic_prefix=prefix)) as producer:
            producer.start_run({"bench": "producer"})
            timings = []
            start = perf()
            for c in calls:
                t0 = perf()
                call(producer, c)
                timings.append(perf() - t0)
            rates.append(len(calls) * 1e9 / (perf() - start))
            log.info("producer: %s records/s from one thread", f"{rates[-1]:,.0f}")
            producer.end_run()
        for c, ns in zip(calls, timings, strict=True):
            per_call[c[0]].append(ns / 1000)
    encoded = [(m.topic(), m.key(), m.value()) for m in messages(scratch.kafka, prefix)]
    for _ in range(repeats):
        raw_rates.append(_raw_rate(scratch, encoded))
    stats = {name: {"calls": len(us), **percentiles(us, (50, 99)), "samples": [round(v, 3) for v in us]}
             for name, us in per_call.items()}
    everything = percentiles([us for v in per_call.values() for us in v], (50, 99))
    rate, raw = sorted(rates)[len(rates) // 2], sorted(raw_rates)[len(raw_rates) // 2]
    lines = [Line(f"producer, {name}: p50", s["p50"], unit="µs", p50=s["p50"], p99=s["p99"])
             for name, s in sorted(stats.items())]
    lines += [
        Line("producer, every call of the mix: p50", everything["p50"], unit="µs", target=f"≤ {TARGET_P50_US:g} µs",
             met=everything["p50"] <= TARGET_P50_US),
        Line("producer, every call of the mix: p99", everything["p99"], unit="µs", target=f"≤ {TARGET_P99_US:g} µs",
             met=everything["p99"] <= TARGET_P99_US),
        Line("producer, the mix from one thread", rate, unit="records/s", ratio=rate / raw, ratio_to="× raw produce",
             target=f"≥ {TARGET_RATE:,.0f}/s", met=rate >= TARGET_RATE),
        Line("raw Producer.produce of the pre-encoded records", raw, unit="records/s"),
    ]
    data = {"prefix": prefix, "calls": len(calls), "records_per_s": rates, "raw_produce_records_per_s": raw_rates,
            "per_call_us": stats, "all_calls_us": everything}
    return ModeResult(data, lines)
