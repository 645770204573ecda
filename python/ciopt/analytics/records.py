"""BuildRecords: what every `ciopt build` / `ciopt test` invocation did, in SQLite.

One database per store, `<store dir>/records.sqlite` (config key
`analytics.path` overrides it). Two tables carry the data:

* `invocations`: one row per command run: what was asked, by whom, where, on
  which commit, how it ended, and counts/sums of its actions precomputed at
  `finish()` so that "over time" charts never have to scan `actions`.
* `actions`: one row per action the invocation touched: its label, mnemonic,
  ActionKey, cache status, executor, timing (queued/started/finished), exit
  code, bytes, attempts, test outcome and whether it was on the critical path.

The dashboard built on it (`ciopt dashboard`, `ciopt analytics report`) asks:
slowest actions (actions by label and time), cache hit rates over time
(invocations by start time), flaky tests (actions with a test outcome),
critical path (actions flagged on it, invocation `critical_path_s`), executor
utilization (actions by executor and time, invocation `action_time_s` vs
`duration_s * jobs`) and bytes moved (input/output bytes and network bytes).

Times are Unix epoch seconds (REAL, UTC): `datetime(started_at, 'unixepoch')`
turns them into dates in SQL.

Writing must never break a build. `RecordWriter` turns every database problem
(corrupt file, unwritable directory, lock held too long, full disk) into one
warning on stderr and from then on records nothing for that invocation.

Concurrency: several ciopt processes may write at once. The database is in WAL
mode with a busy timeout, and every write is one short `BEGIN IMMEDIATE`
transaction, so writers queue for the lock instead of failing on an upgrade.
Actions are buffered and written in batches (at most `_FLUSH_ROWS` rows or
`_FLUSH_SECONDS` old), so a 1,000-action build costs a handful of commits.

Schema 2 (analytics, docs/analytics.md) adds where a record came from (`source`, `baseline`,
`origin`), figures derived from the actions when an invocation finishes or is merged (time
split, time saved, tests run and skipped by selection, per-executor busy time in
`invocation_executors`, per-target figures by day in `label_days`, see rollup.py), and
`pushed_at` / `pulls` for the shared backend. Retention never removes imported baseline
history.

Schema changes: `SCHEMA_VERSION` is kept in `PRAGMA user_version` (and a row
per applied version in `schema_version`). `_MIGRATIONS[n]` upgrades a database
from version n to n+1; a database newer than this ciopt is used as it is, so
migrations must only add (columns with defaults, tables, indexes), never
rename or drop.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

__all__ = [
    "ACTION_STATUSES",
    "NO_INVOCATION",
    "SCHEMA_VERSION",
    "TEST_OUTCOMES",
    "ActionRecord",
    "RecordWriter",
    "actions_of",
    "annotate",
    "annotate_in",
    "critical_path",
    "git_revision",
    "last_durations",
    "prune",
    "recent_invocations",
]

ActionStatus = Literal["executed", "cached_local", "cached_remote", "failed", "skipped"]
TestOutcome = Literal["passed", "failed", "flaky", "timeout"]
ACTION_STATUSES: tuple[str, ...] = ("executed", "cached_local", "cached_remote", "failed", "skipped")
TEST_OUTCOMES: tuple[str, ...] = ("passed", "failed", "flaky", "timeout")

NO_INVOCATION = 0  # what `begin` returns when nothing could be recorded (rowids start at 1)
SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 5.0
_FLUSH_ROWS = 256
_FLUSH_SECONDS = 2.0


# ----------------------------------------------------------------------------
# Schema.

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  REAL NOT NULL,              -- epoch seconds
    ciopt       TEXT                        -- ciopt version that applied it
);

CREATE TABLE IF NOT EXISTS invocations (
    id                    INTEGER PRIMARY KEY,
    uuid                  TEXT NOT NULL UNIQUE,
    command               TEXT NOT NULL,              -- build | test
    patterns              TEXT NOT NULL,              -- JSON list of the patterns asked for
    started_at            REAL NOT NULL,              -- epoch seconds
    finished_at           REAL,                       -- NULL: still running, or killed
    duration_s            REAL,
    exit_code             INTEGER,                    -- 0 ok, 1 build/test failure, 2 usage, 130 interrupted
    workspace             TEXT NOT NULL,
    hostname              TEXT,
    user                  TEXT,
    ciopt_version         TEXT,
    git_commit            TEXT,
    git_branch            TEXT,                       -- NULL on a detached HEAD
    ci                    TEXT,                       -- CI provider (github-actions, ...) or NULL
    bypass                INTEGER NOT NULL DEFAULT 0, -- 1: emergency bypass, no caches
    jobs                  INTEGER,                    -- local parallelism (-j)
    remote                TEXT,                       -- scheduler address, NULL = local only
    -- Filled by finish() from the invocation's actions rows.
    actions_total         INTEGER NOT NULL DEFAULT 0,
    actions_executed      INTEGER NOT NULL DEFAULT 0,
    actions_cached_local  INTEGER NOT NULL DEFAULT 0,
    actions_cached_remote INTEGER NOT NULL DEFAULT 0,
    actions_failed        INTEGER NOT NULL DEFAULT 0,
    actions_skipped       INTEGER NOT NULL DEFAULT 0,
    tests_passed          INTEGER NOT NULL DEFAULT 0, -- outcome passed, cached or run
    tests_failed          INTEGER NOT NULL DEFAULT 0, -- outcome failed or timeout
    tests_flaky           INTEGER NOT NULL DEFAULT 0,
    tests_timeout         INTEGER NOT NULL DEFAULT 0,
    tests_cached          INTEGER NOT NULL DEFAULT 0, -- passed without running (cache hit)
    action_time_s         REAL NOT NULL DEFAULT 0,    -- sum of durations of actions that ran
    critical_path_s       REAL,                       -- sum of durations on the critical path
    input_bytes           INTEGER NOT NULL DEFAULT 0,
    output_bytes          INTEGER NOT NULL DEFAULT 0,
    bytes_uploaded        INTEGER NOT NULL DEFAULT 0,
    bytes_downloaded      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS actions (
    id               INTEGER PRIMARY KEY,
    invocation_id    INTEGER NOT NULL REFERENCES invocations(id) ON DELETE CASCADE,
    label            TEXT NOT NULL,               -- //pkg:name
    mnemonic         TEXT,                        -- rule kind: genrule, py_test, ...
    key              TEXT,                        -- ActionKey hex
    status           TEXT NOT NULL CHECK (status IN
                         ('executed', 'cached_local', 'cached_remote', 'failed', 'skipped')),
    executor         TEXT,                        -- 'local' or a remote executor id
    queued_at        REAL,                        -- epoch seconds; started_at - queued_at = wait
    started_at       REAL,
    finished_at      REAL,
    duration_s       REAL,
    exit_code        INTEGER,
    input_bytes      INTEGER,
    output_bytes     INTEGER,
    input_files      INTEGER,
    output_files     INTEGER,
    bytes_uploaded   INTEGER NOT NULL DEFAULT 0,  -- over the network (remote cache/executor)
    bytes_downloaded INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 1,
    test_outcome     TEXT CHECK (test_outcome IS NULL OR test_outcome IN
                         ('passed', 'failed', 'flaky', 'timeout')),
    critical_path    INTEGER NOT NULL DEFAULT 0,  -- 1: on the invocation's critical path
    depth            INTEGER,                     -- longest dependency chain below it
    cpu_s            REAL,                        -- user + system CPU of the action's processes
    max_rss_bytes    INTEGER,
    message          TEXT                         -- short reason for a failure/skip
);

CREATE INDEX IF NOT EXISTS invocations_started ON invocations(started_at);
CREATE INDEX IF NOT EXISTS invocations_command_started ON invocations(command, started_at);
CREATE INDEX IF NOT EXISTS actions_invocation ON actions(invocation_id);
CREATE INDEX IF NOT EXISTS actions_label_started ON actions(label, started_at);
CREATE INDEX IF NOT EXISTS actions_status ON actions(status, invocation_id);
CREATE INDEX IF NOT EXISTS actions_key ON actions(key);
CREATE INDEX IF NOT EXISTS actions_executor_started ON actions(executor, started_at);
CREATE INDEX IF NOT EXISTS actions_tests ON actions(label, test_outcome) WHERE test_outcome IS NOT NULL;
"""

