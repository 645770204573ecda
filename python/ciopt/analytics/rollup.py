"""Per-target figures rolled up by day, so that reports over 10,000 invocations never read their
two million action rows.

`label_days` holds, per (branch, UTC day of the invocation's start, label): the real runs and
their durations (float64s, packed), the invocations with the target on their critical path,
and the real test runs with how many were flaky, flips and failures. Branch '*' (a name git
refuses) holds every branch together. Only invocations recorded by ciopt contribute (imported
history is compared as a whole, metrics.baseline_comparison).

An invocation contributes once (`invocations.rolled_up`), when it finishes or is merged;
readers catch up with any not rolled up yet (a database of an older ciopt), and pruning
withdraws exactly what the pruned invocations had added, so the rollup always equals a
recount from the actions that remain.

A flip is a real test run whose pass/fail differs from the previous real run of the same test
with the same ActionKey; it is decided when the run is rolled up, against the runs known then,
and kept in `actions.flip`.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ALL_BRANCHES", "DAY", "contribute", "roll_up_pending", "withdraw"]

ALL_BRANCHES = "*"
DAY = 86400.0
_PASSED = ("passed", "flaky")
_FAILED = ("failed", "timeout")


def _flip(db: sqlite3.Connection, invocation_id: int, label: str, key: str | None, outcome: str,
          started: float | None) -> int:
    if key is None:
        return 0
    prev = db.execute(
        "SELECT test_outcome FROM actions WHERE key = ? AND label = ? AND invocation_id != ? "
        "AND status IN ('executed', 'failed') AND test_outcome IS NOT NULL AND started_at < ? "
        "ORDER BY started_at DESC LIMIT 1", (key, label, invocation_id, started if started is not None else 1e300),
    ).fetchone()
    return int(prev is not None and (prev[0] in _PASSED) != (outcome in _PASSED))


def _rows(db: sqlite3.Connection, invocation_id: int) -> list[tuple]:
    return db.execute(
        "SELECT id, label, key, status, duration_s, critical_path, test_outcome, started_at, flip FROM actions "
        "WHERE invocation_id = ? AND (status IN ('executed', 'failed') OR critical_path = 1)",
        (invocation_id,)).fetchall()


def _aggregate(rows: Iterable[tuple]) -> dict[str, list]:
    """label -> [runs, durations, critical, critical_s, test_runs, flaky, flips, failed]."""
    out: dict[str, list] = {}
    for _id, label, _key, status, duration, critical, outcome, _started, flip in rows:
        acc = out.get(label)
        if acc is None:
            acc = out[label] = [0, array("d"), 0, 0.0, 0, 0, 0, 0]
        ran = status in ("executed", "failed")
        if ran and duration is not None:
            acc[0] += 1
            acc[1].append(duration)
        if critical:
            acc[2] += 1
            acc[3] += duration or 0.0
        if ran and outcome is not None:
            acc[4] += 1
            acc[5] += outcome == "flaky"
            acc[6] += flip
            acc[7] += outcome in _FAILED
    return out


def contribute(db: sqlite3.Connection, invocation_id: int) -> None:
    """Adds a finished invocation to the rollup, once. Inside the caller's transaction."""
    inv = db.execute("SELECT started_at, COALESCE(git_branch, ''), source, baseline, rolled_up, finished_at "
                     "FROM invocations WHERE id = ?", (invocation_id,)).fetchone()
    if inv is None or inv[4] or inv[5] is None:
        return
    started, branch, source, baseline = inv[0], inv[1], inv[2], inv[3]
    if source == "ciopt" and not baseline:
        rows = _rows(db, invocation_id)
        flips = {r[0] for r in rows if r[3] in ("executed", "failed") and r[6] is not None
                 and _flip(db, invocation_id, r[1], r[2], r[6], r[7])}
        if flips:
            db.executemany("UPDATE actions SET flip = 1 WHERE id = ?", [(i,) for i in flips])
            rows = [(*r[:8], 1) if r[0] in flips else r for r in rows]
        day = int(started // DAY)
        for label, acc in _aggregate(rows).items():
            for b in (branch, ALL_BRANCHES):
                db.execute(
                    "INSERT INTO label_days (branch, day, label, runs, durations, critical, critical_s, test_runs, "
                    "flaky, flips, failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (branch, day, label) DO UPDATE SET runs = runs + excluded.runs, "
                    "durations = CAST(durations || excluded.durations AS BLOB), critical = critical + excluded.critical, "
                    "critical_s = critical_s + excluded.critical_s, test_runs = test_runs + excluded.test_runs, "
                    "flaky = flaky + excluded.flaky, flips = flips + excluded.flips, failed = failed + excluded.failed",
                    (b, day, label, acc[0], acc[1].tobytes(), *acc[2:]))
    db.execute("UPDATE invocations SET rolled_up = 1 WHERE id = ?", (invocation_id,))


def withdraw(db: sqlite3.Connection, invocation_ids: Iterable[int]) -> None:
    """Takes invocations about to be deleted out of the rollup. Inside the caller's transaction."""
    for invocation_id in invocation_ids:
        inv = db.execute("SELECT started_at, COALESCE(git_branch, ''), rolled_up, source, baseline "
                         "FROM invocations WHERE id = ?", (invocation_id,)).fetchone()
        if inv is None or not inv[2] or inv[3] != "ciopt" or inv[4]:
            continue
        day = int(inv[0] // DAY)
        for label, acc in _aggregate(_rows(db, invocation_id)).items():
            for b in (inv[1], ALL_BRANCHES):
                row = db.execute("SELECT durations FROM label_days WHERE branch = ? AND day = ? AND label = ?",
                                 (b, day, label)).fetchone()
                if row is None:
                    continue
                left = array("d")
                left.frombytes(row[0] or b"")
                for d in acc[1]:
                    try:
                        left.remove(d)
                    except ValueError:
                        pass
                db.execute("UPDATE label_days SET runs = runs - ?, durations = ?, critical = critical - ?, "
                           "critical_s = critical_s - ?, test_runs = test_runs - ?, flaky = flaky - ?, "
                           "flips = flips - ?, failed = failed - ? WHERE branch = ? AND day = ? AND label = ?",
                           (acc[0], left.tobytes(), *acc[2:], b, day, label))
    db.execute("DELETE FROM label_days WHERE runs <= 0 AND critical <= 0 AND test_runs <= 0")


def roll_up_pending(path: Path) -> int:
    """Rolls up the finished invocations not rolled up yet (recorded by a ciopt before the rollup,
    or interrupted); returns how many. Raises sqlite3.Error (a read-only database, say)."""
    from ciopt.analytics.records import _connect

    db = _connect(Path(path), create=True)
    try:
        ids = [r[0] for r in db.execute("SELECT id FROM invocations WHERE rolled_up = 0 AND finished_at IS NOT NULL "
                                        "ORDER BY started_at, id")]
        if not ids:
            return 0
        db.execute("PRAGMA cache_size = -131072")
        db.execute("BEGIN IMMEDIATE")
        try:
            for i in ids:
                contribute(db, i)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(ids)
    finally:
        db.close()
