"""The end-to-end bench's arithmetic: latency from offset samples, weighted percentiles, bounded lag."""

from __future__ import annotations

from consumers.bench.end_to_end import lag_bounded, latencies, weighted_percentiles


def test_each_run_of_offsets_waits_from_its_first_produced_to_its_first_visible_instant():
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    produced = [0, 2, 5, 5, 5]  # offsets 0-1 produced by t=1, 2-4 by t=2
    visible = [0, 0, 1, 5, 5]  # offset 0 visible at t=2, 1-4 at t=3
    assert latencies(times, produced, visible) == [(1.0, 1), (2.0, 1), (1.0, 3)]


def test_percentiles_weigh_each_latency_by_its_records():
    pairs = [(0.1, 90), (1.0, 5), (5.0, 5)]
    assert weighted_percentiles(pairs) == {"p50": 0.1, "p95": 1.0, "p99": 5.0}


def test_a_lag_that_keeps_growing_is_not_bounded_and_one_that_swings_is():
    growing = [(t, 1000 * t) for t in range(0, 61)]
    swinging = [(t, 5000 if t % 2 else 0) for t in range(0, 61)]
    assert not lag_bounded(growing, 0, 60, step_records=100)
    assert lag_bounded(swinging, 0, 60, step_records=100)
