"""BuildRecords: schema, what begin/action/finish write, concurrency, failure tolerance, retention."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ciopt.analytics import records
from ciopt.analytics.records import (
    NO_INVOCATION,
    SCHEMA_VERSION,
    ActionRecord,
    RecordWriter,
    actions_of,
    critical_path,
    git_revision,
    prune,
    recent_invocations,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "records.sqlite"


class Warnings(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


def begin(writer: RecordWriter, workspace: Path, command: str = "build", **kw: object) -> int:
    args: dict[str, object] = {"patterns": ["//..."], "jobs": 4, "bypass": False, "remote": None} | kw
    return writer.begin(command, workspace=workspace, **args)  # type: ignore[arg-type]


def tables_and_indexes(path: Path) -> tuple[set[str], set[str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    return {n for t, n in rows if t == "table"}, {n for t, n in rows if t == "index"}


# --- schema -----------------------------------------------------------------


def test_schema_is_created_in_wal_mode_with_indexes(db_path: Path, tmp_path: Path) -> None:
    with RecordWriter(db_path) as w:
        assert begin(w, tmp_path) != NO_INVOCATION
    tables, indexes = tables_and_indexes(db_path)
    assert {"invocations", "actions", "schema_version"} <= tables
    assert {"invocations_started", "actions_invocation", "actions_label_started", "actions_status"} <= indexes
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [r[0] for r in db.execute("SELECT version FROM schema_version")] == list(range(1, SCHEMA_VERSION + 1))
        # The dashboard's "slowest actions of a label over time" query uses the index.
        plan = " ".join(str(r[-1]) for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM actions WHERE label = ? AND started_at > ?", ("//a:b", 0.0)))
        assert "actions_label_started" in plan


def test_reopening_does_not_migrate_again_and_newer_databases_are_used_as_they_are(
    db_path: Path, tmp_path: Path
) -> None:
    with RecordWriter(db_path) as w:
        begin(w, tmp_path)
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version = 99")  # written by a future ciopt that only added things
    warnings = Warnings()
    with RecordWriter(db_path, warn=warnings) as w:
        inv = begin(w, tmp_path)
        w.action(inv, ActionRecord(label="//a:b", status="executed", duration_s=1.0))
        w.finish(inv, 0)
    assert warnings == []
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert [i["actions_total"] for i in recent_invocations(db_path, 10)] == [1, 0]


def test_migrations_cover_every_version() -> None:
    assert len(records._MIGRATIONS) == SCHEMA_VERSION


# --- begin / action / finish ----------------------------------------------------


def test_begin_action_finish_round_trip(db_path: Path, tmp_path: Path) -> None:
    t0 = time.time()
    with RecordWriter(db_path) as w:
        inv = w.begin("test", ["//pkg/...", "//other:t"], tmp_path, 8, True, "tcp://sched:5555")
        w.action(inv, ActionRecord(
            label="//pkg:gen", status="executed", mnemonic="genrule", key="ab" * 32, executor="local",
            queued_at=t0, started_at=t0 + 0.5, finished_at=t0 + 2.0, exit_code=0,
            input_bytes=100, output_bytes=40, input_files=3, output_files=1, critical_path=True, depth=2,
            cpu_s=1.2, max_rss_bytes=1 << 20,
        ))
        w.action(inv, ActionRecord(label="//pkg:t", status="failed", mnemonic="py_test", exit_code=1,
                                   test_outcome="failed", attempts=3, message="1 test failed"))
        w.finish(inv, 1)

    [row] = recent_invocations(db_path, 5)
    assert row["id"] == inv and len(str(row["uuid"])) == 32
    assert row["command"] == "test" and row["patterns"] == ["//pkg/...", "//other:t"]
    assert row["workspace"] == str(tmp_path)
    assert row["jobs"] == 8 and row["bypass"] is True and row["remote"] == "tcp://sched:5555"
    assert row["exit_code"] == 1
    assert row["started_at"] >= t0 - 1 and row["finished_at"] >= row["started_at"]
    assert row["duration_s"] == pytest.approx(row["finished_at"] - row["started_at"])
    assert row["hostname"] and row["ciopt_version"]

    gen, test = actions_of(db_path, inv)
    assert gen["label"] == "//pkg:gen" and gen["mnemonic"] == "genrule" and gen["key"] == "ab" * 32
    assert gen["status"] == "executed" and gen["executor"] == "local"
    assert gen["duration_s"] == pytest.approx(1.5)  # derived from started/finished
    assert (gen["input_bytes"], gen["output_bytes"], gen["input_files"], gen["output_files"]) == (100, 40, 3, 1)
    assert gen["critical_path"] is True and gen["depth"] == 2 and gen["test_outcome"] is None
    assert test["status"] == "failed" and test["test_outcome"] == "failed" and test["attempts"] == 3
    assert test["message"] == "1 test failed" and test["critical_path"] is False


def test_finish_counts_from_the_actions(db_path: Path, tmp_path: Path) -> None:
    mix = [
        ActionRecord("//a:1", "executed", duration_s=2.0, input_bytes=10, output_bytes=1, critical_path=True),
        ActionRecord("//a:2", "executed", duration_s=3.0, input_bytes=20, bytes_uploaded=7),
        ActionRecord("//a:3", "cached_local", duration_s=0.01, critical_path=True),
        ActionRecord("//a:4", "cached_remote", duration_s=0.2, bytes_downloaded=500),
        ActionRecord("//a:5", "failed", duration_s=1.0),
        ActionRecord("//a:6", "skipped"),
        ActionRecord("//t:pass", "executed", test_outcome="passed", duration_s=4.0),
        ActionRecord("//t:cached", "cached_local", test_outcome="passed"),
        ActionRecord("//t:remote", "cached_remote", test_outcome="passed"),
        ActionRecord("//t:flaky", "executed", test_outcome="flaky", attempts=2, duration_s=1.0),
        ActionRecord("//t:fail", "failed", test_outcome="failed", duration_s=0.5),
        ActionRecord("//t:slow", "failed", test_outcome="timeout", duration_s=60.0),
    ]
    with RecordWriter(db_path) as w:
        inv = begin(w, tmp_path, "test")
        other = begin(w, tmp_path, "build")
        for rec in mix:
            w.action(inv, rec)
        w.action(other, ActionRecord("//x:y", "executed", duration_s=9.0))  # must not leak into inv's counts
        w.finish(inv, 1)
        w.finish(other, 0)
    rows = {r["id"]: r for r in recent_invocations(db_path, 10)}
    row = rows[inv]
    assert {k: row[k] for k in row if k.startswith(("actions_", "tests_"))} == {
        "actions_total": 12, "actions_executed": 4, "actions_cached_local": 2, "actions_cached_remote": 2,
        "actions_failed": 3, "actions_skipped": 1,
        "tests_passed": 3, "tests_failed": 2, "tests_flaky": 1, "tests_timeout": 1, "tests_cached": 2,
    }
    assert row["action_time_s"] == pytest.approx(2 + 3 + 1 + 4 + 1 + 0.5 + 60)  # only what ran
    assert row["critical_path_s"] == pytest.approx(2.01)
    assert (row["input_bytes"], row["output_bytes"], row["bytes_uploaded"], row["bytes_downloaded"]) == (30, 1, 7, 500)
    assert rows[other]["actions_total"] == 1 and rows[other]["critical_path_s"] is None
    assert len(actions_of(db_path, inv)) == 12


def test_an_unfinished_invocation_keeps_its_flushed_actions(db_path: Path, tmp_path: Path) -> None:
    # A killed build never calls finish(): its row stays, finished_at NULL, with what was flushed.
    w = RecordWriter(db_path)
    inv = begin(w, tmp_path)
    w.action(inv, ActionRecord("//a:b", "executed"))
    w.flush()
    [row] = recent_invocations(db_path, 1)
    assert row["finished_at"] is None and row["exit_code"] is None
    assert row["duration_s"] is None
    assert [a["label"] for a in actions_of(db_path, inv)] == ["//a:b"]
    w.close()


def test_started_at_can_be_given_so_loading_counts(db_path: Path, tmp_path: Path) -> None:
    started = time.time() - 7.0
    with RecordWriter(db_path) as w:
        inv = begin(w, tmp_path, started_at=started)
        w.finish(inv, 0)
    [row] = recent_invocations(db_path, 1)
    assert row["started_at"] == started and 7.0 <= row["duration_s"] < 60.0


def test_many_actions_are_batched_and_all_land(db_path: Path, tmp_path: Path) -> None:
    with RecordWriter(db_path) as w:
        inv = begin(w, tmp_path)
        start = time.perf_counter()
        for i in range(2000):
            w.action(inv, ActionRecord(f"//p{i // 10}:t{i}", "cached_local", key=f"{i:064x}", duration_s=0.001))
        w.finish(inv, 0)
        elapsed = time.perf_counter() - start
    assert recent_invocations(db_path, 1)[0]["actions_cached_local"] == 2000
    assert elapsed < 2.0, elapsed  # a no-op build of 2,000 targets must not be slowed by its record


def test_actions_from_many_threads(db_path: Path, tmp_path: Path) -> None:
    w = RecordWriter(db_path)
    inv = begin(w, tmp_path)

    def work(n: int) -> None:
        for i in range(200):
            w.action(inv, ActionRecord(f"//t{n}:a{i}", "executed", duration_s=0.0))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.finish(inv, 0)
    w.close()
    assert w.ok
    assert recent_invocations(db_path, 1)[0]["actions_total"] == 1600


def test_records_outside_the_schema_are_dropped_with_one_warning(db_path: Path, tmp_path: Path) -> None:
    bad_status = ActionRecord("//a:b", "hit")  # type: ignore[arg-type]
    bad_outcome = ActionRecord("//a:c", "executed", test_outcome="ok")  # type: ignore[arg-type]
    assert "status" in (bad_status.problem() or "") and "test_outcome" in (bad_outcome.problem() or "")
    assert ActionRecord("//a:d", "executed", test_outcome="flaky").problem() is None
    warnings = Warnings()
    with RecordWriter(db_path, warn=warnings) as w:
        inv = begin(w, tmp_path)
        w.action(inv, bad_status)
        w.action(inv, ActionRecord("//a:ok", "executed"))
        w.action(inv, bad_outcome)
        w.finish(inv, 0)
        assert w.ok  # still recording
    assert len(warnings) == 1 and "//a:b" in warnings[0]
    assert [a["label"] for a in actions_of(db_path, inv)] == ["//a:ok"]
    assert recent_invocations(db_path, 1)[0]["actions_total"] == 1


def test_git_commit_and_branch(db_path: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=trunk"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "f").write_text("x")
    subprocess.run([*git, "add", "f"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_revision(repo) == (head, "trunk")
    subprocess.run(["git", "checkout", "-q", "--detach"], cwd=repo, check=True)
    assert git_revision(repo) == (head, None)

    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    assert git_revision(not_a_repo) == (None, None)
    assert git_revision(tmp_path / "missing-dir") == (None, None)
    with RecordWriter(db_path) as w:
        begin(w, repo)
        begin(w, not_a_repo)
    plain, in_repo = recent_invocations(db_path, 2)
    assert (in_repo["git_commit"], in_repo["git_branch"]) == (head, None)
    assert (plain["git_commit"], plain["git_branch"]) == (None, None)


# --- several processes at once ---------------------------------------------------

WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ciopt.analytics.records import ActionRecord, RecordWriter
    db, go, name, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    while not go.exists():
        time.sleep(0.005)
    errors = []
    w = RecordWriter(db, warn=errors.append)
    inv = w.begin("build", [f"//{name}/..."], Path.cwd(), 2, False, None)
    for i in range(n):
        w.action(inv, ActionRecord(f"//{name}:a{i}", "executed" if i % 2 else "cached_local", duration_s=0.001))
        if i % 50 == 0:
            w.flush()  # many small transactions, to interleave with the other writers
    w.finish(inv, 0)
    w.close()
    print(inv)
    sys.exit(1 if errors else 0)
""")


