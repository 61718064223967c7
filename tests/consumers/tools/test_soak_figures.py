"""The soak's figures from samples: warm-up, memory growth, whether lag stayed bounded; RSS from /proc."""

from __future__ import annotations

import os
import subprocess
import sys

from consumers.tools.proc_memory import rss_bytes
from consumers.tools.soak_figures import DRAIN, MB, PRODUCE, Sample, figures, warmup_end

STEP = 100  # records per step in these samples


def _samples(lags: list[int], worker_mb: list[float], drain: int = 2) -> list[Sample]:
    """One sample a second, STEP records a second produced, then `drain` samples caught up."""
    out = []
    for i, (lag, mb) in enumerate(zip(lags, worker_mb)):
        out.append(Sample(float(i), PRODUCE, 80 * MB, int(mb * MB), (i + 1) * STEP, (i + 1) * STEP - lag, lag))
    n = len(lags)
    out += [Sample(float(n + j), DRAIN, None, int(worker_mb[-1] * MB), n * STEP, n * STEP, 0) for j in range(drain)]
    return out


def test_warmup_ends_once_the_topics_hold_a_tenth_of_the_records():
    samples = _samples([0] * 40, [100.0] * 40)
    assert samples[warmup_end(samples)].in_kafka == 4 * STEP  # 400 of 4,000 records


def test_flat_memory_and_steady_bursts_are_within_bounds():
    bursts = [STEP if i % 2 else 10 for i in range(40)]
    figs = figures(_samples(bursts, [50.0, 51.0, 52.0] + [150.0 + (i % 3) for i in range(37)]), steps=40)
    assert figs.worker.at_warmup_end == 150.0
    assert figs.worker.growth == 0.0 and figs.worker.peak_after_warmup == 152.0
    assert figs.producer.growth == 0.0 and figs.producer.at_end == 80.0
    assert figs.lag.bounded is True and figs.lag.max == STEP
    assert figs.production_end_s == 39.0 and figs.warmup_end_s == 3.0


def test_rising_lag_and_memory_are_reported():
    figs = figures(_samples([i * STEP // 2 for i in range(40)], [100.0 + 2 * i for i in range(40)]), steps=40)
    assert figs.lag.bounded is False
    assert figs.lag.max_second_half > 1.5 * figs.lag.max_first_half + STEP
    assert figs.worker.growth == 72.0  # from 106 MB at warm-up's end to 178 MB
    assert figs.worker.slope_per_hour > 7000  # 2 MB a second while producing, flat while draining


def test_too_few_samples_give_no_verdict_on_lag():
    figs = figures(_samples([0, 50, 100], [100.0] * 3), steps=3)
    assert figs.lag.bounded is None and figs.lag.max == 100


def test_rss_of_a_running_and_of_a_gone_process():
    assert rss_bytes(os.getpid()) > 10 * MB
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert rss_bytes(child.pid) is None
