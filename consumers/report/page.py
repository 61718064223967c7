"""The report as one self-contained HTML page: inline CSS, charts as base64 PNG data URIs."""

from __future__ import annotations

import base64
import html
from typing import Any

from consumers.report.charts import CHART_HEIGHT_PX, CHART_WIDTH_PX
from consumers.views import MATERIALIZED

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       background: #f4f5f7; margin: 0; }
main { max-width: %(width)dpx; margin: 0 auto; padding: 24px 32px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; }
.meta { color: #5b6470; margin: 0 0 16px; }
.warn { background: #fff4d6; border: 1px solid #e8c66b; padding: 8px 12px; border-radius: 6px; }
table { border-collapse: collapse; background: #fff; width: 100%%; box-shadow: 0 1px 2px #0001; }
th, td { text-align: left; padding: 6px 12px; border-bottom: 1px solid #e6e8eb; vertical-align: top; }
th { background: #eef0f3; font-weight: 600; }
td:first-child { color: #5b6470; white-space: nowrap; }
section { margin-bottom: 16px; }
.charts { display: grid; grid-template-columns: repeat(%(runs)d, 1fr); gap: 16px; }
figure { margin: 0; background: #fff; padding: 8px; box-shadow: 0 1px 2px #0001; border-radius: 6px; }
figure img { display: block; width: 100%%; height: auto; aspect-ratio: %(w)d / %(h)d; }
figcaption { color: #5b6470; font-size: 13px; margin-top: 6px; }
code { font-size: 13px; }
"""


def _img(chart_id: str, run_id: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="chart-{chart_id}-{html.escape(run_id)}">'
            f'<img class="chart" src="data:image/png;base64,{data}" width="{CHART_WIDTH_PX}" '
            f'height="{CHART_HEIGHT_PX}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(summaries: list[dict[str, Any]], rows: list[list[str]],
           charts: list[tuple[str, str, list[bytes]]], generated_at: str) -> str:
    """The page: title, notes, the summary table (one column per run), then each chart per run side by side.

    `charts` holds (id, caption, one PNG per run) in page order.
    """
    runs = [s["run_id"] for s in summaries]
    title = "Run " + " vs ".join(r[:8] for r in runs)
    css = _CSS % {"width": 1040 if len(runs) == 1 else 1960, "runs": len(runs),
                  "w": CHART_WIDTH_PX, "h": CHART_HEIGHT_PX}
    head = "".join(f"<th>run <code>{html.escape(r)}</code></th>" for r in runs)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    stale = [v for v in MATERIALIZED if any(v in s["stale_views"] for s in summaries)]
    warn = (f'<p class="warn">The materialized views {html.escape(", ".join(stale))} are older than the rows: run '
            "<code>society-ingest views refresh</code> (or <code>report --refresh</code>) for current figures.</p>"
            if stale else "")
    sections = []
    for chart_id, caption, pngs in charts:
        figures = "".join(_img(chart_id, r, png, caption) for r, png in zip(runs, pngs, strict=True))
        sections.append(f'<section><div class="charts">{figures}</div></section>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>society-ingest report: {html.escape(title)}</title>
<style>{css}</style></head>
<body><main>
<h1>society-ingest report: {html.escape(title)}</h1>
<p class="meta">Generated {html.escape(generated_at)} from the analysis views (ddl/0009).</p>
{warn}
<h2>Summary</h2>
<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Charts</h2>
{"".join(sections)}
</main></body></html>
"""