# Version 2 (issue 13, team-wide analytics): where a record came from (recorded here, pulled
# from the shared backend, imported from pre-ciopt CI history), and what finish() derives
# per invocation so that reports over 10,000 invocations never scan their actions: the time
# split, the time saved, and each executor's busy time.
_SCHEMA_V2 = """
ALTER TABLE invocations ADD COLUMN source TEXT NOT NULL DEFAULT 'ciopt';   -- ciopt | junit | github-actions
ALTER TABLE invocations ADD COLUMN baseline INTEGER NOT NULL DEFAULT 0;    -- 1: imported pre-ciopt history
ALTER TABLE invocations ADD COLUMN origin TEXT;            -- NULL: recorded here; else pulled/imported from
ALTER TABLE invocations ADD COLUMN loading_s REAL;         -- loading + analysis before the first action
ALTER TABLE invocations ADD COLUMN queue_wait_s REAL NOT NULL DEFAULT 0;   -- sum of started_at - queued_at
ALTER TABLE invocations ADD COLUMN cache_fetch_s REAL NOT NULL DEFAULT 0;  -- sum of durations of cache hits
ALTER TABLE invocations ADD COLUMN upload_s REAL;          -- last action's end to finish (uploads, record)
ALTER TABLE invocations ADD COLUMN ran_tests INTEGER NOT NULL DEFAULT 0;   -- tests that really ran
ALTER TABLE invocations ADD COLUMN unaffected_tests INTEGER NOT NULL DEFAULT 0;  -- skipped by selection
ALTER TABLE invocations ADD COLUMN saved_cache_s REAL NOT NULL DEFAULT 0;  -- last real run of each cache hit
ALTER TABLE invocations ADD COLUMN saved_selection_s REAL NOT NULL DEFAULT 0;  -- ... of each unaffected test
ALTER TABLE invocations ADD COLUMN saved_unknown INTEGER NOT NULL DEFAULT 0;  -- of those, never seen running
ALTER TABLE invocations ADD COLUMN pushed_at REAL;         -- when the shared backend took the record

ALTER TABLE invocations ADD COLUMN rolled_up INTEGER NOT NULL DEFAULT 0;  -- 1: in label_days (rollup.py)

ALTER TABLE actions ADD COLUMN unaffected INTEGER NOT NULL DEFAULT 0;     -- 1: a test skipped by selection
ALTER TABLE actions ADD COLUMN flip INTEGER NOT NULL DEFAULT 0;           -- 1: a test run that flipped (rollup.py)

-- Per-target figures by day and branch ('*': every branch), see rollup.py.
CREATE TABLE IF NOT EXISTS label_days (
    branch      TEXT NOT NULL,
    day         INTEGER NOT NULL,             -- floor(invocation started_at / 86400), UTC
    label       TEXT NOT NULL,
    runs        INTEGER NOT NULL DEFAULT 0,   -- real runs (executed or failed)
    durations   BLOB,                         -- their durations, float64 little-endian, unordered
    critical    INTEGER NOT NULL DEFAULT 0,   -- invocations with it on their critical path
    critical_s  REAL NOT NULL DEFAULT 0,
    test_runs   INTEGER NOT NULL DEFAULT 0,   -- real test runs
    flaky       INTEGER NOT NULL DEFAULT 0,   -- of them passed on a retry
    flips       INTEGER NOT NULL DEFAULT 0,   -- ... other result than the last run with the same key
    failed      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (branch, day, label)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS invocation_executors (
    invocation_id INTEGER NOT NULL REFERENCES invocations(id) ON DELETE CASCADE,
    executor      TEXT NOT NULL,              -- 'local' or a remote executor id
    actions       INTEGER NOT NULL,           -- actions that ran there (executed or failed)
    busy_s        REAL NOT NULL,              -- sum of their durations
    max_parallel  INTEGER NOT NULL,           -- most of them running at once
    PRIMARY KEY (invocation_id, executor)
);

CREATE TABLE IF NOT EXISTS pulls (
    source     TEXT PRIMARY KEY,              -- the shared backend pulled from
    last_id    TEXT NOT NULL,                 -- its last entry merged (a Redis stream id)
    pulled_at  REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS actions_critical ON actions(invocation_id) WHERE critical_path = 1;
CREATE INDEX IF NOT EXISTS invocations_unpushed ON invocations(id) WHERE pushed_at IS NULL;
CREATE INDEX IF NOT EXISTS invocations_source_started ON invocations(source, started_at);

-- What finish() now derives, for the invocations recorded before.
UPDATE invocations SET
    cache_fetch_s = COALESCE((SELECT SUM(duration_s) FROM actions a WHERE a.invocation_id = invocations.id
                              AND a.status IN ('cached_local', 'cached_remote')), 0),
    ran_tests = (SELECT COUNT(*) FROM actions a WHERE a.invocation_id = invocations.id
                 AND a.test_outcome IS NOT NULL AND a.status IN ('executed', 'failed'));
INSERT OR IGNORE INTO invocation_executors (invocation_id, executor, actions, busy_s, max_parallel)
    SELECT invocation_id, executor, COUNT(*), COALESCE(SUM(duration_s), 0), 1 FROM actions
    WHERE status IN ('executed', 'failed') AND executor IS NOT NULL GROUP BY invocation_id, executor;
"""

