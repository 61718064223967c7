"""What a bench run found: every sample for ``--json``, and the lines of the table people read."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the table: a measurement, its rate (or value) in `unit`, its ratio to a baseline, its target.

    A distribution's line also has its p50 / p95 / p99 (in `unit`; `rate` is the one its target is about).
    """

    measurement: str
    rate: float | None = None
    unit: str = "rows/s"
    ratio: float | None = None
    ratio_to: str = ""
    target: str = ""
    met: bool | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    def cells(self) -> list[str]:
        """The line as table cells."""
        digits = 0 if self.rate is not None and self.rate >= 100 else 2
        rate = "" if self.rate is None else f"{self.rate:,.{digits}f} {self.unit}"
        quantiles = [f"p{q} {v:,.2f}" for q, v in ((50, self.p50), (95, self.p95), (99, self.p99)) if v is not None]
        if quantiles:
            rate = f"{rate} ({', '.join(quantiles)} {self.unit})"
        ratio = "" if self.ratio is None else f"{self.ratio:.2f} {self.ratio_to}".strip()
        met = {None: "", True: "yes", False: "NO"}[self.met]
        return [self.measurement, rate, ratio, self.target, met]

    def as_json(self) -> dict[str, Any]:
        """The line for ``--json``: numbers as numbers, the unit of `rate` and the percentiles (none without)."""
        out = {f: getattr(self, f) for f in self.__slots__}
        if self.rate is None and self.p50 is None:
            out["unit"] = None
        return out


COLUMNS = ["measurement", "rate", "ratio", "target", "met?"]


def median(values: list[float]) -> float:
    """Median of `values`."""
    return statistics.median(values)


def ratio(a: list[float], b: list[float]) -> float:
    """Median over repeats of a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """p50, p95, p99 (nearest rank) of `values`."""
    s = sorted(values)
    return {f"p{q}": s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))] for q in qs} if s else {}


def histogram(pairs: list[tuple[float, int]], bucket: float) -> dict[str, Any]:
    """(value, weight) pairs as counts per `bucket`-wide bucket: {"bucket": b, "counts": {lower edge: count}}."""
    counts: dict[int, int] = {}
    for value, weight in pairs:
        i = int(value // bucket)
        counts[i] = counts.get(i, 0) + weight
    return {"bucket": bucket, "counts": {f"{i * bucket:.3f}": n for i, n in sorted(counts.items())}}


def at_least(value: float, target: float) -> bool:
    """Target met: `value` ≥ `target`."""
    return value >= target


@dataclass
class ModeResult:
    """One mode's samples (JSON) and table lines."""

    data: dict[str, Any]
    lines: list[Line]
    #: Only what was measured before an interruption.
    partial: bool = False
