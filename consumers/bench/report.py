"""What a bench run found: every sample for ``--json``, and the lines of the table people read."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the table: a measurement, its rate, its ratio to a baseline, its target."""

    measurement: str
    rate: float | None = None
    unit: str = "rows/s"
    ratio: float | None = None
    ratio_to: str = ""
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        """The line as table cells."""
        digits = 0 if self.rate is not None and self.rate >= 100 else 2
        rate = "" if self.rate is None else f"{self.rate:,.{digits}f} {self.unit}"
        ratio = "" if self.ratio is None else f"{self.ratio:.2f} {self.ratio_to}".strip()
        met = {None: "", True: "yes", False: "NO"}[self.met]
        return [self.measurement, rate, ratio, self.target, met]


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


def at_least(value: float, target: float) -> bool:
    """Target met: `value` ≥ `target`."""
    return value >= target


@dataclass
class ModeResult:
    """One mode's samples (JSON) and table lines."""

    data: dict[str, Any]
    lines: list[Line]