# _MIGRATIONS[n] takes a database at user_version n to n + 1. Only ever append.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    lambda db: _run_script(db, _SCHEMA_V1),
    lambda db: _run_script(db, _SCHEMA_V2),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the surrounding transaction; run statement by statement.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    assert not statement.strip(), statement


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
        check_same_thread=False,  # RecordWriter serializes use with its own lock
    )
    try:
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        db.execute("PRAGMA foreign_keys = ON")
        if create:
            _enable_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes
            _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _enable_wal(db: sqlite3.Connection) -> None:
    # WAL is a property of the file, so only the first opener changes it; two
    # first openers can race, and that switch does not always wait on the
    # busy handler, so retry briefly.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _migrate(db: sqlite3.Connection) -> None:
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    from ciopt import __version__

    db.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = db.execute("PRAGMA user_version").fetchone()[0]
        while version < SCHEMA_VERSION:
            _MIGRATIONS[version](db)
            version += 1
            db.execute(
                "INSERT OR REPLACE INTO schema_version (version, applied_at, ciopt) VALUES (?, ?, ?)",
                (version, time.time(), __version__),
            )
            db.execute(f"PRAGMA user_version = {version}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# ----------------------------------------------------------------------------
# One action's record.


@dataclass
class ActionRecord:
    """One action of an invocation, as the executor saw it. Times are epoch seconds."""

    label: str
    status: ActionStatus
    mnemonic: str | None = None
    key: str | None = None
    executor: str | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None  # None: finished_at - started_at when both are known
    exit_code: int | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    input_files: int | None = None
    output_files: int | None = None
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    attempts: int = 1
    test_outcome: TestOutcome | None = None
    critical_path: bool = False
    depth: int | None = None
    cpu_s: float | None = None
    max_rss_bytes: int | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if self.duration_s is None and self.started_at is not None and self.finished_at is not None:
            self.duration_s = max(0.0, self.finished_at - self.started_at)

    def problem(self) -> str | None:
        """Why this record cannot be stored (a value outside the schema), or None."""
        if self.status not in ACTION_STATUSES:
            return f"status must be one of {', '.join(ACTION_STATUSES)}, got {self.status!r}"
        if self.test_outcome is not None and self.test_outcome not in TEST_OUTCOMES:
            return f"test_outcome must be None or one of {', '.join(TEST_OUTCOMES)}, got {self.test_outcome!r}"
        return None


_ACTION_COLUMNS = tuple(f.name for f in fields(ActionRecord))
_INSERT_ACTION = (
    f"INSERT INTO actions (invocation_id, {', '.join(_ACTION_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in _ACTION_COLUMNS)})"
)


def _action_row(invocation_id: int, rec: ActionRecord) -> tuple[object, ...]:
    # getattr, not dataclasses.asdict: asdict deep-copies every field and cost 80 ms per
    # thousand actions on the no-op build.
    values = {c: getattr(rec, c) for c in _ACTION_COLUMNS}
    values["critical_path"] = int(bool(rec.critical_path))
    if values["message"] is not None:
        values["message"] = str(values["message"])[:2000]
    return (invocation_id, *(values[c] for c in _ACTION_COLUMNS))


# ----------------------------------------------------------------------------
# Context of an invocation (all fail soft).


def git_revision(workspace: Path) -> tuple[str | None, str | None]:
    """(commit, branch) of the work tree at `workspace`; None for what cannot be read."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD", "--abbrev-ref", "HEAD"],
            cwd=workspace,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None, None
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) != 2:
        return None, None
    commit, branch = lines
    return commit, (None if branch == "HEAD" else branch)


def _ci_provider(env: Mapping[str, str]) -> str | None:
    for var, name in (
        ("GITHUB_ACTIONS", "github-actions"),
        ("GITLAB_CI", "gitlab"),
        ("BUILDKITE", "buildkite"),
        ("CIRCLECI", "circleci"),
        ("JENKINS_URL", "jenkins"),
    ):
        if env.get(var):
            return name
    return "ci" if env.get("CI", "").lower() in ("1", "true", "yes") else None


def _ci_branch(env: Mapping[str, str]) -> str | None:
    """The branch a CI job builds: CI checkouts are usually a detached HEAD, and a team's
    records are only comparable per branch when they carry one."""
    for var in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "BUILDKITE_BRANCH",
                "CIRCLE_BRANCH", "BRANCH_NAME", "GIT_BRANCH"):
        if env.get(var):
            return env[var]
    return None


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container, no LOGNAME: not worth failing over
        return None


# ----------------------------------------------------------------------------
# Writing.


class RecordWriter:
    """Writes BuildRecords to the database at `path`; never raises for database problems.

    Typical use by `ciopt build` / `ciopt test`::

        writer = RecordWriter(config.analytics.path)
        inv = writer.begin("build", patterns, workspace, jobs=8, bypass=config.bypass, remote=None)
        writer.action(inv, ActionRecord(label="//a:b", status="executed", ...))  # any thread
        writer.finish(inv, exit_code)
        writer.close()

    The first database problem is reported once to stderr (or to `warn`); the
    writer is then disabled and every later call does nothing. An ActionRecord
    with a value outside the schema (`ActionRecord.problem()`) is dropped with
    one warning, and recording goes on. `ok` and `error` tell
    whether that happened. Thread-safe.
    """

    def __init__(self, path: Path, *, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.error: str | None = None
        self._warn = warn if warn is not None else _warn_stderr
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[object, ...]] = []
        self._last_flush = time.monotonic()
        self._warned_invalid = False

    @property
    def ok(self) -> bool:
        return self.error is None

    # -- guarded plumbing --

    def _failed(self, exc: BaseException) -> None:
        self._pending.clear()
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
            self._warn(f"build records disabled: {self.path}: {exc}")
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                pass
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = _connect(self.path, create=True)
        return self._db

    def _write(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self._write(lambda db: db.executemany(_INSERT_ACTION, rows))
        self._last_flush = time.monotonic()

    # -- API --

    def begin(
        self,
        command: str,
        patterns: list[str],
        workspace: Path,
        jobs: int,
        bypass: bool,
        remote: str | None,
        *,
        started_at: float | None = None,
    ) -> int:
        """Records the start of an invocation; returns its id (NO_INVOCATION if not recorded).

        `started_at` (epoch seconds, default now): when the command started, so
        that loading and analysis before this call count in its duration.
        """
        with self._lock:
            if self.error is not None:
                return NO_INVOCATION
            try:
                from ciopt import __version__

                now = time.time() if started_at is None else started_at
                commit, branch = git_revision(workspace)
                branch = branch or _ci_branch(os.environ)
                row = {
                    "uuid": uuid.uuid4().hex,
                    "command": command,
                    "patterns": json.dumps(list(patterns)),
                    "started_at": now,
                    "workspace": str(workspace),
                    "hostname": socket.gethostname(),
                    "user": _user(),
                    "ciopt_version": __version__,
                    "git_commit": commit,
                    "git_branch": branch,
                    "ci": _ci_provider(os.environ),
                    "bypass": int(bool(bypass)),
                    "jobs": jobs,
                    "remote": remote,
                }
                sql = f"INSERT INTO invocations ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})"
                cursor = self._write(lambda db: db.execute(sql, tuple(row.values())))
                assert isinstance(cursor, sqlite3.Cursor) and cursor.lastrowid is not None
                return cursor.lastrowid
            except Exception as e:
                self._failed(e)
                return NO_INVOCATION

    def action(self, invocation_id: int, rec: ActionRecord) -> None:
        """Records one action. Buffered; written in batches and at finish()/flush()/close()."""
        with self._lock:
            if self.error is not None or invocation_id == NO_INVOCATION:
                return
            try:
                problem = rec.problem()
                if problem is not None:
                    # A caller's bug, but recording must not turn it into a
                    # failed build: drop the row, say so once, keep recording.
                    if not self._warned_invalid:
                        self._warned_invalid = True
                        self._warn(f"build records: action {rec.label} not recorded: {problem}")
                    return
                self._pending.append(_action_row(invocation_id, rec))
                if len(self._pending) >= _FLUSH_ROWS or time.monotonic() - self._last_flush >= _FLUSH_SECONDS:
                    self._flush_locked()
            except Exception as e:
                self._failed(e)

    def flush(self) -> None:
        """Writes buffered actions now."""
        with self._lock:
            if self.error is not None:
                return
            try:
                self._flush_locked()
            except Exception as e:
                self._failed(e)

    def finish(self, invocation_id: int, exit_code: int) -> None:
        """Records the end of an invocation and its counts, computed from its actions rows."""
        with self._lock:
            if self.error is not None or invocation_id == NO_INVOCATION:
                return
            try:
                self._flush_locked()
                now = time.time()
                self._write(lambda db: _finish(db, invocation_id, exit_code, now))
            except Exception as e:
                self._failed(e)

    def prune(self, older_than_days: float) -> int:
        """Deletes invocations started more than `older_than_days` ago; their count (0 on error)."""
        with self._lock:
            if self.error is not None:
                return 0
            try:
                self._flush_locked()
                removed = self._write(lambda db: _prune(db, time.time() - older_than_days * 86400.0))
                return int(removed)  # type: ignore[call-overload]
            except Exception as e:
                self._failed(e)
                return 0

    def close(self) -> None:
        """Writes what is buffered and closes the database. Safe to call twice."""
        with self._lock:
            try:
                if self.error is None:
                    self._flush_locked()
            except Exception as e:
                self._failed(e)
            if self._db is not None:
                try:
                    self._db.close()
                except Exception:
                    pass
                self._db = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warn_stderr(message: str) -> None:
    try:
        sys.stderr.write(f"ciopt: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


_COUNTS = """
SELECT
    COUNT(*)                                                             AS actions_total,
    COALESCE(SUM(status = 'executed'), 0)                                AS actions_executed,
    COALESCE(SUM(status = 'cached_local'), 0)                            AS actions_cached_local,
    COALESCE(SUM(status = 'cached_remote'), 0)                           AS actions_cached_remote,
    COALESCE(SUM(status = 'failed'), 0)                                  AS actions_failed,
    COALESCE(SUM(status = 'skipped'), 0)                                 AS actions_skipped,
    COALESCE(SUM(test_outcome = 'passed'), 0)                            AS tests_passed,
    COALESCE(SUM(test_outcome IN ('failed', 'timeout')), 0)              AS tests_failed,
    COALESCE(SUM(test_outcome = 'flaky'), 0)                             AS tests_flaky,
    COALESCE(SUM(test_outcome = 'timeout'), 0)                           AS tests_timeout,
    COALESCE(SUM(test_outcome = 'passed'
                 AND status IN ('cached_local', 'cached_remote')), 0)   AS tests_cached,
    COALESCE(SUM(CASE WHEN status IN ('executed', 'failed')
                      THEN duration_s END), 0.0)                        AS action_time_s,
    SUM(CASE WHEN critical_path THEN duration_s END)                     AS critical_path_s,
    COALESCE(SUM(input_bytes), 0)                                        AS input_bytes,
    COALESCE(SUM(output_bytes), 0)                                       AS output_bytes,
    COALESCE(SUM(bytes_uploaded), 0)                                     AS bytes_uploaded,
    COALESCE(SUM(bytes_downloaded), 0)                                   AS bytes_downloaded
FROM actions WHERE invocation_id = ?
"""


def _finish(db: sqlite3.Connection, invocation_id: int, exit_code: int, now: float) -> None:
    db.execute(
        "UPDATE invocations SET finished_at = :now, duration_s = MAX(0.0, :now - started_at), "
        "exit_code = :exit_code WHERE id = :id",
        {"now": now, "exit_code": exit_code, "id": invocation_id},
    )
    _recount(db, invocation_id)
    _derive(db, invocation_id)


def _recount(db: sqlite3.Connection, invocation_id: int) -> None:
    counts = dict(db.execute(_COUNTS, (invocation_id,)).fetchone())
    assignments = ", ".join(f"{name} = :{name}" for name in counts)
    db.execute(f"UPDATE invocations SET {assignments} WHERE id = :id", {**counts, "id": invocation_id})


_DERIVED = """
SELECT
    COALESCE(SUM(CASE WHEN queued_at IS NOT NULL AND started_at > queued_at
                      THEN started_at - queued_at END), 0.0)                      AS queue_wait_s,
    COALESCE(SUM(CASE WHEN status IN ('cached_local', 'cached_remote') THEN duration_s END), 0.0)
                                                                                  AS cache_fetch_s,
    COALESCE(SUM(test_outcome IS NOT NULL AND status IN ('executed', 'failed')), 0) AS ran_tests,
    COALESCE(SUM(unaffected = 1), 0)                                               AS unaffected_tests,
    MAX(finished_at)                                                               AS last_finished
FROM actions WHERE invocation_id = ?
"""

# The latest real run (executed) of each action that did not run: its label's duration then,
# started before this invocation. The (label, started_at) index answers each in a few rows.
_SAVINGS = """
SELECT a.status, a.unaffected,
       (SELECT b.duration_s FROM actions b
         WHERE b.label = a.label AND b.status = 'executed' AND b.duration_s IS NOT NULL AND b.started_at < :t0
         ORDER BY b.started_at DESC LIMIT 1) AS last_s
FROM actions a
WHERE a.invocation_id = :id AND (a.status IN ('cached_local', 'cached_remote') OR a.unaffected = 1)
"""


def _derive(db: sqlite3.Connection, invocation_id: int) -> None:
    """Fills what analytics read per invocation (schema v2 columns, invocation_executors) from
    its actions rows. Idempotent: finish(), annotate() and merging pulled records all call it."""
    row = db.execute("SELECT started_at, finished_at FROM invocations WHERE id = ?", (invocation_id,)).fetchone()
    if row is None:
        return
    started, finished = row[0], row[1]
    d = dict(db.execute(_DERIVED, (invocation_id,)).fetchone())
    last = d.pop("last_finished")
    d["upload_s"] = max(0.0, finished - last) if finished is not None and last is not None else None
    saved_cache = saved_selection = 0.0
    unknown = 0
    for status, unaffected, last_s in db.execute(_SAVINGS, {"id": invocation_id, "t0": started}):
        if last_s is None:
            unknown += 1
        elif unaffected:
            saved_selection += last_s
        else:
            saved_cache += last_s
    d.update(saved_cache_s=saved_cache, saved_selection_s=saved_selection, saved_unknown=unknown, id=invocation_id)
    db.execute(f"UPDATE invocations SET {', '.join(f'{k} = :{k}' for k in d if k != 'id')} WHERE id = :id", d)

    spans: dict[str, list[tuple[float, float]]] = {}
    busy: dict[str, list[float]] = {}
    for executor, s, f, dur in db.execute(
            "SELECT executor, started_at, finished_at, duration_s FROM actions WHERE invocation_id = ? "
            "AND status IN ('executed', 'failed') AND executor IS NOT NULL", (invocation_id,)):
        b = busy.setdefault(executor, [0, 0.0])
        b[0] += 1
        b[1] += dur or 0.0
        if s is not None and f is not None:
            spans.setdefault(executor, []).append((s, f))
    db.execute("DELETE FROM invocation_executors WHERE invocation_id = ?", (invocation_id,))
    db.executemany(
        "INSERT INTO invocation_executors (invocation_id, executor, actions, busy_s, max_parallel) "
        "VALUES (?, ?, ?, ?, ?)",
        [(invocation_id, e, int(n), float(t), _max_parallel(spans.get(e, ()))) for e, (n, t) in busy.items()])
    from ciopt.analytics import rollup  # here: rollup.py reads through this module

    rollup.contribute(db, invocation_id)


def _max_parallel(spans: Iterable[tuple[float, float]]) -> int:
    """Most intervals open at once (an end at t comes before a start at t)."""
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])
    best = running = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return max(1, best)


def _prune(db: sqlite3.Connection, cutoff: float) -> int:
    # Imported pre-ciopt history is the baseline every later figure is compared with: it is
    # older than the retention window by nature, so retention never removes it.
    old = "SELECT id FROM invocations WHERE started_at < ? AND baseline = 0"
    from ciopt.analytics import rollup

    rollup.withdraw(db, [r[0] for r in db.execute(old, (cutoff,))])
    # Explicit, so pruning does not depend on foreign_keys being on in this connection.
    db.execute(f"DELETE FROM actions WHERE invocation_id IN ({old})", (cutoff,))
    db.execute(f"DELETE FROM invocation_executors WHERE invocation_id IN ({old})", (cutoff,))
    return db.execute("DELETE FROM invocations WHERE started_at < ? AND baseline = 0", (cutoff,)).rowcount


# ----------------------------------------------------------------------------
# Reading and maintenance (these raise sqlite3.Error; they are not on a build's path).


def _read_only(path: Path) -> sqlite3.Connection | None:
    if not Path(path).is_file():
        return None
    db = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    db.row_factory = sqlite3.Row
    return db


def _invocation_dict(row: sqlite3.Row) -> dict[str, object]:
    out = dict(row)
    try:
        out["patterns"] = json.loads(out["patterns"])
    except (TypeError, ValueError):
        pass
    out["bypass"] = bool(out.get("bypass"))
    return out


def recent_invocations(path: Path, limit: int = 20) -> list[dict[str, object]]:
    """The newest `limit` invocations, newest first, as column -> value dicts
    (`patterns` decoded to a list, `bypass` a bool). [] when there is no database."""
    db = _read_only(path)
    if db is None:
        return []
    try:
        rows = db.execute("SELECT * FROM invocations ORDER BY started_at DESC, id DESC LIMIT ?", (limit,))
        return [_invocation_dict(r) for r in rows]
    finally:
        db.close()


def actions_of(path: Path, invocation_id: int) -> list[dict[str, object]]:
    """The actions of one invocation in the order they were recorded (`critical_path` a bool)."""
    db = _read_only(path)
    if db is None:
        return []
    try:
        rows = db.execute("SELECT * FROM actions WHERE invocation_id = ? ORDER BY id", (invocation_id,))
        out = []
        for r in rows:
            d = dict(r)
            d["critical_path"] = bool(d["critical_path"])
            out.append(d)
        return out
    finally:
        db.close()


def last_durations(path: Path, mnemonic: str, limit: int = 20) -> dict[str, float]:
    """label -> seconds of its latest real run (executed or failed) among the last `limit`
    invocations: what the test runner balances batches by. {} when there is no database."""
    try:
        db = _read_only(path)
    except sqlite3.Error:
        return {}
    if db is None:
        return {}
    try:
        rows = db.execute(
            "SELECT a.label, a.duration_s FROM actions a JOIN (SELECT id FROM invocations ORDER BY started_at DESC "
            "LIMIT ?) i ON a.invocation_id = i.id WHERE a.mnemonic = ? AND a.status IN ('executed', 'failed') "
            "AND a.duration_s IS NOT NULL ORDER BY a.finished_at", (limit, mnemonic))
        return {label: float(d) for label, d in rows}  # later runs overwrite earlier ones
    except sqlite3.Error:
        return {}
    finally:
        db.close()


def annotate(path: Path, invocation_id: int, *, loading_s: float | None = None,
             unaffected: Iterable[str] = ()) -> None:
    """Adds what only the caller knows to a finished invocation: the seconds spent loading and
    analysing before the first action, and the labels selection skipped as unaffected (the
    schema's status for them is 'skipped'), with the time that saved. Raises sqlite3.Error;
    the build's hook (analytics/publish.py) turns that into a warning."""
    if invocation_id == NO_INVOCATION:
        return
    db = _connect(Path(path), create=True)
    try:
        annotate_in(db, invocation_id, loading_s=loading_s, unaffected=unaffected)
    finally:
        db.close()


def annotate_in(db: sqlite3.Connection, invocation_id: int, *, loading_s: float | None = None,
                unaffected: Iterable[str] = ()) -> None:
    """annotate() on an open connection, in one transaction. Called once per invocation, after
    finish(): the unaffected tests' savings are added to what finish() derived."""
    labels = list(unaffected)
    db.execute("BEGIN IMMEDIATE")
    try:
        if loading_s is not None:
            db.execute("UPDATE invocations SET loading_s = ? WHERE id = ?", (loading_s, invocation_id))
        if labels:
            db.executemany("UPDATE actions SET unaffected = 1 WHERE invocation_id = ? AND label = ?",
                           [(invocation_id, label) for label in labels])
            started = db.execute("SELECT started_at FROM invocations WHERE id = ?", (invocation_id,)).fetchone()
            saved, unknown, count = 0.0, 0, 0
            for (last_s,) in db.execute(
                    "SELECT (SELECT b.duration_s FROM actions b WHERE b.label = a.label AND b.status = 'executed' "
                    "AND b.duration_s IS NOT NULL AND b.started_at < :t0 ORDER BY b.started_at DESC LIMIT 1) "
                    "FROM actions a WHERE a.invocation_id = :id AND a.unaffected = 1",
                    {"id": invocation_id, "t0": started[0] if started else 0.0}):
                count += 1
                if last_s is None:
                    unknown += 1
                else:
                    saved += last_s
            db.execute("UPDATE invocations SET unaffected_tests = ?, saved_selection_s = ?, "
                       "saved_unknown = saved_unknown + ? WHERE id = ?", (count, saved, unknown, invocation_id))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def prune(path: Path, older_than_days: float, *, now: float | None = None) -> int:
    """Deletes invocations (and their actions) started more than `older_than_days`
    before `now`; returns how many invocations went. 0 when there is no database."""
    if not Path(path).is_file():
        return 0
    db = _connect(Path(path), create=True)
    try:
        cutoff = (time.time() if now is None else now) - older_than_days * 86400.0
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = _prune(db, cutoff)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return removed
    finally:
        db.close()


# ----------------------------------------------------------------------------
# Critical path, for the executor to flag actions before recording them.


def critical_path(durations: Mapping[str, float], deps: Mapping[str, Iterable[str]]) -> list[str]:
    """The chain of actions whose durations sum highest, first to last.

    `durations`: action (label) -> seconds; `deps`: action -> the actions it
    waited for (unknown names ignored). The graph must be acyclic (it is: an
    action graph with a cycle is rejected before anything runs).
    """
    best: dict[str, tuple[float, str | None]] = {}  # node -> (length of the longest chain ending here, previous)

    def visit(node: str) -> float:
        # Iterative post-order: deep chains must not hit the recursion limit.
        stack = [(node, False)]
        while stack:
            n, ready = stack.pop()
            if n in best:
                continue
            preds = [d for d in deps.get(n, ()) if d in durations]
            if not ready:
                stack.append((n, True))
                stack.extend((p, False) for p in preds if p not in best)
                continue
            prev = max(preds, key=lambda p: best[p][0], default=None)
            best[n] = (durations[n] + (best[prev][0] if prev is not None else 0.0), prev)
        return best[node][0]

    end = max(durations, key=visit, default=None)
    chain: list[str] = []
    while end is not None:
        chain.append(end)
        end = best[end][1]
    return chain[::-1]
