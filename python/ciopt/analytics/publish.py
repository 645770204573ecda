"""The end of every `ciopt build` / `ciopt test`: complete the invocation's record, and push it
to the shared backend so that it outlives the runner.

`finish_invocation` is the one call the build makes (workspace.py). It never raises:

* annotate: the loading time and the tests selection skipped go into the record, and its
  figures (time split, time saved, executor busy time) are derived (records.annotate);
* push, only when `analytics.enabled` is true and `cache.remote.url` names a Redis server
  (not under the emergency bypass): the record document goes to the records stream
  (stream.py) from a background thread, so that the build's report is printed meanwhile. At
  exit the process waits for it at most PUSH_TIMEOUT_S, counted from the push's start; what
  does not make it stays local (pushed_at NULL again) and goes with the next invocation's
  push, at most CATCH_UP records at a time. A record is sent at least once: one whose push
  was cut short may arrive twice, and pulls add it once.
"""

from __future__ import annotations

import atexit
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ciopt.analytics import records

if TYPE_CHECKING:
    from ciopt.config import Config
    from ciopt.exec.build_result import BuildResult

__all__ = ["PUSH_TIMEOUT_S", "finish_invocation", "push_url", "push_records", "wait_for_pushes"]

PUSH_TIMEOUT_S = 1.0
CATCH_UP = 20

_pushes: list[tuple[threading.Thread, float, Path, list[int]]] = []  # (thread, deadline, records, ids)
_pushes_lock = threading.Lock()
_atexit_registered = False


def finish_invocation(config: Config, path: Path, invocation_id: int, result: BuildResult,
                      warn: Callable[[str], None] | None = None) -> threading.Thread | None:
    """Completes and (when configured) pushes the record of a finished invocation. Returns the
    push thread, if one was started; the process waits for it at exit (bounded)."""
    say = warn or _warn_stderr
    if invocation_id == records.NO_INVOCATION:
        return None
    url = push_url(config)
    docs: list[tuple[int, dict]] = []
    try:
        # One connection for both: each open and close of a WAL database costs milliseconds.
        db = records._connect(path, create=False)
        try:
            unaffected = [str(o.label) for o in result.outcomes.values() if o.status == "skipped_unaffected"]
            records.annotate_in(db, invocation_id, loading_s=result.loading_s, unaffected=unaffected)
            if url is not None:
                docs = _take(db, invocation_id, config.analytics.retention_days)
        finally:
            db.close()
    except Exception as e:  # a record is never why a build fails
        say(f"build record not completed: {path}: {e}")
        return None
    if url is None or not docs:
        return None
    deadline = time.monotonic() + PUSH_TIMEOUT_S
    timeout = min(PUSH_TIMEOUT_S, config.cache.remote.timeout_s)
    thread = threading.Thread(target=_push_quietly, args=(url, path, docs, timeout, config, say),
                              name="ciopt-record-push", daemon=True)
    thread.start()
    with _pushes_lock:
        _pushes.append((thread, deadline, path, [i for i, _ in docs]))
        global _atexit_registered
        if not _atexit_registered:
            atexit.register(wait_for_pushes)
            _atexit_registered = True
    return thread


def push_url(config: Config) -> str | None:
    """The Redis server records are pushed to, or None: not configured, or not a Redis cache.
    With shards, the first one: records are one stream, not spread by key."""
    if not (config.record_analytics and config.use_remote_cache) or config.cache.remote.read_only:
        return None
    return next((u for u in config.cache.remote.urls if u.split("://", 1)[0].lower() in ("redis", "rediss", "unix")),
                None)


def wait_for_pushes() -> None:
    """Waits for started pushes, each until its deadline; called at exit."""
    with _pushes_lock:
        pending = list(_pushes)
        _pushes.clear()
    for thread, deadline, path, ids in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            _unmark(path, ids)
            _warn_stderr(f"build record not pushed within {PUSH_TIMEOUT_S:g}s; it stays local and goes "
                         "with the next invocation's push")


def push_records(url: str, path: Path, invocation_id: int, *, timeout_s: float = PUSH_TIMEOUT_S,
                 retention_days: float | None = None) -> int:
    """Pushes this invocation's record and up to CATCH_UP older local ones not pushed yet;
    returns how many went. Synchronous: what a build does, in its main thread (_take) and in
    the push thread (_send). Raises BackendError, sqlite3.Error, ValueError."""
    db = records._connect(path, create=False)
    try:
        docs = _take(db, invocation_id, retention_days)
    finally:
        db.close()
    _send(url, path, docs, timeout_s, retention_days)
    return len(docs)


def _take(db: sqlite3.Connection, invocation_id: int, retention_days: float | None) -> list[tuple[int, dict]]:
    """The record documents to push, marked pushed in the same transaction: the mark costs
    the build nothing here, where a connection is open anyway, and is undone if the push
    fails or has not finished at exit."""
    from ciopt.analytics.exchange import export_invocation

    cutoff = time.time() - retention_days * 86400 if retention_days is not None else 0.0
    db.execute("BEGIN IMMEDIATE")
    try:
        # The partial index invocations_unpushed makes this cheap however long the history.
        older = [r[0] for r in db.execute(
            "SELECT id FROM invocations WHERE pushed_at IS NULL AND id != ? AND origin IS NULL AND source = 'ciopt' "
            "AND finished_at IS NOT NULL AND started_at >= ? ORDER BY id DESC LIMIT ?",
            (invocation_id, cutoff, CATCH_UP))]
        out = []
        for i in (invocation_id, *older):
            doc = export_invocation(db, i)
            if doc is not None:
                out.append((i, doc))
        now = time.time()
        db.executemany("UPDATE invocations SET pushed_at = ? WHERE id = ?", [(now, i) for i, _ in out])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return out


def _send(url: str, path: Path, docs: list[tuple[int, dict]], timeout_s: float,
          retention_days: float | None) -> None:
    from ciopt.analytics.stream import RecordStream

    try:
        stream = RecordStream(url, timeout_s)
        try:
            stream.push_many([d for _, d in docs], retention_days=retention_days)
        finally:
            stream.close()
    except BaseException:
        _unmark(path, [i for i, _ in docs])
        raise


def _push_quietly(url: str, path: Path, docs: list[tuple[int, dict]], timeout_s: float, config: Config,
                  say: Callable[[str], None]) -> None:
    try:
        _send(url, path, docs, timeout_s, config.analytics.retention_days)
    except Exception as e:
        say(f"build record not pushed to {url}: {e}; it stays local")


def _unmark(path: Path, ids: list[int]) -> None:
    """The records did not reach the shared backend: the next push takes them along."""
    try:
        db = records._connect(path, create=False)
        try:
            db.executemany("UPDATE invocations SET pushed_at = NULL WHERE id = ?", [(i,) for i in ids])
        finally:
            db.close()
    except sqlite3.Error:
        pass  # they stay marked: the team misses them, the build does not fail


def _warn_stderr(message: str) -> None:
    try:
        sys.stderr.write(f"ciopt: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass
