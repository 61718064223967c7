"""``society-ingest report``: two simulated runs through Kafka and a worker, reported as HTML and shown
in a real headless browser (Debian's Chromium), every chart visible in the screenshot."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image

from consumers.report.charts import CHART_HEIGHT_PX, CHART_WIDTH_PX, CHARTS
from consumers.topics import admin_client, all_topics, create_topics
from consumers.views import MATERIALIZED, refresh
from support import browser
from support.db import clone_database, drop_database
from support.pipeline import WAIT_TIMEOUT_S, WorkerThread, worker_settings

pytestmark = pytest.mark.integration

AGENTS, STEPS = 40, 31  # step 29 books interest for every account: one step where everyone has a balance
CHART_IDS = [chart_id for chart_id, _, _ in CHARTS]
_DATA_PNG = re.compile(r'<img class="chart" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def cli(services: Any, url: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap, "DATABASE_URL": url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], env=env, capture_output=True, text=True,
                          timeout=WAIT_TIMEOUT_S * 2, cwd=cwd)


@dataclass
class Runs:
    """The database (its URL holds a password: not in the repr) and what simulate reported of each run."""

    url: str = field(repr=False)
    reports: list[dict] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.url, self.reports))


@pytest.fixture(scope="module")
def runs(services: Any, template_db: str) -> Iterator[Runs]:
    """A database with two runs simulated through Kafka and a real worker, views refreshed."""
    url, name = clone_database(services.database_url, template_db)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    admin = admin_client(services.bootstrap)
    create_topics(admin, prefix, services.bootstrap, partitions=3)
    try:
        reports = []
        with WorkerThread(worker_settings(services.bootstrap, url, prefix)):
            for seed in (7, 8):
                sim = cli(services, url, "simulate", "--agents", str(AGENTS), "--steps", str(STEPS), "--seed",
                          str(seed), "--topic-prefix", prefix, "--wait-loaded", "120", "--json")
                assert sim.returncode == 0, sim.stderr
                reports.append(json.loads(sim.stdout))
        refresh(url)
        yield Runs(url, reports)
    finally:
        for future in admin.delete_topics(all_topics(prefix), operation_timeout=10, request_timeout=10).values():
            future.result(timeout=15)
        drop_database(services.database_url, name)


def _charts(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in _DATA_PNG.findall(page)]


def _drawn(image: Image.Image) -> bool:
    """More than a blank box: a real chart has many colours and plenty of non-white pixels."""
    rgb = image.convert("RGB")
    colors = rgb.getcolors(maxcolors=1 << 20) or []
    inked = sum(n for n, (r, g, b) in colors if min(r, g, b) < 200)
    return len(colors) > 50 and inked > 0.02 * rgb.width * rgb.height


def test_report_writes_one_self_contained_page_with_every_chart(services, runs, tmp_path):
    url, reports = runs
    run_id = reports[0]["run_id"]
    out = cli(services, url, "report", "--run", run_id, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    path = tmp_path / f"report-{run_id}.html"  # the default name, in the current folder
    assert summary["output"] == path.name and path.exists()
    (run,) = summary["runs"]
    recorded = reports[0]["recorded"]
    assert run["rows"] == {t: recorded[t] for t in run["rows"]}
    assert run["agents"] == AGENTS and run["steps"] == STEPS and run["stale_views"] == []
    assert sum(m["trades"] for m in run["market"].values()) == recorded["market_transactions"]
    assert sum(run["events"].values()) == recorded["simulation_events"]
    assert run["wealth"]["step"] == STEPS - 1 and run["wealth"]["agents"] == AGENTS  # interest at step 29
    assert 0 <= run["ingestion_lag"]["median_s"] <= run["ingestion_lag"]["max_s"] < 120

    page = path.read_text(encoding="utf-8")
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []  # nothing to fetch: one file
    charts = _charts(page)
    assert len(charts) == len(CHART_IDS) == len(summary["charts"])
    for chart_id, image in zip(CHART_IDS, charts, strict=True):
        assert image.format == "PNG" and image.size == (CHART_WIDTH_PX, CHART_HEIGHT_PX), chart_id
        assert _drawn(image), f"chart {chart_id} is blank"


@pytest.mark.parametrize("compare", [False, True], ids=["one run", "two runs"])
def test_the_page_renders_in_a_real_browser_with_every_chart_visible(services, runs, tmp_path, compare):
    chromium = browser.chromium()
    url, reports = runs
    ids = [r["run_id"] for r in reports] if compare else [reports[0]["run_id"]]
    page = tmp_path / "report.html"
    args = ["--compare", ids[1]] if compare else []
    out = cli(services, url, "report", "--run", ids[0], *args, "--output", str(page))
    assert out.returncode == 0, out.stderr
    assert f"report written to {page}" in out.stdout
    for run_id in ids:  # the summary table has a column per run
        assert f"run {run_id[:8]}" in out.stdout

    width = 1960 if compare else 1040
    layout = browser.layout(chromium, page, width)
    images = layout["images"]
    assert sorted(i["id"] for i in images) == sorted(f"chart-{c}-{r}" for c in CHART_IDS for r in ids)
    shot = browser.screenshot(chromium, page, tmp_path / "report.png", width, layout["height"])
    print(f"screenshot: {shot}")
    screen = Image.open(shot).convert("RGB")
    assert screen.size == (width, layout["height"])
    for image in images:
        assert image["complete"] and image["naturalWidth"] == CHART_WIDTH_PX, image
        assert image["width"] > 0.8 * width / len(ids) - 100 and image["height"] > 300, image
        box = (round(image["x"]), round(image["y"]), round(image["x"] + image["width"]),
               round(image["y"] + image["height"]))
        assert box[2] <= screen.width and box[3] <= screen.height, f"{image['id']} lies outside the page"
        assert _drawn(screen.crop(box)), f"{image['id']} is not visible in the screenshot"
    if compare:  # each chart of the two runs side by side: same row, the first run on the left
        by_id = {i["id"]: i for i in images}
        for c in CHART_IDS:
            left, right = by_id[f"chart-{c}-{ids[0]}"], by_id[f"chart-{c}-{ids[1]}"]
            assert left["y"] == right["y"] and left["x"] + left["width"] <= right["x"]


def test_an_unknown_run_is_one_line_and_no_file(services, runs, tmp_path):
    url, _ = runs
    missing = uuid.uuid4()
    out = cli(services, url, "report", "--run", str(missing), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"error: run {missing} is not in PostgreSQL at "
                                               f"{out.stderr.split(' at ', 1)[1].strip()}"]
    assert list(tmp_path.iterdir()) == []
    folder = cli(services, url, "report", "--run", str(missing), "--output", str(tmp_path))
    assert folder.returncode == 1 and "is a folder" in folder.stderr


def test_without_matplotlib_the_report_says_which_extra_to_install(services, runs, tmp_path):
    url, reports = runs
    blocked = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['society-ingest', *sys.argv[1:]]; "
               "from consumers.cli import main; main()")
    env = {**os.environ, "DATABASE_URL": url}
    out = subprocess.run([sys.executable, "-c", blocked, "report", "--run", reports[0]["run_id"]], env=env,
                         capture_output=True, text=True, timeout=WAIT_TIMEOUT_S, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: matplotlib is not installed; run \"pip install 'society-ingest[charts]'\" "
                                  "to fix it")
    assert list(tmp_path.iterdir()) == []


def test_stale_views_are_reported_until_refreshed(services, runs, tmp_path):
    url, reports = runs
    run_id = reports[1]["run_id"]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO simulation_events (event_uid, simulation_run_id, step_timestamp, event_type) "
                  "VALUES (gen_random_uuid(), %s, %s, 'LATE')", (run_id, STEPS))
    stale = cli(services, url, "report", "--run", run_id, "--json", "--output", str(tmp_path / "a.html"))
    assert stale.returncode == 0, stale.stderr
    # each view checked on its own: a new event changes ingestion_lag's rows, not the balances
    assert json.loads(stale.stdout)["runs"][0]["stale_views"] == ["ingestion_lag"]
    assert "are older than the rows" in (tmp_path / "a.html").read_text(encoding="utf-8")
    warned = cli(services, url, "report", "--run", run_id, "--output", str(tmp_path / "b.html"))
    assert "warning: the materialized views ingestion_lag are older than the rows" in warned.stderr
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO banking_transactions (transaction_sim_id, simulation_run_id, step_timestamp, "
                  "agent_id_str, account_id, transaction_type, amount, balance_after) "
                  "VALUES ('late', %s, %s, 'late-agent', 'late-account', 'deposit', 1, 1)", (run_id, STEPS))
    both = cli(services, url, "report", "--run", run_id, "--json", "--output", str(tmp_path / "d.html"))
    assert json.loads(both.stdout)["runs"][0]["stale_views"] == list(MATERIALIZED), both.stderr
    refreshed = cli(services, url, "views", "refresh", "--concurrently", "--json")
    assert refreshed.returncode == 0, refreshed.stderr
    assert [r["view"] for r in json.loads(refreshed.stdout)] == list(MATERIALIZED)
    fresh = cli(services, url, "report", "--run", run_id, "--json", "--output", str(tmp_path / "c.html"))
    summary = json.loads(fresh.stdout)["runs"][0]
    assert summary["stale_views"] == [] and summary["events"]["LATE"] == 1


def _hostile_run(url: str, names: list[str], nan_price: bool = False) -> str:
    """A hand-made run whose resource and event type names are `names` (markup, mathtext, dollars)."""
    run_id = str(uuid.uuid4())
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO simulation_runs (run_id, status) VALUES (%s, 'completed')", (run_id,))
        for i, name in enumerate(names):
            for step in (0, 1):
                price = float("nan") if nan_price and i == 0 else 3e38 if i == 1 else 2.5
                c.execute("INSERT INTO market_transactions (transaction_sim_id, simulation_run_id, step_timestamp, "
                          "market_id, resource_type, buyer_agent_id, seller_agent_id, quantity, price_per_unit, "
                          "total_cost) VALUES (%s, %s, %s, 'm', %s, 'a', 'b', 1, %s, 1)",
                          (f"t{i}-{step}", run_id, step, name, price))
                c.execute("INSERT INTO simulation_events (event_uid, simulation_run_id, step_timestamp, event_type) "
                          "VALUES (gen_random_uuid(), %s, %s, %s)", (run_id, step, name))
    return run_id


LONG_RESOURCE, LONG_EVENT = "r" * 50, "E" * 100


def _non_finite_run(url: str) -> str:
    """A run as psql could leave it, past the worker's validation: an Infinity volume among nine resources,
    a NaN price, long names, a tab and a bell in names, and a NaN balance (p90 of wealth)."""
    run_id = str(uuid.uuid4())
    trades = [(f"r{i}", float(i + 1), 2.0) for i in range(8)]  # r0 is not among the 8 largest volumes
    trades += [("inf", float("inf"), 2.0), ("nan-price", 100.0, float("nan")), (LONG_RESOURCE, 50.0, 2.0),
               ("gold\tbar", 20.0, 2.0)]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO simulation_runs (run_id, status) VALUES (%s, 'completed')", (run_id,))
        for i, (resource, quantity, price) in enumerate(trades):
            c.execute("INSERT INTO market_transactions (transaction_sim_id, simulation_run_id, step_timestamp, "
                      "market_id, resource_type, buyer_agent_id, seller_agent_id, quantity, price_per_unit, "
                      "total_cost) VALUES (%s, %s, 0, 'm', %s, 'a', 'b', %s, %s, 1)",
                      (f"t{i}", run_id, resource, quantity, price))
        for event_type in (LONG_EVENT, "bell\x07ring", "BIRTH"):
            c.execute("INSERT INTO simulation_events (event_uid, simulation_run_id, step_timestamp, event_type) "
                      "VALUES (gen_random_uuid(), %s, 0, %s)", (run_id, event_type))
        for i in range(10):
            c.execute("INSERT INTO banking_transactions (transaction_sim_id, simulation_run_id, step_timestamp, "
                      "agent_id_str, account_id, transaction_type, amount, balance_after) "
                      "VALUES (%s, %s, 0, %s, %s, 'deposit', 1, %s)",
                      (f"b{i}", run_id, f"agent{i}", f"acct{i}", float("nan") if i == 9 else 3e37))
    return run_id


def test_non_finite_values_and_unruly_names_from_the_database(services, runs, tmp_path):
    from consumers.report import charts, load_run

    url, _ = runs
    run_id = _non_finite_run(url)
    out = cli(services, url, "report", "--run", run_id, "--refresh", "-o", str(tmp_path / "r.html"))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no "Glyph 9 missing", no other warning
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.stdout.splitlines()
            if line.count("│") == 3}
    assert rows["market inf"].startswith("1 trades, VWAP n/a")  # Infinity: among the largest, not dropped
    assert rows["market nan-price"] == "1 trades, VWAP n/a (n/a)"
    assert "p10–p90 3.000e+37 to n/a," in rows["wealth"]
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"market {LONG_RESOURCE}" in page and LONG_EVENT in page  # the tables keep full names

    style = charts.style([load_run(url, uuid.UUID(run_id))])  # read back from PostgreSQL
    assert {"inf", "nan-price", LONG_RESOURCE, "gold\tbar"} < set(style.resources) and "r0" not in style.resources
    assert LONG_EVENT in style.event_types and "bell\x07ring" in style.event_types
    assert charts.label(LONG_EVENT) == "E" * 16 + "…" + "E" * 15
    assert charts.label("gold\tbar") == "gold bar" and charts.label("bell\x07ring") == "bell\\x07ring"


def test_refuses_to_replace_a_fifo_or_a_symlink_and_names_output(services, runs, tmp_path):
    url, reports = runs
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = tmp_path / "kept.html"
    target.write_text("kept", encoding="utf-8")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    for path in (fifo, link):
        out = cli(services, url, "report", "--run", reports[0]["run_id"], "--output", str(path))
        assert out.returncode == 1, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --output {path}: it is "), out.stderr
    assert fifo.is_fifo() and link.is_symlink() and target.read_text(encoding="utf-8") == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.html", "link.html", "pipe"]  # no .partial left


def test_dash_writes_the_page_to_stdout_and_the_summary_to_stderr(services, runs, tmp_path):
    url, reports = runs
    out = cli(services, url, "report", "--run", reports[0]["run_id"], "-o", "-", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<!DOCTYPE html>") and out.stdout.rstrip().endswith("</html>")
    assert "report written to stdout" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_only_a_lone_dash_means_stdout_and_dot_slash_dash_is_a_file(services, runs, tmp_path):
    url, reports = runs
    out = cli(services, url, "report", "--run", reports[0]["run_id"], "-o", "./-", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "<!DOCTYPE" not in out.stdout  # the summary, not the page
    assert "report written to ./-" in out.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["-"]
    assert (tmp_path / "-").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_a_replaced_page_keeps_its_mode_and_the_longest_name_is_written(services, runs, tmp_path):
    url, reports = runs
    private = tmp_path / "p.html"
    private.write_text("old", encoding="utf-8")
    private.chmod(0o600)
    longest = "y" * 250 + ".html"  # 255 bytes, NAME_MAX
    for name in (private.name, longest):
        out = cli(services, url, "report", "--run", reports[0]["run_id"], "-o", name, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([private.name, longest])  # no .partial left


def test_comparing_a_run_with_itself_is_a_usage_error(services, runs, tmp_path):
    url, reports = runs
    run_id = reports[0]["run_id"]
    out = cli(services, url, "report", "--run", run_id, "--compare", run_id, cwd=tmp_path)
    assert out.returncode == 2 and "compare two different runs" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_names_from_the_data_are_text_not_markup_or_mathtext(services, runs, tmp_path):
    url, _ = runs
    names = ["PAID_$5_TO_$6", "$\\foo$ gold", "grain[/bold]", "grain[red]"]
    run_id = _hostile_run(url, names, nan_price=True)
    out = cli(services, url, "report", "--run", run_id, "--output", str(tmp_path / "r.html"))
    assert out.returncode == 0, out.stderr
    for name in names:
        assert f"market {name}" in out.stdout
    assert "3.000e+38" in out.stdout  # not a 39-digit number
    as_json = cli(services, url, "report", "--run", run_id, "--json", "--output", str(tmp_path / "j.html"))
    assert as_json.returncode == 0, as_json.stderr
    market = json.loads(as_json.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))["runs"][0]
    assert market["market"]["PAID_$5_TO_$6"]["vwap"] is None


def test_a_locked_view_fails_within_the_timeout_naming_it(services, runs, tmp_path):
    url, reports = runs
    report = ["report", "--run", reports[0]["run_id"], "-o", str(tmp_path / "r.html")]
    with psycopg.connect(url) as holder:
        holder.execute("REFRESH MATERIALIZED VIEW wealth_distribution")  # locked until this transaction ends
        expected = {"views": "refreshing wealth_distribution waited more than 2s for a lock on the view itself: "
                             "another session holds one (a refresh, or a transaction reading it; see pg_locks)",
                    "report": "lock not available within 2s: another session holds a lock on wealth_distribution "
                              "(a refresh, or a long transaction; see pg_locks)"}
        for args in (["views", "refresh"], report):
            out = cli(services, url, *args, "--timeout", "2")
            assert out.returncode == 1, out.stderr
            assert out.stderr.strip().splitlines() == [f"error: {expected[args[0]]}"], out.stderr
        holder.rollback()
    assert list(tmp_path.iterdir()) == []


def test_a_role_without_grants_is_told_a_refresh_needs_the_owner(services, runs, tmp_path):
    from consumers.pg_errors import OWNER_HINT

    url, reports = runs
    role = f"nobody_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'role-pw'")  # no grants at all
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
        nobody = psycopg.conninfo.make_conninfo(url, user=role, password="role-pw")
        where = f"{role}@{params['host']}:{params['port']}/{params['dbname']}"
        report = ["report", "--run", reports[0]["run_id"], "-o", "r.html"]
        for args, command, hint in ((["views", "refresh"], "views refresh", OWNER_HINT),
                                    ([*report, "--refresh"], "report", OWNER_HINT),
                                    (report, "report", "grant the role the readers' privileges: GRANT society_reader")):
            out = cli(services, nobody, *args, cwd=tmp_path)
            assert out.returncode == 1
            assert out.stderr.startswith(f"error: PostgreSQL at {where}: {command}: permission denied for table "
                                         "schema_migrations (42501); " + hint), out.stderr
    finally:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(f"DROP ROLE {role}")
    assert list(tmp_path.iterdir()) == []


def test_a_locked_table_is_named_not_the_view_being_refreshed(services, runs, tmp_path):
    url, reports = runs
    with psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE banking_transactions IN ACCESS EXCLUSIVE MODE")
        for args in (["views", "refresh"], ["report", "--run", reports[0]["run_id"], "--refresh", "-o", "r.html"]):
            out = cli(services, url, *args, "--timeout", "1", cwd=tmp_path)
            assert out.returncode == 1, out.stderr
            assert out.stderr.strip().splitlines() == [
                "error: refreshing wealth_distribution waited more than 1s for a lock on banking_transactions, a "
                "table it reads: another session holds or waits for a conflicting lock (a LOCK TABLE, a migration; "
                "see pg_locks)"], out.stderr
        holder.rollback()
    assert list(tmp_path.iterdir()) == []
