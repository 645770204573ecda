"""`ciopt dashboard`: the page written from the records of real ciopt runs, opened in a real
headless Chromium (Debian's `chromium`, driven by playwright's Python package), and served live.

The browser tests are skipped, saying why, only when chromium or playwright is missing or
chromium cannot start. A screenshot of every page opened is saved under $CIOPT_TEST_ARTIFACTS
(default: ciopt-out/test-artifacts/ at the repository root, which git ignores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ciopt.analytics import exchange, metrics
from conftest import assert_one_line_error
from fixtures.analytics.team_history import History, ciopt, shared_history

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CIOPT_TEST_ARTIFACTS") or REPO / "ciopt-out" / "test-artifacts")
CHARTS = ("chart-trend", "chart-saved", "chart-split", "chart-hitrate", "chart-waterfall", "chart-critical",
          "chart-slowest", "chart-flaky", "chart-executors", "chart-kinds", "chart-selection", "chart-baseline")


@pytest.fixture(scope="session")
def team(tmp_path_factory: pytest.TempPathFactory) -> History:
    """Records of real ciopt runs and imported history (tests/fixtures/analytics/team_history.py)."""
    return shared_history(tmp_path_factory)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright's Python package is not installed (pip install playwright; `make` installs it)")
    exe = chromium_binary()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    pw = sync_playwright().start()
    try:
        # --no-sandbox: CI runs as root, where Chromium's own sandbox refuses to start.
        b = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
    except Exception as e:  # noqa: BLE001 - any launch failure is the skip reason, verbatim
        pw.stop()
        pytest.skip(f"chromium ({exe}) cannot start: {' '.join(str(e).split())[:300]}")
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture(scope="module")
def page_file(team: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dashboard")
    proc = ciopt(["dashboard", "--records", str(team.records), "--out", str(out), "-o", "json"], team.workspace,
                 team.env)
    doc = json.loads(proc.stdout)
    assert doc["path"] == str(out / "index.html") and doc["bytes"] == (out / "index.html").stat().st_size
    return out / "index.html"


class Opened:
    def __init__(self, page: Any, errors: list[str]) -> None:
        self.page = page
        self.errors = errors

    def metric(self, name: str) -> tuple[str, str]:
        el = self.page.locator(f'[data-metric="{name}"]').first
        return el.inner_text(), el.get_attribute("data-value") or ""

    def choose(self, select_id: str, label: str) -> None:
        self.page.select_option(f"#{select_id}", label=label)
        self.page.wait_for_function("document.body.dataset.view !== undefined")

    def data(self) -> dict:
        return self.page.evaluate("JSON.parse(document.getElementById('dashboard-data').textContent)")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


def open_page(browser: Any, url: str) -> Opened:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console error: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    return Opened(page, errors)


def number(value: str) -> float | None:
    return None if value == "" else float(value)


def check_view(o: Opened, s: dict) -> None:
    """Every KPI of the page's current view against metrics.summary for the same filter."""
    w, cache, saved, sel, fl, ex = (s["wall_time"], s["cache"], s["time_saved"], s["selection"], s["flaky_tests"],
                                    s["executors"])
    expected = {"invocations": w["invocations"], "wall_p50": w["p50_s"], "wall_p90": w["p90_s"],
                "saved_total": saved["total_s"], "hit_rate": cache["hit_rate"], "local_rate": cache["local_rate"],
                "remote_rate": cache["remote_rate"], "skipped_share": sel["skipped_share"],
                "tests_skipped": sel["tests_skipped"], "flake_rate": fl["flake_rate"],
                "flaky_tests": fl["flaky_tests"], "total_cost": ex["total_cost"], "busy": ex["busy_s"]}
    for name, want in expected.items():
        text, value = o.metric(name)
        assert text.strip(), name
        got = number(value)
        assert (got is None and want is None) or got == pytest.approx(want, rel=1e-12, abs=1e-12), (name, got, want)
    # The tables: the same rows, in the same order, with the same numbers.
    slow = o.page.eval_on_selector_all("#table-slowest tbody tr", "rows => rows.map(r => Array.from(r.cells)"
                                       ".map(c => c.dataset.value === undefined ? c.textContent : c.dataset.value))")
    assert [r[0] for r in slow] == [t["label"] for t in s["slowest_targets"]]
    for row, t in zip(slow, s["slowest_targets"]):
        assert (float(row[1]), float(row[2]), int(row[3])) == (t["p50_s"], t["p95_s"], t["runs"])
    flaky = o.page.eval_on_selector_all("#table-flaky tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
    assert flaky == [t["label"] for t in fl["top"]]


def test_the_page_is_one_self_contained_file(page_file: Path) -> None:
    html = page_file.read_text()
    assert page_file.stat().st_size < 10_000_000
    # Nothing to fetch: no script, style, image or frame from elsewhere.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html, re.I)
    assert "Plotly" in html and 'id="dashboard-data"' in html


def test_the_dashboard_in_chromium(browser: Any, page_file: Path, team: History) -> None:
    o = open_page(browser, page_file.as_uri())
    try:
        assert o.errors == []
        data = o.data()
        # Every chart drew something: traces with points.
        for chart in CHARTS:
            state = o.page.evaluate(
                "id => { const el = document.getElementById(id); return {empty: el.dataset.empty, "
                "points: (el.data || []).map(t => (t.x || t.values || []).length)}; }", chart)
            assert state["empty"] == "false" and state["points"] and max(state["points"]) > 0, (chart, state)
        r = metrics.Records.load(team.records)
        check_view(o, metrics.summary(r, metrics.Filter(), {}, 12))
        # The waterfall is the latest invocation's critical path, loading first.
        bars = o.page.evaluate("document.getElementById('chart-waterfall').data[0].y")
        latest = metrics.waterfall(r)
        assert bars == [f"{n + 1}. {s['label']}" for n, s in enumerate(latest["steps"])]
        assert bars[0].endswith("(loading and analysis)")
        # The baseline table: imported history against what came after.
        kinds = o.page.eval_on_selector_all("#table-baseline tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
        assert kinds == ["github-actions", "junit"]
        o.screenshot("dashboard-all.png")

        # Filters: a branch...
        before = o.metric("invocations")
        o.choose("filter-branch", "feature/calc (2)")
        assert o.metric("invocations") != before and o.metric("invocations")[1] == "2"
        check_view(o, metrics.summary(r, metrics.Filter(branch="feature/calc"), {}, 12))
        assert o.page.evaluate("document.body.dataset.view").startswith("b")
        # ... and a date range, with the cut-off the page was made with.
        o.choose("filter-branch", "all branches")
        o.choose("filter-range", "last 7 days")
        since = next(x["since"] for x in data["ranges"] if x["key"] == "7d")
        check_view(o, metrics.summary(r, metrics.Filter(since=since), {}, 12))
        assert o.errors == []
        shot = o.screenshot("dashboard-7d.png")
        assert shot.stat().st_size > 10_000
    finally:
        o.page.close()


def test_a_chosen_invocation_and_an_empty_view(browser: Any, team: History, tmp_path: Path) -> None:
    first = min(r["id"] for r in team.runs_in_records())
    ciopt(["dashboard", "--records", str(team.records), "--out", str(tmp_path), "--invocation", str(first)],
          team.workspace, team.env)
    o = open_page(browser, (tmp_path / "index.html").as_uri())
    try:
        title = o.page.inner_text("#waterfall-title")
        assert title.startswith(f"#{first} ") and o.page.inner_text("#waterfall-which") == "chosen"
        o.choose("filter-branch", "main (2)")
        o.choose("filter-range", "last 7 days")
        assert o.metric("invocations")[1] == "2"
        assert o.errors == []
    finally:
        o.page.close()
    # No records in a view: each chart says so instead of drawing nothing.
    empty = tmp_path / "empty" / "records.sqlite"
    exchange.merge(empty, [], origin=None)
    ciopt(["dashboard", "--records", str(empty), "--out", str(tmp_path / "e")], team.workspace, team.env)
    o = open_page(browser, (tmp_path / "e" / "index.html").as_uri())
    try:
        assert o.errors == []
        assert o.page.locator("p.empty").count() == len(CHARTS)
        assert o.metric("invocations") == ("0", "0")
    finally:
        o.page.close()


def test_serve_rebuilds_the_page_when_the_records_change(team: History, tmp_path: Path) -> None:
    records = tmp_path / "records.sqlite"
    with sqlite3.connect(team.records) as src, sqlite3.connect(records) as dst:
        src.backup(dst)
    proc = subprocess.Popen([sys.executable, "-m", "ciopt", "dashboard", "--records", str(records), "--serve",
                             "127.0.0.1:0"], cwd=team.workspace, env=team.env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert m, line
        url = m.group(1)
        with urllib.request.urlopen(url, timeout=60) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
            assert b'id="dashboard-data"' in resp.read()
        with urllib.request.urlopen(url + "data.json", timeout=60) as resp:
            assert json.load(resp)["invocations"] == 4
        first = min(r["id"] for r in team.runs_in_records())
        with urllib.request.urlopen(f"{url}data.json?invocation={first}", timeout=60) as resp:
            assert json.load(resp)["chosen_invocation"] == first
        for bad, status in ((f"{url}?invocation=999999", 404), (f"{url}?invocation=x", 400), (f"{url}nope", 404)):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(bad, timeout=60)
            assert e.value.code == status
        # A record lands (as `ciopt analytics pull` would merge one): the next request shows it.
        now = time.time()
        exchange.merge(records, [{"v": 1, "invocation": {"uuid": "late", "command": "build", "started_at": now,
                                                         "finished_at": now + 1, "duration_s": 1.0}}], origin=None)
        with urllib.request.urlopen(url + "data.json", timeout=60) as resp:
            assert json.load(resp)["invocations"] == 5
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stderr.close()


def test_bad_input_is_one_line_and_exit_2(team: History, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return ciopt(list(args), team.workspace, team.env, expect=None)

    assert_one_line_error(run("dashboard", "--records", str(tmp_path / "none.sqlite")), contains="no build records")
    assert_one_line_error(run("dashboard", "--records", str(team.records), "--invocation", "999999", "--out",
                              str(tmp_path)), contains="--invocation 999999")
    assert_one_line_error(run("dashboard", "--records", str(team.records), "--out", str(tmp_path), "--serve",
                              "127.0.0.1:0"), contains="exclude each other")
    assert_one_line_error(run("dashboard", "--records", str(team.records), "--serve", "localhost"),
                          contains="HOST:PORT")
    help_text = run("dashboard", "--help").stdout
    assert "--serve" in help_text and "--invocation" in help_text and "critical path" in help_text
