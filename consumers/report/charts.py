"""The report's charts, drawn with matplotlib (Agg, no display) as PNG bytes.

Each chart is CHART_WIDTH_PX × CHART_HEIGHT_PX, so the page can reserve its box.
"""

from __future__ import annotations

import functools
import io
import math
import unicodedata
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from consumers._deps import require
from consumers.report.queries import RECORD_TABLES, RunData

require("matplotlib", "charts")
import matplotlib  # noqa: E402  # after the check above
import matplotlib.backends.backend_agg as _agg  # noqa: E402
import matplotlib.figure as _figure  # noqa: E402
from matplotlib.font_manager import FontProperties, findfont, get_font  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI: Final = 100
CHART_WIDTH_PX: Final = 960
CHART_HEIGHT_PX: Final = 400
_COLORS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
#: Colours for named series (resources, event types): tab20, distinct for up to 20 names.
_PALETTE: Final = tuple(matplotlib.colormaps["tab20"].colors)
#: Resources drawn in the price chart (the largest volume over the runs first); the rest are counted.
TOP_RESOURCES: Final = 8
#: Above this many resources the price chart has two rows.
PRICE_COLUMNS: Final = 4
#: Event types drawn in the event mix (the most events over the runs first); the rest are "other".
TOP_EVENT_TYPES: Final = 12
OTHER: Final = "other"
#: Text from the data is drawn as it is: no mathtext ($…$), so "$5" is a dollar sign.
_RC: Final = {"text.parse_math": False, "text.usetex": False}
#: Longest name drawn in a chart (a subplot's title, a legend entry), in characters; longer ones are
#: shortened in the middle ("…"). The page's tables keep the full names.
LABEL_CHARS: Final = 32


@functools.cache
def _font() -> Any:
    """The font the charts are drawn with (matplotlib's default), to know which characters it has."""
    with matplotlib.rc_context(_RC):
        return get_font(findfont(FontProperties()))


def _char(c: str) -> str:
    if c.isspace():
        return " "  # tab, newline, …: no glyph, and a line break would upset the layout
    if unicodedata.category(c) == "Cc" or not _font().get_char_index(ord(c)):
        return ascii(c)[1:-1]  # \x07, \u9ec4: visible, and no "missing glyph" warning
    return c


def label(name: str, limit: int = LABEL_CHARS) -> str:
    """`name` as drawn in a chart: characters the font cannot draw escaped (control characters, and
    e.g. CJK without a CJK font), at most `limit` characters (both ends kept: names often differ at the end)."""
    text = "".join(_char(c) for c in name)
    if len(text) <= limit:
        return text
    head = limit // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


#: Widest name in a legend, in pixels: the rest of the chart keeps its width.
LEGEND_LABEL_PX: Final = 220


@functools.cache
def _renderer() -> Any:
    return _agg.RendererAgg(CHART_WIDTH_PX, CHART_HEIGHT_PX, DPI)


def fitted(name: str, width_px: float, size: str = "medium") -> str:
    """``label(name)``, shortened further until it is at most `width_px` wide in font size `size`
    (a character limit alone lets "WWW…" run off the figure)."""
    prop = FontProperties(size=size)
    for limit in range(LABEL_CHARS, 4, -1):
        text = label(name, limit)
        if _renderer().get_text_width_height_descent(text, prop, ismath=False)[0] <= width_px:
            break
    return text


def _rank(total: float) -> float:
    """A total as ranked: a non-finite one (Infinity, NaN) is the largest, never dropped as 0."""
    return total if math.isfinite(total) else math.inf


@dataclass
class Style:
    """What the charts of runs shown side by side share: a colour per name, the series drawn and the axes' limits."""

    colors: dict[str, Any] = field(default_factory=dict)
    resources: list[str] = field(default_factory=list)
    more_resources: int = 0
    event_types: list[str] = field(default_factory=list)
    #: chart (or "prices:<resource>") -> (low, high) of the y axis; "steps" -> (first, last) step.
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)


