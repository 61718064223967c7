"""The short summary of a run: figures for programs (``summarize``) and rows for people (``table_rows``)."""

from __future__ import annotations

import math
from typing import Any

from consumers.report.queries import RECORD_TABLES, RunData

#: Event types named in the summary (the most frequent first); the charts show all.
TOP_EVENT_TYPES = 3
#: Resources named in the printed summary (the largest volume first); the rest are counted.
TOP_MARKETS = 5
#: Beyond this magnitude numbers are printed in scientific notation.
COMPACT_ABOVE = 1e12
#: A number the run does not have, or not as a finite value (NaN, ±Infinity in the data).
MISSING = "n/a"


def _finite(v: Any) -> Any:
    """`v` with every non-finite float (NaN, ±inf) replaced by None, through dicts and lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _weighted_median(values: list[float], weights: list[int]) -> float | None:
    pairs = sorted((v, w) for v, w in zip(values, weights, strict=True) if v is not None and w)
    half, seen = sum(w for _, w in pairs) / 2, 0
    for v, w in pairs:
        seen += w
        if seen >= half:
            return v
    return None


def _lag(data: RunData) -> dict[str, float | None]:
    p50s, p95s, maxes, weights = [], [], [], []
    for cols in data.lag.values():
        p50s += cols["lag_p50_s"]
        p95s += [v for v in cols["lag_p95_s"] if v is not None]
        maxes += [v for v in cols["lag_max_s"] if v is not None]
        weights += cols["rows"]
    return {"median_s": _weighted_median(p50s, weights), "worst_step_p95_s": max(p95s, default=None),
            "max_s": max(maxes, default=None)}


def summarize(data: RunData) -> dict[str, Any]:
    """The run's figures: rows, market per resource, wealth at the last step, events, ingestion lag."""
    market = {}
    for resource, c in data.prices.items():
        volume = sum(c["volume"])
        market[resource] = {
            "trades": sum(c["trades"]), "volume": volume,
            "vwap": sum(c["turnover"]) / volume if volume else None,
            "min_price": min(c["min_price"]), "max_price": max(c["max_price"]), "last_vwap": c["vwap"][-1],
        }
    w = data.wealth
    wealth = ({k: w[k][-1] for k in ("step", "agents", "mean", "p10", "median", "p90", "gini")}
              if w.get("step") else None)
    events = {t: sum(by_step.values()) for t, by_step in data.events.items()}
    duration = (data.end_time - data.start_time).total_seconds() if data.end_time and data.start_time else None
    return _finite({
        "run_id": data.run_id, "status": data.status,
        "start_time": data.start_time.isoformat() if data.start_time else None,
        "duration_s": duration, "agents": data.agents,
        "steps": data.last_step - data.first_step + 1 if data.last_step is not None else 0,
        "rows": dict(data.rows),
        "market": market, "wealth": wealth,
        "events": dict(sorted(events.items(), key=lambda kv: (-kv[1], kv[0]))),
        "ingestion_lag": _lag(data),
        "stale_views": data.stale,
    })


def _num(v: float | None, digits: int = 2) -> str:
    if v is None or not math.isfinite(v):
        return MISSING
    return f"{v:.3e}" if abs(v) >= COMPACT_ABOVE else f"{v:,.{digits}f}"


def _range(low: float | None, high: float | None) -> str:
    """``low–high``; with a value missing, ``low to n/a`` (a dash beside "n/a" or a minus sign misreads)."""
    lo, hi = _num(low), _num(high)
    if lo == hi == MISSING:
        return MISSING
    return f"{lo} to {hi}" if MISSING in (lo, hi) else f"{lo}–{hi}"


def _seconds(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return MISSING
    if abs(v) >= COMPACT_ABOVE:
        return f"{v:.3e} s"
    return f"{v * 1000:,.0f} ms" if abs(v) < 1 else f"{v:,.2f} s"


def _duration(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return MISSING
    minutes, seconds = divmod(round(v), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def table_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    """Label, then one value per run: the summary as a table (runs side by side)."""
    out: list[list[str]] = []

    def row(label: str, f: Any) -> None:
        out.append([label, *(f(s) for s in summaries)])

    row("status", lambda s: s["status"] or "–")
    row("agents · steps", lambda s: f"{s['agents']:,} · {s['steps']:,}")
    row("duration", lambda s: _duration(s["duration_s"]))
    for table, name in RECORD_TABLES.items():
        row(name, lambda s, t=table: f"{s['rows'].get(t, 0):,}")
    volume: dict[str, float] = {}
    for s in summaries:
        for r, m in s["market"].items():
            # None: a non-finite volume (summarize drops those), ranked the largest as the charts do
            volume[r] = volume.get(r, 0) + (math.inf if m["volume"] is None else m["volume"])
    ranked = sorted(volume, key=lambda r: (-volume[r], r))
    for resource in sorted(ranked[:TOP_MARKETS]):
        def market(s: dict[str, Any], r: str = resource) -> str:
            m = s["market"].get(r)
            if m is None:
                return "–"
            return f"{m['trades']:,} trades, VWAP {_num(m['vwap'])} ({_range(m['min_price'], m['max_price'])})"
        row(f"market {resource}", market)
    if len(ranked) > TOP_MARKETS:
        row(f"(+{len(ranked) - TOP_MARKETS} more resources)",
            lambda s: f"{sum(1 for r in ranked[TOP_MARKETS:] if r in s['market']):,} of them traded in this run")

    def wealth(s: dict[str, Any]) -> str:
        w = s["wealth"]
        if w is None:
            return "–"
        return (f"step {w['step']}: {w['agents']:,} agents, median {_num(w['median'])}, "
                f"p10–p90 {_range(w['p10'], w['p90'])}, Gini {_num(w['gini'], 3)}")
    row("wealth", wealth)
    row("events", lambda s: ", ".join(f"{t} {n:,}" for t, n in list(s["events"].items())[:TOP_EVENT_TYPES])
        + (f" (+{len(s['events']) - TOP_EVENT_TYPES} types)" if len(s["events"]) > TOP_EVENT_TYPES else "") or "–")
    row("ingestion lag", lambda s: (f"median {_seconds(s['ingestion_lag']['median_s'])}, worst step p95 "
                                    f"{_seconds(s['ingestion_lag']['worst_step_p95_s'])}, "
                                    f"max {_seconds(s['ingestion_lag']['max_s'])}"))
    return out
