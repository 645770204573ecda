"""Schema 2 of the BuildRecords (issue 13): what finish() derives, annotate(), record documents
and merging them (dedup by invocation uuid), retention that keeps the baseline, the migration
of a schema-1 database."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from ciopt.analytics import exchange, records
from ciopt.analytics.records import ActionRecord, RecordWriter, annotate, recent_invocations


def begin(w: RecordWriter, ws: Path, command: str = "test", started_at: float | None = None, jobs: int = 2) -> int:
    return w.begin(command, ["//..."], ws, jobs, False, None, started_at=started_at)


def row(db_path: Path, inv: int) -> dict:
    return next(r for r in recent_invocations(db_path, 100) if r["id"] == inv)


def executors_of(db_path: Path, inv: int) -> dict[str, tuple]:
    with sqlite3.connect(db_path) as db:
        return {r[0]: r[1:] for r in db.execute(
            "SELECT executor, actions, busy_s, max_parallel FROM invocation_executors WHERE invocation_id = ?", (inv,))}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "records.sqlite"


def test_finish_derives_time_split_savings_and_executor_busy_time(db_path: Path, tmp_path: Path) -> None:
    t0 = time.time() - 100
    with RecordWriter(db_path) as w:
        first = begin(w, tmp_path, started_at=t0)
        w.action(first, ActionRecord("//a:gen", "executed", executor="local", started_at=t0 + 1, finished_at=t0 + 4))
        w.action(first, ActionRecord("//a:test", "executed", executor="local", started_at=t0 + 2, finished_at=t0 + 4,
                                     test_outcome="passed"))
        w.action(first, ActionRecord("//b:test", "executed", executor="gpu-1", started_at=t0 + 1, finished_at=t0 + 2,
                                     test_outcome="passed"))
        w.finish(first, 0)
        second = begin(w, tmp_path, started_at=t0 + 50)
        w.action(second, ActionRecord("//a:gen", "cached_local", queued_at=t0 + 50.5, started_at=t0 + 51,
                                      finished_at=t0 + 51.25))
        w.action(second, ActionRecord("//a:test", "cached_remote", started_at=t0 + 51.25, finished_at=t0 + 51.5,
                                      test_outcome="passed"))
        w.action(second, ActionRecord("//b:test", "skipped", message="not affected"))
        w.action(second, ActionRecord("//c:new", "cached_local", started_at=t0 + 51, finished_at=t0 + 51.5))
        w.finish(second, 0)

    one = row(db_path, first)
    assert one["ran_tests"] == 2 and one["cache_fetch_s"] == 0 and one["saved_cache_s"] == 0
    assert one["upload_s"] == pytest.approx(one["finished_at"] - (t0 + 4))
    assert executors_of(db_path, first) == {"local": (2, pytest.approx(5.0), 2), "gpu-1": (1, pytest.approx(1.0), 1)}

    two = row(db_path, second)
    assert two["queue_wait_s"] == pytest.approx(0.5)
    assert two["cache_fetch_s"] == pytest.approx(0.25 + 0.25 + 0.5)
    # The last real runs of what did not run: //a:gen took 3 s, //a:test 2 s; //c:new never ran.
    assert two["saved_cache_s"] == pytest.approx(5.0) and two["saved_unknown"] == 1
    assert two["saved_selection_s"] == 0 and two["unaffected_tests"] == 0  # until annotate() says so
    assert executors_of(db_path, second) == {}

    annotate(db_path, second, loading_s=0.75, unaffected=["//b:test"])
    two = row(db_path, second)
    assert two["loading_s"] == 0.75 and two["unaffected_tests"] == 1
    assert two["saved_selection_s"] == pytest.approx(1.0) and two["saved_cache_s"] == pytest.approx(5.0)


def test_a_record_document_round_trips_and_merges_once(db_path: Path, tmp_path: Path) -> None:
    with RecordWriter(db_path) as w:
        inv = begin(w, tmp_path)
        w.action(inv, ActionRecord("//a:b", "executed", executor="local", started_at=1.0, finished_at=3.0,
                                   key="ab" * 32, critical_path=True))
        w.action(inv, ActionRecord("//a:t", "failed", test_outcome="failed", message="boom"))
        w.finish(inv, 1)
    with sqlite3.connect(db_path) as db:
        doc = exchange.export_invocation(db, inv)
    assert doc is not None and doc["v"] == exchange.FORMAT_VERSION
    assert exchange.decode(exchange.encode(doc)) == doc
    assert "id" not in doc["invocation"] and "invocation_id" not in doc["actions"]["columns"]

    other = tmp_path / "team" / "records.sqlite"
    first = exchange.merge(other, [doc, doc], origin="redis://x")
    assert (first.added, first.duplicates, first.actions) == (1, 1, 2)
    again = exchange.merge(other, [doc], origin="redis://x")
    assert (again.added, again.duplicates) == (0, 1)
    [merged] = recent_invocations(other, 10)
    mine = row(db_path, inv)
    for key in ("uuid", "command", "started_at", "exit_code", "actions_total", "actions_failed", "tests_failed",
                "critical_path_s", "git_branch"):
        assert merged[key] == mine[key], key
    assert merged["origin"] == "redis://x" and mine["origin"] is None
    assert executors_of(other, merged["id"]) == executors_of(db_path, inv)


def test_merge_skips_what_retention_would_drop_but_keeps_the_baseline(tmp_path: Path) -> None:
    now = time.time()

    def doc(uuid: str, age_days: float, baseline: bool) -> dict:
        return {"v": 1, "invocation": {"uuid": uuid, "command": "test", "started_at": now - age_days * 86400,
                                       "duration_s": 1.0, "baseline": int(baseline)},
                "actions": {"columns": ["label", "status"], "rows": [["//a:b", "executed"]]}}

    path = tmp_path / "r.sqlite"
    result = exchange.merge(path, [doc("new", 1, False), doc("old", 100, False), doc("history", 400, True)],
                            origin="o", retention_days=90, now=now)
    assert (result.added, result.expired) == (2, 1)
    assert records.prune(path, 90) == 0  # the baseline outlives retention
    assert sorted(r["uuid"] for r in recent_invocations(path, 10)) == ["history", "new"]


@pytest.mark.parametrize("bad, says", [
    ({"v": 2, "invocation": {}}, "v=2"),
    ({"v": 1}, "no 'invocation'"),
    ({"v": 1, "invocation": {"uuid": "u", "command": "t"}}, "started_at"),
    ({"v": 1, "invocation": {"uuid": "u", "command": "t", "started_at": 1},
      "actions": {"columns": ["label"], "rows": [["x"]]}}, "label and status"),
    ({"v": 1, "invocation": {"uuid": "u", "command": "t", "started_at": 1},
      "actions": {"columns": ["label", "status"], "rows": [["x"]]}}, "list of 2 values"),
])
def test_documents_outside_the_format_are_refused_with_the_reason(bad: dict, says: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=says):
        exchange.decode(exchange.encode(bad))
    with pytest.raises(ValueError, match=says):
        exchange.merge(tmp_path / "r.sqlite", [bad], origin=None)


def test_a_schema_1_database_is_migrated_with_its_figures(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    for statement in records._SCHEMA_V1.split(";\n"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO invocations (id, uuid, command, patterns, started_at, finished_at, duration_s, workspace) "
               "VALUES (1, 'u1', 'build', '[]', 10.0, 20.0, 10.0, '/ws')")
    db.executemany("INSERT INTO actions (invocation_id, label, status, executor, duration_s, test_outcome) "
                   "VALUES (1, ?, ?, ?, ?, ?)", [("//a:b", "executed", "local", 2.0, None),
                                                  ("//a:c", "cached_local", None, 0.5, None),
                                                  ("//a:t", "executed", "local", 1.0, "passed")])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with RecordWriter(path) as w:
        inv = begin(w, tmp_path)
        w.finish(inv, 0)
    old = row(path, 1)
    assert old["source"] == "ciopt" and old["baseline"] == 0 and old["cache_fetch_s"] == 0.5 and old["ran_tests"] == 1
    assert executors_of(path, 1) == {"local": (2, 3.0, 1)}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == records.SCHEMA_VERSION == 2


def test_the_branch_of_a_ci_checkout_comes_from_the_ci_environment(db_path: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_HEAD_REF", "feature/x")  # detached HEAD, as in a pull request's checkout
    with RecordWriter(db_path) as w:
        inv = begin(w, tmp_path / "not-a-repo")
    assert row(db_path, inv)["git_branch"] == "feature/x"


def rounded(x: object) -> object:
    if isinstance(x, float):
        return round(x, 9)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def test_the_rollup_equals_a_recount_from_the_actions_also_after_pruning(tmp_path: Path) -> None:
    import random

    from ciopt.analytics import metrics

    rng = random.Random(7)
    day = 86400.0
    now = time.time()
    t0 = (now // day - 6) * day + 3600  # six days ago, an hour after midnight
    columns = ["label", "key", "status", "started_at", "finished_at", "duration_s", "test_outcome", "critical_path"]
    docs = []
    for n in range(40):
        start = t0 + n * 3.5 * 3600
        rows = []
        for k in range(12):
            status = rng.choice(["executed", "executed", "failed", "cached_local", "skipped"])
            ran = status in ("executed", "failed")
            d = rng.uniform(0.1, 9.0) if ran else None
            outcome = None
            if k >= 6 and ran:
                outcome = rng.choice(["passed", "flaky", "failed"]) if status == "executed" else "failed"
            rows.append([f"//p:{k}", f"key{k}-{n // 10}", status, start + 1 if ran else None,
                         start + 1 + d if ran else None, d, outcome, int(ran and k % 4 == 0)])
        docs.append({"v": 1, "invocation": {"uuid": f"u{n}", "command": "test", "started_at": start,
                                            "finished_at": start + 60, "duration_s": 60.0, "exit_code": 0,
                                            "git_branch": rng.choice(["main", "dev"])},
                     "actions": {"columns": columns, "rows": rows}})
    path = tmp_path / "r.sqlite"
    exchange.merge(path, docs, origin=None)

    def both(branch: str | None) -> None:
        r = metrics.Records.load(path)
        for first in range(7):
            since = (now // day - first) * day
            by_day = metrics.Filter(since=since, branch=branch)  # whole days: the rollup
            by_row = metrics.Filter(since=since - 0.001, branch=branch)  # the action rows; no run starts then
            assert r.series(by_day) is not r.series(by_row)
            for figure in (metrics.slowest_targets, metrics.critical_path_frequency, metrics.flaky_tests):
                # Sums of seconds may differ in the last bits: they are added up in another order.
                assert rounded(figure(r, by_day)) == rounded(figure(r, by_row)), (figure.__name__, first, branch)

    for branch in (None, "main", "dev"):
        both(branch)
    assert records.prune(path, 3, now=now) > 0
    for branch in (None, "main", "dev"):
        both(branch)
