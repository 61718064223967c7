"""The report's charts, drawn with matplotlib (Agg, no display) as PNG bytes.

Each chart is CHART_WIDTH_PX × CHART_HEIGHT_PX, so the page can reserve its box.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Final

from consumers._deps import require
from consumers.report.queries import RECORD_TABLES, RunData

require("matplotlib", "charts")
import matplotlib.backends.backend_agg as _agg  # noqa: E402  # after the check above
import matplotlib.figure as _figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI: Final = 100
CHART_WIDTH_PX: Final = 960
CHART_HEIGHT_PX: Final = 400
_COLORS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _new(cols: int = 1, rows: int = 1, **kw: Any) -> tuple[Any, Any]:
    fig = _figure.Figure(figsize=(CHART_WIDTH_PX / DPI, CHART_HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    _agg.FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def _png(fig: Any) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _steps(ax: Any) -> None:
    """Steps on the x axis: whole numbers only."""
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def prices(data: RunData) -> bytes:
    """VWAP per resource and step, with the step's min–max price as a band."""
    resources = sorted(data.prices)
    fig, axes = _new(cols=max(1, len(resources)), sharex=True)
    if not resources:
        _empty(axes[0][0], "market trades")
    for i, (ax, resource) in enumerate(zip(axes[0], resources, strict=False)):
        c = data.prices[resource]
        color = _COLORS[i % len(_COLORS)]
        ax.fill_between(c["step"], c["min_price"], c["max_price"], color=color, alpha=0.18, label="min–max")
        ax.plot(c["step"], c["vwap"], color=color, linewidth=1.8, label="VWAP")
        ax.set_title(resource)
        _steps(ax)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("price per unit")
    if resources:
        axes[0][0].legend(loc="upper left", fontsize="small")
    fig.suptitle("Market prices per resource")
    return _png(fig)


def wealth(data: RunData) -> bytes:
    """Balances over agents per step (median, p25–p75, p10–p90), and their histogram at the last step."""
    fig, axes = _new(cols=2, width_ratios=(2, 1))
    over_time, hist = axes[0]
    w = data.wealth
    if not w.get("step"):
        _empty(over_time, "bank balances")
        _empty(hist, "bank balances")
        return _png(fig)
    over_time.fill_between(w["step"], w["p10"], w["p90"], color=_COLORS[0], alpha=0.15, label="p10–p90")
    over_time.fill_between(w["step"], w["p25"], w["p75"], color=_COLORS[0], alpha=0.3, label="p25–p75")
    over_time.plot(w["step"], w["median"], color=_COLORS[0], linewidth=1.8, label="median")
    over_time.plot(w["step"], w["mean"], color=_COLORS[1], linewidth=1.2, linestyle="--", label="mean")
    _steps(over_time)
    over_time.set_ylabel("bank balance")
    over_time.grid(alpha=0.3)
    over_time.legend(loc="upper left", fontsize="small")
    over_time.set_title("Over time")
    hist.hist(data.final_balances, bins=30, color=_COLORS[0], alpha=0.8)
    hist.set_title(f"At step {w['step'][-1]} ({len(data.final_balances):,} agents)")
    hist.set_xlabel("bank balance")
    hist.set_ylabel("agents")
    fig.suptitle("Wealth distribution")
    return _png(fig)


def _finish(fig: Any, ax: Any, ylabel: str, title: str) -> bytes:
    """Steps across, `ylabel` up, a grid, the legend at the right, `title` above: the PNG."""
    _steps(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    fig.suptitle(title)
    return _png(fig)


def events(data: RunData) -> bytes:
    """Events per step, stacked by type."""
    fig, axes = _new()
    ax = axes[0][0]
    if not data.events:
        _empty(ax, "events")
        return _png(fig)
    steps = sorted({s for by_step in data.events.values() for s in by_step})
    types = sorted(data.events)  # by name: a type has the same colour in every run's chart
    ax.stackplot(steps, [[data.events[t].get(s, 0) for s in steps] for t in types], labels=types,
                 colors=[_COLORS[i % len(_COLORS)] for i in range(len(types))], alpha=0.85)
    return _finish(fig, ax, "events", "Event mix over time")


def lag(data: RunData) -> bytes:
    """Ingestion lag (loaded_at − real_timestamp) per table and step: median, and p95 dashed."""
    fig, axes = _new()
    ax = axes[0][0]
    if not any(any(v is not None for v in c["lag_p50_s"]) for c in data.lag.values()):
        _empty(ax, "load times")
        return _png(fig)
    for i, table in enumerate(t for t in RECORD_TABLES if t in data.lag):
        c, color = data.lag[table], _COLORS[i % len(_COLORS)]
        ax.plot(c["step"], c["lag_p50_s"], color=color, linewidth=1.6, label=f"{RECORD_TABLES[table]} median")
        ax.plot(c["step"], c["lag_p95_s"], color=color, linewidth=1, linestyle="--",
                label=f"{RECORD_TABLES[table]} p95")
    return _finish(fig, ax, "seconds", "Ingestion lag: loaded_at − real_timestamp")


#: The charts of a report, in page order: (id, caption, drawing function).
CHARTS: Final[tuple[tuple[str, str, Callable[[RunData], bytes]], ...]] = (
    ("prices", "Market price per resource: volume-weighted average price per step, band from the step's lowest "
               "to highest price", prices),
    ("wealth", "Wealth distribution: the agents' bank balances per step (carried forward from each account's last "
               "transaction), and their histogram at the last step", wealth),
    ("events", "Event mix: events per step by type", events),
    ("lag", "Ingestion lag: seconds from recording (real_timestamp) to loading (loaded_at) per table and step", lag),
)
