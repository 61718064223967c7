"""What a soak's samples say: warm-up, memory growth after it, whether lag stayed bounded.

Definitions (the README's "Soak" section repeats them):

- **warm-up** ends at the first sample at which the topics hold
  :data:`WARMUP_FRACTION` of the run's records, i.e. after about the first 10%
  of the steps (the simulation records the same number of records each step);
- **growth** of a process is its RSS at the last sample minus its RSS at the
  end of warm-up; the worker's must stay within the soak's bound (50 MB);
- **lag is bounded** when, over the production after warm-up, the largest lag
  of the second half is at most :data:`LAG_GROWTH_FACTOR` times that of the first
  half plus one step's records: a worker that keeps up shows the same
  per-step bursts throughout, one that falls behind a lag that keeps rising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Warm-up ends when the topics hold this share of the run's records.
WARMUP_FRACTION = 0.10
#: Lag in the second half of production may exceed the first half's by this factor (plus one step).
LAG_GROWTH_FACTOR = 1.5
#: Fewest samples in each half of production for a verdict on lag.
MIN_HALF_SAMPLES = 4
#: Phases of a soak: the producer runs; then the worker catches up.
PRODUCE, DRAIN = "produce", "drain"
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the running soak."""

    seconds: float
    phase: str
    producer_rss: int | None
    worker_rss: int | None
    #: Records in the table topics (sum of their high watermarks: the topics start empty).
    in_kafka: int
    #: Records loaded: the next offsets the worker committed to PostgreSQL with their rows.
    committed: int
    lag: int


@dataclass(frozen=True, slots=True)
class Memory:
    """One process's RSS over a soak, in MB."""

    at_warmup_end: float | None
    at_end: float | None
    peak_after_warmup: float | None
    growth: float | None
    #: Least-squares slope after warm-up, MB per hour.
    slope_per_hour: float | None


@dataclass(frozen=True, slots=True)
class Lag:
    """Consumer lag over a soak, in records."""

    max: int
    max_after_warmup: int
    max_first_half: int | None
    max_second_half: int | None
    at_production_end: int
    bounded: bool | None


@dataclass(frozen=True, slots=True)
class Figures:
    """The soak's figures: when warm-up and production ended, both processes' memory, the lag."""

    warmup_end_s: float
    production_end_s: float
    worker: Memory
    producer: Memory
    lag: Lag


def warmup_end(samples: Sequence[Sample]) -> int:
    """Index of the sample that ends warm-up (see the module's docstring)."""
    final = max((s.in_kafka for s in samples), default=0)
    return next((i for i, s in enumerate(samples) if s.in_kafka >= WARMUP_FRACTION * final and final), 0)


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else None


def memory(samples: Sequence[Sample], start: int, rss: Callable[[Sample], int | None]) -> Memory:
    """RSS figures of one process from sample `start` (warm-up's end) on."""
    seen = [(s.seconds, rss(s) / MB) for s in samples[start:] if rss(s) is not None]
    if not seen:
        return Memory(None, None, None, None, None)
    first, last = seen[0][1], seen[-1][1]
    slope = _slope(seen)
    return Memory(round(first, 1), round(last, 1), round(max(m for _, m in seen), 1), round(last - first, 1),
                  None if slope is None else round(slope * 3600, 1))


def lag(samples: Sequence[Sample], start: int, step_records: float) -> Lag:
    """Lag figures, and whether it stayed bounded (see the module's docstring)."""
    produced = [s.lag for s in samples[start:] if s.phase == PRODUCE]
    half = len(produced) // 2
    first, second = produced[:half], produced[half:]
    judged = len(first) >= MIN_HALF_SAMPLES and len(second) >= MIN_HALF_SAMPLES
    bounded = max(second) <= LAG_GROWTH_FACTOR * max(first) + step_records if judged else None
    production = [s for s in samples if s.phase == PRODUCE]
    return Lag(
        max=max((s.lag for s in samples), default=0),
        max_after_warmup=max((s.lag for s in samples[start:]), default=0),
        max_first_half=max(first) if judged else None,
        max_second_half=max(second) if judged else None,
        at_production_end=production[-1].lag if production else 0,
        bounded=bounded,
    )


def figures(samples: Sequence[Sample], steps: int) -> Figures:
    """Every figure of a soak from its samples (`steps`: the run's steps, for one step's records)."""
    start = warmup_end(samples)
    production = [s for s in samples if s.phase == PRODUCE]
    step_records = max((s.in_kafka for s in samples), default=0) / max(steps, 1)
    return Figures(
        warmup_end_s=samples[start].seconds if samples else 0.0,
        production_end_s=production[-1].seconds if production else 0.0,
        worker=memory(samples, start, lambda s: s.worker_rss),
        producer=memory(samples, start, lambda s: s.producer_rss),
        lag=lag(samples, start, step_records),
    )
