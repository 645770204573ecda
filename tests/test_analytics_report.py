"""`ciopt analytics report`: the same figures as metrics.summary, as JSON, text and Markdown;
`markdown_report()` is what other commands (the CI step summary) embed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ciopt.analytics import exchange, metrics
from ciopt.analytics.report import fmt_pct, fmt_s, markdown_report
from ciopt.cli.analytics import parse_since
from conftest import CliRunner, assert_one_line_error

NOW = time.time()
DAY = metrics.DAY
COLUMNS = ["label", "status", "key", "started_at", "finished_at", "duration_s", "test_outcome", "critical_path",
           "executor"]


def history(path: Path) -> None:
    docs = []
    for n in range(12):
        start = NOW - (11 - n) * DAY - 60  # one a day, the last a minute ago
        slow = 5.0 + n
        rows = [["//app:build", "executed", f"k{n}", start + 1, start + 1 + slow, slow, None, 1, "local"],
                ["//app:lint", "cached_local" if n % 3 else "executed", "lint", start + 1, start + 2, 1.0, None, 0,
                 "local"],
                ["//app:test", "executed" if n % 2 else "failed", "t", start + 2, start + 3, 1.0,
                 "passed" if n % 2 else "failed", 0, "gpu-1"]]
        docs.append({"v": 1, "invocation": {"uuid": f"u{n}", "command": "test", "started_at": start,
                                            "finished_at": start + 30, "duration_s": 20.0 + n, "exit_code": 0,
                                            "git_branch": "main" if n % 4 else "dev", "jobs": 2},
                     "actions": {"columns": COLUMNS, "rows": rows}})
    exchange.merge(path, docs, origin=None)


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.sqlite"
    history(path)
    return path


def test_json_is_metrics_summary(cli: CliRunner, records: Path, tmp_path: Path) -> None:
    proc = cli("analytics", "report", "--records", records, "--since", "all", "-o", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    want = json.loads(json.dumps(metrics.summary(metrics.Records.load(records), metrics.Filter(), {}, 10)))
    for key in want:
        assert doc[key] == want[key], key
    assert doc["wall_time"]["invocations"] == 12 and doc["records"] == str(records)
    assert [b["branch"] for b in doc["branches"]] == ["main", "dev"]
    assert doc["flaky_tests"]["flips"] == 11  # //app:test fails and passes in turn with the same key
    assert doc["slowest_targets"][0]["label"] == "//app:build"

    week = json.loads(cli("analytics", "report", "--records", records, "-o", "json", cwd=tmp_path).stdout)
    assert week["wall_time"]["invocations"] == 7  # the default window: today and the six days before
    assert week["filter"]["since"] == metrics.days_ago(7)
    dev = json.loads(cli("analytics", "report", "--records", records, "--since", "all", "--branch", "dev", "-o",
                         "json", cwd=tmp_path).stdout)
    assert dev["wall_time"]["invocations"] == 3


def test_text_and_markdown(cli: CliRunner, records: Path, tmp_path: Path) -> None:
    text = cli("analytics", "report", "--records", records, "--since", "all", cwd=tmp_path).stdout
    s = metrics.summary(metrics.Records.load(records))
    assert text.startswith("ciopt analytics: 12 invocations (all recorded, all branches)")
    assert f"p50 {fmt_s(s['wall_time']['p50_s'])}" in text
    assert f"{fmt_pct(s['cache']['hit_rate'])} of {s['cache']['lookups']} lookups" in text
    assert "//app:build" in text and "gpu-1" in text and "flaky tests:" in text
    md = cli("analytics", "report", "--records", records, "--since", "all", "-o", "markdown", cwd=tmp_path).stdout
    assert md.startswith("### CI analytics: 12 invocations") and "| target | p50 | p95 | runs |" in md
    assert md == markdown_report(records, since=None)
    assert markdown_report(records, since=metrics.days_ago(7), heading="##").startswith("## CI analytics: 7 ")


def test_since_forms() -> None:
    now = metrics.DAY * 1000 + 3600
    assert parse_since("7d", now) == metrics.days_ago(7, now) == metrics.DAY * 994
    assert parse_since("2w", now) == metrics.days_ago(14, now)
    assert parse_since("12h", now) == now - 12 * 3600
    assert parse_since("2024-05-01", now) == 1714521600.0
    assert parse_since("all", now) is None
    for bad in ("0d", "soon", "7x"):
        with pytest.raises(ValueError):
            parse_since(bad, now)


def test_bad_input_is_one_line(cli: CliRunner, records: Path, tmp_path: Path) -> None:
    assert_one_line_error(cli("analytics", "report", "--records", records, "--since", "soon", cwd=tmp_path),
                          contains="--since 'soon'")
    assert_one_line_error(cli("analytics", "report", "--records", tmp_path / "none.sqlite", cwd=tmp_path),
                          contains="no build records")
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"not a database" * 100)
    assert_one_line_error(cli("analytics", "report", "--records", broken, cwd=tmp_path), contains=str(broken))
    out = cli("analytics", "--help", cwd=tmp_path).stdout
    assert all(w in out for w in ("report", "import", "pull", "ciopt dashboard"))
    assert "--since" in cli("analytics", "report", "--help", cwd=tmp_path).stdout