def test_concurrent_writers_from_three_processes_all_land(db_path: Path, tmp_path: Path) -> None:
    # A fresh database: the three race to create the schema as well.
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    go = tmp_path / "go"
    n = 400
    procs = [
        subprocess.Popen([sys.executable, str(script), str(db_path), str(go), f"p{k}", str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(3)
    ]
    time.sleep(0.5)  # let all three start and wait on the go file
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ids = sorted(int(out.strip()) for out, _ in outs)
    assert len(set(ids)) == 3
    rows = recent_invocations(db_path, 10)
    assert sorted(r["id"] for r in rows) == ids
    for r in rows:
        assert r["actions_total"] == n and r["actions_executed"] == n // 2 and r["exit_code"] == 0
        labels = {a["label"] for a in actions_of(db_path, int(r["id"]))}
        assert len(labels) == n and {l.split(":")[0] for l in labels} == {r["patterns"][0][:-4]}


# --- a broken database never breaks a build ------------------------------------


def exercise(writer: RecordWriter, workspace: Path) -> int:
    inv = begin(writer, workspace)
    writer.action(inv, ActionRecord("//a:b", "executed"))
    writer.flush()
    writer.finish(inv, 0)
    assert writer.prune(30) == 0
    writer.close()
    writer.close()
    return inv


def test_corrupt_database_warns_once_and_does_not_raise(db_path: Path, tmp_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not a database\n" * 512)
    warnings = Warnings()
    w = RecordWriter(db_path, warn=warnings)
    assert exercise(w, tmp_path) == NO_INVOCATION
    assert len(warnings) == 1 and str(db_path) in warnings[0]
    assert not w.ok and w.error
    assert db_path.read_bytes().startswith(b"this is not a database")  # left alone


def test_unwritable_location_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store directory should be")
    warnings = Warnings()
    assert exercise(RecordWriter(blocker / "records.sqlite", warn=warnings), tmp_path) == NO_INVOCATION
    assert len(warnings) == 1
    # A directory where the database file should be.
    (tmp_path / "dir" / "records.sqlite").mkdir(parents=True)
    warnings.clear()
    assert exercise(RecordWriter(tmp_path / "dir" / "records.sqlite", warn=warnings), tmp_path) == NO_INVOCATION
    assert len(warnings) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_database_does_not_raise(db_path: Path, tmp_path: Path) -> None:
    with RecordWriter(db_path) as w:
        begin(w, tmp_path)
    db_path.chmod(0o444)
    warnings = Warnings()
    exercise(RecordWriter(db_path, warn=warnings), tmp_path)
    assert len(warnings) == 1


def test_database_broken_mid_build_stops_recording_quietly(db_path: Path, tmp_path: Path) -> None:
    warnings = Warnings()
    w = RecordWriter(db_path, warn=warnings)
    inv = begin(w, tmp_path)
    assert inv != NO_INVOCATION
    w.close()  # the next call reopens; make that open hit a corrupt file
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    db_path.write_bytes(b"\0garbage" * 1000)
    w.action(inv, ActionRecord("//a:b", "executed"))
    w.flush()
    w.finish(inv, 1)
    w.close()
    assert len(warnings) == 1


def test_default_warning_goes_to_stderr_once(db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"junk" * 1000)
    exercise(RecordWriter(db_path), tmp_path)
    err = capsys.readouterr().err
    assert err.count("ciopt: warning: build records disabled:") == 1


def test_readers_on_a_missing_database(tmp_path: Path) -> None:
    assert recent_invocations(tmp_path / "none.sqlite") == []
    assert actions_of(tmp_path / "none.sqlite", 1) == []
    assert prune(tmp_path / "none.sqlite", 1) == 0
    assert not (tmp_path / "none.sqlite").exists()


# --- retention ---------------------------------------------------------------------


def test_prune_removes_old_invocations_and_their_actions(db_path: Path, tmp_path: Path) -> None:
    with RecordWriter(db_path) as w:
        ids = []
        for _ in range(3):
            inv = begin(w, tmp_path)
            w.action(inv, ActionRecord("//a:b", "executed"))
            w.action(inv, ActionRecord("//a:c", "cached_local"))
            w.finish(inv, 0)
            ids.append(inv)
    now = time.time()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE invocations SET started_at = ? WHERE id = ?", (now - 40 * 86400, ids[0]))
        db.execute("UPDATE invocations SET started_at = ? WHERE id = ?", (now - 10 * 86400, ids[1]))
    assert prune(db_path, 30, now=now) == 1
    assert sorted(r["id"] for r in recent_invocations(db_path, 10)) == ids[1:]
    assert actions_of(db_path, ids[0]) == []
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM actions").fetchone()[0] == 4
    with RecordWriter(db_path) as w:
        assert w.prune(5) == 1
    assert [r["id"] for r in recent_invocations(db_path, 10)] == [ids[2]]


# --- critical path -------------------------------------------------------------------


def test_critical_path_is_the_longest_weighted_chain() -> None:
    durations = {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0, "e": 0.5}
    deps = {"c": ["a"], "d": ["b", "c"], "e": ["b", "unknown"]}
    assert critical_path(durations, deps) == ["a", "c", "d"]
    assert critical_path({}, {}) == []
    long_chain = {f"n{i}": 1.0 for i in range(5000)}
    chain_deps = {f"n{i}": [f"n{i - 1}"] for i in range(1, 5000)}
    assert critical_path(long_chain, chain_deps) == [f"n{i}" for i in range(5000)]
