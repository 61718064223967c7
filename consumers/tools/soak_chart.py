"""The soak's chart: both processes' RSS and the lag over time, warm-up and production's end marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from consumers._deps import require
from consumers.tools.soak_figures import MB, Figures, Sample


def draw(samples: Sequence[Sample], figs: Figures, path: Path, title: str) -> Path:
    """Write a PNG to `path`: RSS (MB) of the worker and the producer above, lag (records) below."""
    matplotlib = require("matplotlib", "charts")
    matplotlib.use("Agg")  # files only, no display
    pyplot = require("matplotlib.pyplot", "charts")
    t = [s.seconds for s in samples]
    fig, (mem, lag) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7), constrained_layout=True)
    try:
        for name, values in (("worker", [s.worker_rss for s in samples]),
                             ("producer", [s.producer_rss for s in samples])):
            mem.plot(t, [None if v is None else v / MB for v in values], label=f"{name} RSS")
        mem.set_ylabel("RSS (MB)")
        mem.set_ylim(bottom=0)
        lag.plot(t, [s.lag for s in samples], color="tab:red", label="lag (records)")
        lag.set_ylabel("lag (records)")
        lag.set_xlabel("seconds since the soak started")
        lag.set_ylim(bottom=0)
        for ax in (mem, lag):
            ax.axvline(figs.warmup_end_s, color="grey", linestyle="--", label="warm-up ends")
            ax.axvline(figs.production_end_s, color="black", linestyle=":", label="producer done")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left")
        w = figs.worker
        growth = "" if w.growth is None else \
            f"; worker RSS {w.at_warmup_end:.0f} → {w.at_end:.0f} MB ({w.growth:+.1f})"
        mem.set_title(f"{title}{growth}", fontsize=10)
        fig.savefig(path, dpi=100)
    finally:
        pyplot.close(fig)
    return path