def _finite(values: Iterable[Any]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _span(values: Iterable[Any]) -> tuple[float, float] | None:
    vs = _finite(values)
    if not vs:
        return None
    lo, hi = min(vs), max(vs)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def style(runs: list[RunData]) -> Style:
    """The shared style of `runs`' charts: colours by name (the same name, the same colour in every run),
    the top resources and event types over all runs, and common axis limits."""
    st = Style()
    volume: dict[str, float] = {}
    for r in runs:
        for res, c in r.prices.items():
            volume[res] = volume.get(res, 0.0) + sum(v for v in c["volume"] if v is not None)
    ranked = sorted(volume, key=lambda k: (-_rank(volume[k]), k))
    st.resources = sorted(ranked[:TOP_RESOURCES])
    st.more_resources = max(0, len(ranked) - TOP_RESOURCES)
    counts: dict[str, int] = {}
    for r in runs:
        for t, by_step in r.events.items():
            counts[t] = counts.get(t, 0) + sum(by_step.values())
    ranked_types = sorted(counts, key=lambda k: (-counts[k], k))
    st.event_types = sorted(ranked_types[:TOP_EVENT_TYPES])
    if len(ranked_types) > TOP_EVENT_TYPES:
        st.event_types.append(OTHER)
    for i, name in enumerate([*st.resources, *(t for t in st.event_types if t != OTHER)]):
        st.colors.setdefault(name, _PALETTE[i % len(_PALETTE)] if i < len(_PALETTE) else
                             matplotlib.colormaps["hsv"](((i - len(_PALETTE)) * 0.618) % 1))
    st.colors[OTHER] = "#b0b0b0"
    if len(runs) < 2:
        return st
    steps = [s for r in runs for s in (r.first_step, r.last_step) if s is not None]
    if steps:
        st.limits["steps"] = (min(steps) - 0.5, max(steps) + 0.5)
    for res in st.resources:
        span = _span(v for r in runs for k in ("min_price", "max_price", "vwap")
                     for v in r.prices.get(res, {}).get(k, []))
        if span:
            st.limits[f"prices:{res}"] = span
    span = _span(v for r in runs for k in ("p10", "p90", "mean") for v in r.wealth.get(k, []))
    if span:
        st.limits["wealth"] = span
    span = _span(v for r in runs for v in r.final_balances)
    if span:
        st.limits["wealth:hist"] = span
    totals = [sum(by_step.get(s, 0) for by_step in r.events.values())
              for r in runs for s in {s for by_step in r.events.values() for s in by_step}]
    if totals:
        st.limits["events"] = (0, max(totals) * 1.05 or 1)
    span = _span(v for r in runs for c in r.lag.values() for k in ("lag_p50_s", "lag_p95_s") for v in c[k])
    if span:
        st.limits["lag"] = span
    return st


def _limit(ax: Any, st: Style, key: str) -> None:
    if key in st.limits:
        ax.set_ylim(*st.limits[key])
    if "steps" in st.limits:
        ax.set_xlim(*st.limits["steps"])


def _new(cols: int = 1, rows: int = 1, **kw: Any) -> tuple[Any, Any]:
    fig = _figure.Figure(figsize=(CHART_WIDTH_PX / DPI, CHART_HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    _agg.FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def _png(fig: Any) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        # constrained layout says so when a legend leaves it too little room: the chart is drawn all the same
        warnings.filterwarnings("ignore", message=".*constrained_layout not applied.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*layout not applied.*", category=UserWarning)
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


def prices(data: RunData, st: Style | None = None) -> bytes:
    """VWAP per resource and step, with the step's min–max price as a band (the top resources by volume)."""
    st = st or style([data])
    resources = [r for r in st.resources if r in data.prices]
    rows = 1 if len(resources) <= PRICE_COLUMNS else 2  # TOP_RESOURCES fit in two rows
    fig, axes = _new(cols=max(1, math.ceil(len(resources) / rows)), rows=rows, sharex=True)
    if not resources:
        _empty(axes[0][0], "market trades")
    for ax in axes.flat[len(resources):] if resources else ():
        ax.set_visible(False)
    for ax, resource in zip(axes.flat, resources, strict=False):
        c = data.prices[resource]
        color = st.colors[resource]
        ax.fill_between(c["step"], c["min_price"], c["max_price"], color=color, alpha=0.18, label="min–max")
        ax.plot(c["step"], c["vwap"], color=color, linewidth=1.8, label="VWAP")
        size = "small" if len(resources) > 4 else "medium"
        ax.set_title(fitted(resource, CHART_WIDTH_PX / len(axes[0]) - 40, size), fontsize=size)
        _steps(ax)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        if rows > 1 and ax in axes[0]:
            ax.set_xlabel("")
        _limit(ax, st, f"prices:{resource}")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("price per unit")
    if resources:
        axes[0][0].legend(loc="upper left", fontsize="small")
    more = len(data.prices) - len(resources)
    fig.suptitle("Market prices per resource" + (f" (the {len(resources)} largest by volume; +{more} more)"
                                                 if more > 0 else ""))
    return _png(fig)


def wealth(data: RunData, st: Style | None = None) -> bytes:
    """Balances over agents per step (median, p25–p75, p10–p90), and their histogram at the last step."""
    st = st or Style()
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
    over_time.set_title("Over time (materialized view)")
    _limit(over_time, st, "wealth")
    balances = _finite(data.final_balances)
    # numpy's own range for equal values is ±0.5, too narrow for 30 bins at a large magnitude
    hist.hist(balances, bins=30, color=_COLORS[0], alpha=0.8, range=st.limits.get("wealth:hist") or _span(balances))
    hist.set_title(f"At step {w['step'][-1]} ({len(data.final_balances):,} agents, live)")
    hist.set_xlabel("bank balance")
    hist.set_ylabel("agents")
    fig.suptitle("Wealth distribution")
    return _png(fig)


def _finish(fig: Any, ax: Any, ylabel: str, title: str) -> bytes:
    """Steps across, `ylabel` up, a grid, the legend at the right (in columns when long), `title` above: the PNG."""
    _steps(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="x-small" if entries > 8 else "small",
              ncol=1 + (entries - 1) // 14)
    fig.suptitle(title)
    return _png(fig)


def events(data: RunData, st: Style | None = None) -> bytes:
    """Events per step, stacked by type (the most frequent types; the rest as "other")."""
    st = st or style([data])
    fig, axes = _new()
    ax = axes[0][0]
    if not data.events:
        _empty(ax, "events")
        return _png(fig)
    steps = sorted({s for by_step in data.events.values() for s in by_step})
    named = [t for t in st.event_types if t != OTHER]
    series = {t: [data.events[t].get(s, 0) for s in steps] for t in named if t in data.events}
    rest = [t for t in data.events if t not in series]
    if rest:
        series[f"{OTHER} ({len(rest)} types)"] = [sum(data.events[t].get(s, 0) for t in rest) for s in steps]
    colors = [st.colors.get(t, st.colors[OTHER]) for t in series]
    size = "x-small" if len(series) > 8 else "small"  # as _finish draws the legend
    ax.stackplot(steps, list(series.values()), labels=[fitted(t, LEGEND_LABEL_PX, size) for t in series],
                 colors=colors, alpha=0.85)
    _limit(ax, st, "events")
    return _finish(fig, ax, "events", "Event mix over time")


def lag(data: RunData, st: Style | None = None) -> bytes:
    """Ingestion lag (loaded_at − real_timestamp) per table and step: median, and p95 dashed."""
    st = st or Style()
    fig, axes = _new()
    ax = axes[0][0]
    if not any(any(v is not None for v in c["lag_p50_s"]) for c in data.lag.values()):
        # rows without real_timestamp (no event time) or without loaded_at (loaded before 0009)
        _empty(ax, "rows with both an event time (real_timestamp) and a load time (loaded_at)")
        return _png(fig)
    _limit(ax, st, "lag")
    for i, table in enumerate(t for t in RECORD_TABLES if t in data.lag):
        c, color = data.lag[table], _COLORS[i % len(_COLORS)]
        ax.plot(c["step"], c["lag_p50_s"], color=color, linewidth=1.6, label=f"{RECORD_TABLES[table]} median")
        ax.plot(c["step"], c["lag_p95_s"], color=color, linewidth=1, linestyle="--",
                label=f"{RECORD_TABLES[table]} p95")
    return _finish(fig, ax, "seconds", "Ingestion lag: loaded_at − real_timestamp")


#: The charts of a report, in page order: (id, caption, drawing function).
CHARTS: Final[tuple[tuple[str, str, Callable[[RunData, Style], bytes]], ...]] = (
    ("prices", "Market price per resource: volume-weighted average price per step, band from the step's lowest "
               "to highest price", prices),
    ("wealth", "Wealth distribution: the agents' bank balances per step (carried forward from each account's last "
               "transaction), and their histogram at the last step (read live from bank_balances, not from the materialized "
               "view)", wealth),
    ("events", "Event mix: events per step by type", events),
    ("lag", "Ingestion lag: seconds from recording (real_timestamp) to loading (loaded_at) per table and step", lag),
)


def draw(runs: list[RunData]) -> list[tuple[str, str, list[bytes]]]:
    """Every chart of each run, in page order, sharing one style (colours by name, common scales)."""
    st = style(runs)
    with matplotlib.rc_context(_RC):
        return [(chart_id, caption, [fn(r, st) for r in runs]) for chart_id, caption, fn in CHARTS]
