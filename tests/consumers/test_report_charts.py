"""The report's charts and summary from hand-made runs (real matplotlib, no database): names from the data
are text, many names stay readable, and runs compared share colours and scales."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from consumers.report import charts, summary  # noqa: E402
from consumers.report.queries import RunData  # noqa: E402


def _run(run_id: str, resources: list[str], event_types: list[str], price: float = 2.0) -> RunData:
    data = RunData(run_id, "completed", None, None, {}, 2, {"market_transactions": 2}, 0, 1)
    for i, name in enumerate(resources):
        data.prices[name] = {"step": [0, 1], "trades": [1, 1], "volume": [i + 1.0, i + 1.0],
                             "turnover": [price * (i + 1)] * 2, "vwap": [price, price],
                             "min_price": [price, price], "max_price": [price * 2, price * 2]}
    for i, name in enumerate(event_types):
        data.events[name] = {0: i + 1, 1: i + 1}
    return data


def test_dollars_and_brackets_in_names_are_drawn_as_text():
    names = ["PAID_$5_TO_$6", "$\\foo$ gold", "grain[/bold]", "x^2_$y"]
    drawn = charts.draw([_run("a", names, names)])  # mathtext would raise on "$\foo$"
    assert [chart_id for chart_id, _, _ in drawn] == [c for c, _, _ in charts.CHARTS]
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, _, pngs in drawn for png in pngs)


def test_many_names_are_capped_with_the_rest_counted():
    resources = [f"r{i:02d}" for i in range(53)]
    types = [f"E{i:02d}" for i in range(40)]
    st = charts.style([_run("a", resources, types)])
    assert st.resources == sorted(resources[-charts.TOP_RESOURCES:])  # the largest volumes
    assert st.more_resources == 53 - charts.TOP_RESOURCES
    assert st.event_types[-1] == charts.OTHER and len(st.event_types) == charts.TOP_EVENT_TYPES + 1
    named = [st.colors[n] for n in [*st.resources, *st.event_types]]
    assert len(set(map(str, named))) == len(named)  # a distinct colour each
    charts.draw([_run("a", resources, types)])  # no constrained-layout warning (warnings fail tests)
    s = summary.summarize(_run("a", resources, types))
    rows = summary.table_rows([s])
    assert sum(1 for label, _ in rows if label.startswith("market r")) == summary.TOP_MARKETS
    assert ["(+48 more resources)", "48 of them traded in this run"] in rows


def test_compared_runs_share_colours_by_name_and_scales():
    a = _run("a", ["food", "tools"], ["BIRTH", "DEATH"], price=1.0)
    b = _run("b", ["tools"], ["DEATH"], price=100.0)
    st = charts.style([a, b])
    assert st.resources == ["food", "tools"] and st.colors["tools"] != st.colors["food"]
    low, high = st.limits["prices:tools"]
    assert low < 1.0 and high > 200.0  # both runs' prices on one scale
    assert "steps" in st.limits and "events" in st.limits


def test_non_finite_and_huge_numbers():
    data = _run("a", ["food"], [])
    data.prices["food"]["vwap"] = [float("nan"), float("nan")]
    data.prices["food"]["max_price"] = [3e38, 3e38]
    s = summary.summarize(data)
    json.dumps(s, allow_nan=False)
    assert s["market"]["food"]["last_vwap"] is None
    market = next(v for label, v in summary.table_rows([s]) if label == "market food")
    assert "3.000e+38" in market


def test_a_non_finite_volume_ranks_as_the_largest_in_the_charts_and_the_summary():
    resources = [f"r{i}" for i in range(charts.TOP_RESOURCES + 1)]
    data = _run("a", resources, [])
    data.prices["r0"]["volume"] = [float("inf"), 1.0]  # the smallest otherwise
    assert "r0" in charts.style([data]).resources and "r1" not in charts.style([data]).resources
    rows = summary.table_rows([summary.summarize(data)])
    assert any(label == "market r0" for label, _ in rows)


def test_labels_are_bounded_in_characters_and_in_pixels():
    assert charts.label("x" * 10) == "x" * 10
    long = charts.label("a" * 30 + "b" * 70)
    assert len(long) == charts.LABEL_CHARS and long.startswith("a" * 16 + "…") and long.endswith("b" * 15)
    assert charts.label("tab\there\nnow") == "tab here now"
    assert charts.label("bell\x07\x1b[31m") == "bell\\x07\\x1b[31m"
    wide = charts.fitted("W" * 100, 200)
    assert wide.startswith("WW") and "…" in wide and len(wide) < charts.LABEL_CHARS
    names = ["W" * 60 + str(i) for i in range(charts.TOP_RESOURCES)]
    types = ["M" * 100 + str(i) for i in range(3)]
    charts.draw([_run("a", names, types)])  # no warning (a missing glyph would be one; warnings fail tests)


def test_missing_values_read_as_n_a_in_the_summary():
    data = _run("a", ["food", "fuel"], [])
    data.prices["food"]["turnover"] = [float("nan")] * 2
    data.prices["food"]["min_price"] = data.prices["food"]["max_price"] = [float("nan")] * 2
    data.prices["fuel"]["max_price"] = [float("nan")] * 2
    data.wealth = {"step": [1], "agents": [3], "mean": [1.0], "p10": [3e37], "median": [3e37], "p90": [float("nan")],
                   "gini": [float("nan")]}
    rows = dict((label, value) for label, value in summary.table_rows([summary.summarize(data)]))
    assert rows["market food"] == "2 trades, VWAP n/a (n/a)"
    assert rows["market fuel"] == "2 trades, VWAP 2.00 (2.00 to n/a)"
    assert rows["wealth"] == "step 1: 3 agents, median 3.000e+37, p10–p90 3.000e+37 to n/a, Gini n/a"
