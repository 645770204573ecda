"""`ciopt analytics import`: JUnit XML and GitHub Actions runs/jobs JSON (the hand-made files in
tests/fixtures/analytics/) as baseline history; bad input is one line naming file and field."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from ciopt.analytics import metrics
from conftest import CliRunner, assert_one_line_error

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "analytics"
RUNS = FIXTURES / "gha-runs-before-ciopt.json"
JOBS = FIXTURES / "gha-jobs-8101002002.json"
JUNIT = sorted(FIXTURES.glob("junit-*.xml"))


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def invocations(path: Path) -> dict[str, dict]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return {r["uuid"]: dict(r) for r in db.execute("SELECT * FROM invocations")}


def actions(path: Path, uuid: str) -> list[dict]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "SELECT a.* FROM actions a JOIN invocations i ON i.id = a.invocation_id WHERE i.uuid = ? ORDER BY a.id",
            (uuid,))]


def run_import(cli: CliRunner, tmp_path: Path, *args: str | Path) -> dict:
    proc = cli("analytics", "import", "--records", tmp_path / "r.sqlite", *args, "-o", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_github_runs_and_their_jobs(cli: CliRunner, tmp_path: Path) -> None:
    doc = run_import(cli, tmp_path, RUNS, JOBS)
    assert (doc["runs"], doc["added"], doc["actions"], doc["incomplete_skipped"]) == (4, 4, 3, 1)
    got = invocations(tmp_path / "r.sqlite")
    run = got["github-actions:acme/inventory:8101002002:1"]
    assert (run["source"], run["baseline"], run["command"], run["ci"]) == ("github-actions", 1, "workflow",
                                                                           "github-actions")
    assert run["started_at"] == ts("2024-03-04T13:02:14Z") and run["duration_s"] == 926.0
    assert (run["git_branch"], run["git_commit"], run["exit_code"], run["user"]) == (
        "feature/price-cache", "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b", 1, "dana-dev")
    assert json.loads(run["patterns"]) == ["CI", "pull_request"] and run["workspace"] == "acme/inventory"
    assert (run["actions_total"], run["actions_executed"], run["actions_failed"]) == (3, 2, 1)
    jobs = {a["label"]: a for a in actions(tmp_path / "r.sqlite", run["uuid"])}
    assert jobs["test (3.11)"]["status"] == "failed" and jobs["test (3.11)"]["duration_s"] == 915.0
    assert jobs["gpu-smoke"]["executor"] == "gpu-runner-a100-1" and jobs["lint"]["mnemonic"] == "gha_job"
    # The second attempt of a run is a run of its own; the in-progress one is not imported.
    assert got["github-actions:acme/inventory:8101003003:2"]["exit_code"] == 0
    assert not any("8101005005" in u for u in got)

    again = run_import(cli, tmp_path, RUNS, JOBS)
    assert (again["added"], again["duplicates"], again["actions"]) == (0, 4, 0)


def test_jobs_imported_after_their_run_join_it(cli: CliRunner, tmp_path: Path) -> None:
    run_import(cli, tmp_path, RUNS)
    assert actions(tmp_path / "r.sqlite", "github-actions:acme/inventory:8101002002:1") == []
    doc = run_import(cli, tmp_path, JOBS)
    assert doc["actions"] == 3 and doc["added"] == 0
    assert len(actions(tmp_path / "r.sqlite", "github-actions:acme/inventory:8101002002:1")) == 3


def test_paginated_output_and_jobs_without_their_run(cli: CliRunner, tmp_path: Path) -> None:
    # `gh api --paginate` prints one document per page, one after the other.
    pages = tmp_path / "paged.json"
    runs = json.loads(RUNS.read_text())["workflow_runs"]
    pages.write_text(json.dumps({"total_count": 5, "workflow_runs": runs[:2]}) + "\n"
                     + json.dumps({"total_count": 5, "workflow_runs": runs[2:]}))
    assert run_import(cli, tmp_path, pages)["added"] == 4
    (tmp_path / "2").mkdir()
    alone = run_import(cli, tmp_path / "2", JOBS)
    assert alone["added"] == 1  # a run made up from its jobs: from the first start to the last end
    [inv] = invocations(tmp_path / "2" / "r.sqlite").values()
    assert inv["started_at"] == ts("2024-03-04T13:02:20Z") and inv["duration_s"] == ts("2024-03-04T13:17:36Z") - \
        ts("2024-03-04T13:02:20Z")


def test_junit_reports(cli: CliRunner, tmp_path: Path) -> None:
    doc = run_import(cli, tmp_path, *JUNIT, "--branch", "main", "--commit", "abc123")
    assert (doc["junit_files"], doc["added"], doc["actions"]) == (2, 2, 14)
    got = {u: r for u, r in invocations(tmp_path / "r.sqlite").items()}
    first = next(r for r in got.values() if r["started_at"] == ts("2024-03-04T09:12:31.402117+00:00"))
    assert (first["source"], first["baseline"], first["command"], first["duration_s"]) == ("junit", 1, "test", 41.87)
    assert (first["git_branch"], first["git_commit"], first["exit_code"], first["hostname"]) == (
        "main", "abc123", 1, "runner-ubuntu-4")
    assert (first["tests_passed"], first["tests_failed"], first["actions_skipped"]) == (5, 1, 1)
    cases = {a["label"]: a for a in actions(tmp_path / "r.sqlite", first["uuid"])}
    failing = cases["tests.test_pricing::test_discount_rounding"]
    assert (failing["status"], failing["test_outcome"], failing["duration_s"]) == ("failed", "failed", 12.904)
    assert failing["message"].startswith("AssertionError")
    assert cases["tests.test_reports::test_pdf_export"]["status"] == "skipped"
    assert run_import(cli, tmp_path, *JUNIT)["added"] == 0  # the same files again


def test_imported_history_is_the_baseline_of_the_comparison(cli: CliRunner, tmp_path: Path) -> None:
    run_import(cli, tmp_path, RUNS, JOBS, *JUNIT)
    r = metrics.Records.load(tmp_path / "r.sqlite")
    assert r.ciopt == [] and len(r.imported) == 6
    kinds = {b["kind"]: b for b in metrics.baseline_comparison(r)}
    assert kinds["github-actions"]["baseline"]["n"] == 4 and kinds["junit"]["baseline"]["n"] == 2
    assert kinds["github-actions"]["baseline"]["p50_s"] == 802.0  # of 738, 802, 822, 926 s
    (tmp_path / "nb").mkdir()
    not_baseline = run_import(cli, tmp_path / "nb", "--not-baseline", *JUNIT)
    assert not_baseline["baseline"] is False and not_baseline["expired"] == 2  # 2024 is past retention


@pytest.mark.parametrize("name, content, says", [
    ("broken.xml", "<testsuites><testsuite name='x'>", "broken.xml: not well-formed XML"),
    ("html.xml", "<html><body/></html>", "the root element is <html>"),
    ("time.xml", "<testsuite name='s'><testcase name='t' time='fast'/></testsuite>",
     "testsuite 1 (s), testcase 1: time='fast' is not a number"),
    ("noname.xml", "<testsuite name='s'><testcase classname='c'/></testsuite>", "testcase 1: the name attribute"),
    ("stamp.xml", "<testsuite name='s' timestamp='yesterday'><testcase name='t'/></testsuite>",
     "timestamp='yesterday' is not an ISO 8601"),
    ("nothing.json", '{"items": []}', "neither a runs list"),
    ("noid.json", '{"workflow_runs": [{"status": "completed"}]}', "workflow_runs[0].id is missing"),
    ("badtime.json", '{"workflow_runs": [{"id": 1, "status": "completed", "created_at": "soon", '
                     '"updated_at": "2024-01-01T00:00:00Z"}]}', "workflow_runs[0].created_at: 'soon' is not"),
    ("badjob.json", '{"jobs": [{"id": 1, "run_id": "r"}]}', "jobs[0].run_id: expected an integer"),
    ("truncated.json", '{"workflow_runs": [', "truncated.json:1:"),
    ("text.txt", "hello", "neither JUnit XML"),
])
def test_bad_files_are_one_line_naming_file_and_field(cli: CliRunner, tmp_path: Path, name: str, content: str,
                                                      says: str) -> None:
    bad = tmp_path / name
    bad.write_text(content)
    proc = cli("analytics", "import", "--records", tmp_path / "r.sqlite", bad, cwd=tmp_path)
    assert_one_line_error(proc, contains=says)
    assert not (tmp_path / "r.sqlite").exists()  # nothing half imported


def test_help_teaches_the_formats(cli: CliRunner, tmp_path: Path) -> None:
    out = cli("analytics", "import", "--help", cwd=tmp_path).stdout
    assert "gh api repos/O/R/actions/runs" in out and "JUnit XML" in out and "--not-baseline" in out
    assert_one_line_error(cli("analytics", "import", tmp_path / "missing.xml", cwd=tmp_path), contains="missing.xml")
