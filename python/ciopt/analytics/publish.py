"""The end of every `ciopt build` / `ciopt test`: complete the invocation's record, and push it
to the shared backend so that it outlives the runner.

`finish_invocation` is the one call the build makes (workspace.py), after the remote cache tier
flushed its uploads and before it closes. It never raises:

* annotate: the loading time and the tests selection skipped go into the record, and its
  figures (time split, time saved, executor busy time) are derived (records.annotate);
* push, only when `analytics.enabled` is true and `cache.remote.url` names a Redis server or an
  http(s) cache (not read_only, not under the emergency bypass): the record document goes
  over the connection the build's remote tier already has (cache/tiered.py), so the push
  costs no import and no new connection, only one round trip: to Redis, an XADD to the
  records stream (stream.py); to `ciopt cache serve`, a POST /records (cache/server.py). A
  server without that endpoint (bazel-remote, nginx: 404) is remembered for the invocation
  and left alone, silently. Every socket wait of the push is at most PUSH_TIMEOUT_S. When the
  tier is down (its breaker tripped) or the push fails, the record stays local (pushed_at
  NULL) with one warning, and goes with the next invocation's push, at most CATCH_UP records
  at a time. A record is sent at least once: one whose push was cut short may arrive twice,
  and pulls add it once.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ciopt.analytics import records

if TYPE_CHECKING:
    from ciopt.cache.tiered import RemoteTier
    from ciopt.config import Config
    from ciopt.exec.build_result import BuildResult

__all__ = ["PUSH_TIMEOUT_S", "finish_invocation", "push_url", "push_records", "post_body"]

PUSH_TIMEOUT_S = 1.0
CATCH_UP = 20
REDIS_SCHEMES = ("redis", "rediss", "unix")
HTTP_SCHEMES = ("http", "https")


def finish_invocation(config: Config, path: Path, invocation_id: int, result: BuildResult,
                      warn: Callable[[str], None] | None = None, tier: RemoteTier | None = None) -> int:
    """Completes and (when configured) pushes the record of a finished invocation through the
    build's remote tier `tier`; returns how many records were pushed."""
    say = warn or records._warn_stderr
    if invocation_id == records.NO_INVOCATION:
        return 0
    url = push_url(config)
    backend = _records_backend(tier, url) if url is not None else None
    docs: list[tuple[int, dict]] = []
    try:
        # One connection for both: each open and close of a WAL database costs milliseconds.
        db = records._connect(path, create=False)
        try:
            unaffected = [str(o.label) for o in result.outcomes.values() if o.status == "skipped_unaffected"]
            records.annotate_in(db, invocation_id, loading_s=result.loading_s, unaffected=unaffected)
            if backend is not None:
                # To an HTTP cache, only this record first: one that has no records endpoint
                # (most) should not cost the export of the ones left behind on every build.
                redis = _is_redis(url)  # type: ignore[arg-type]
                docs = _take(db, invocation_id, config.analytics.retention_days, CATCH_UP if redis else 0)
        finally:
            db.close()
    except Exception as e:  # a record is never why a build fails
        say(f"build record not completed: {path}: {e}")
        return 0
    if url is None:
        return 0
    if backend is None:
        if tier is None or tier.broken is not None:  # down: the tier said so once; the record waits
            why = tier.broken if tier is not None else "the remote cache is not in use"
            say(f"build record not pushed to {url} ({why}); it stays local and goes with the next "
                "invocation's push")
        return 0
    if not docs:
        return 0
    retention = config.analytics.retention_days
    timeout = min(PUSH_TIMEOUT_S, config.cache.remote.timeout_s)
    try:
        if _is_redis(url):  # type: ignore[arg-type]
            _send_redis(backend, docs, timeout, retention)
            return len(docs)
        if not _send_http(backend, docs, timeout, retention):
            _unmark(path, [i for i, _ in docs])
            return 0
    except Exception as e:
        _unmark(path, [i for i, _ in docs])
        say(f"build record not pushed to {url}: {e}; it stays local and goes with the next invocation's push")
        return 0
    older: list[tuple[int, dict]] = []
    try:  # the server takes records: now the ones left behind by earlier invocations
        older = _take_older(path, invocation_id, retention)
        if older:
            _send_http(backend, older, timeout, retention)
        return len(docs) + len(older)
    except Exception as e:
        _unmark(path, [i for i, _ in older])
        say(f"older build records not pushed to {url}: {e}; they stay local")
        return len(docs)


def push_url(config: Config) -> str | None:
    """Where records are pushed, or None: not configured, read-only, or no cache that can take
    them. With shards, the first Redis URL (records are one stream, not spread by key), else
    the first http(s) one."""
    if not (config.record_analytics and config.use_remote_cache) or config.cache.remote.read_only:
        return None
    urls = config.cache.remote.urls
    return next((u for u in urls if _scheme(u) in REDIS_SCHEMES), None) or \
        next((u for u in urls if _scheme(u) in HTTP_SCHEMES), None)


def post_body(documents: list[dict]) -> bytes:
    """A POST /records body: zlib(JSON {"records": [document, ...]}), Content-Encoding deflate."""
    from ciopt.analytics.exchange import encode

    return zlib.compress(b'{"records":[' + b",".join(encode(d) for d in documents) + b"]}", 1)


def push_records(url: str, path: Path, invocation_id: int, *, timeout_s: float = PUSH_TIMEOUT_S,
                 retention_days: float | None = None) -> int:
    """Pushes this invocation's record and up to CATCH_UP older local ones not pushed yet over a
    connection of its own; returns how many went. Synchronous, for tools and benchmarks (the
    build pushes through its remote tier instead). Raises BackendError, sqlite3.Error,
    ValueError."""
    from ciopt.cache.shards import connect

    backend = connect([url], timeout_s)
    try:
        db = records._connect(path, create=False)
        try:
            docs = _take(db, invocation_id, retention_days, CATCH_UP)
        finally:
            db.close()
        try:
            if _is_redis(url):
                _send_redis(backend, docs, timeout_s, retention_days)
            elif not _send_http(backend, docs, timeout_s, retention_days):
                from ciopt.cache.backend import BackendError

                raise BackendError(f"http {url}: the server has no records endpoint (not `ciopt cache serve`)")
        except BaseException:
            _unmark(path, [i for i, _ in docs])
            raise
        return len(docs)
    finally:
        backend.close()


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _is_redis(url: str) -> bool:
    return _scheme(url) in REDIS_SCHEMES


def _records_backend(tier: RemoteTier | None, url: str) -> object | None:
    """The backend of `tier` that records go to (a shard of it, with shards), or None: no
    tier, its breaker tripped, or (HTTP) a server found earlier to have no records endpoint."""
    if tier is None or tier.broken is not None:
        return None
    backend = tier.backend
    for b in getattr(backend, "shards", None) or [backend]:
        if _is_redis(url) and hasattr(b, "append_records") and b.name == url:
            return b
        if not _is_redis(url) and hasattr(b, "post_records") and not getattr(b, "no_records_endpoint", False):
            return b
    return None


def _send_redis(backend: object, docs: list[tuple[int, dict]], timeout_s: float,
                retention_days: float | None) -> None:
    from ciopt.analytics.exchange import FORMAT_VERSION, MAX_RECORDS, pack

    min_id = (f"{int((time.time() - retention_days * 86400) * 1000)}-0" if retention_days is not None else None)
    backend.append_records([pack(d) for _, d in docs], fields_v=str(FORMAT_VERSION),  # type: ignore[attr-defined]
                           max_len=MAX_RECORDS, min_id=min_id, timeout_s=timeout_s)


def _send_http(backend: object, docs: list[tuple[int, dict]], timeout_s: float,
               retention_days: float | None) -> bool:
    """POSTs the records; False (remembered on the backend for the rest of the invocation) when
    the server has no records endpoint."""
    if getattr(backend, "no_records_endpoint", False):
        return False
    query = f"retention_days={retention_days:g}" if retention_days is not None else ""
    answer = backend.post_records(post_body([d for _, d in docs]), query=query,  # type: ignore[attr-defined]
                                  timeout_s=timeout_s)
    if answer is None:
        backend.no_records_endpoint = True  # type: ignore[attr-defined]
        return False
    return True


def _take(db: sqlite3.Connection, invocation_id: int | None, retention_days: float | None,
          catch_up: int) -> list[tuple[int, dict]]:
    """The record documents to push (this invocation's, when given, and up to `catch_up` older
    ones not pushed yet), marked pushed in the same transaction: the mark costs the build
    nothing here, where a connection is open anyway, and is undone if the push fails."""
    from ciopt.analytics.exchange import export_invocation

    cutoff = time.time() - retention_days * 86400 if retention_days is not None else 0.0
    db.execute("BEGIN IMMEDIATE")
    try:
        # The partial index invocations_unpushed makes this cheap however long the history.
        older = [r[0] for r in db.execute(
            "SELECT id FROM invocations WHERE pushed_at IS NULL AND id != ? AND origin IS NULL AND source = 'ciopt' "
            "AND finished_at IS NOT NULL AND started_at >= ? ORDER BY id DESC LIMIT ?",
            (invocation_id if invocation_id is not None else -1, cutoff, catch_up))] if catch_up else []
        out = []
        for i in ((invocation_id,) if invocation_id is not None else ()) + tuple(older):
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


def _take_older(path: Path, invocation_id: int, retention_days: float | None) -> list[tuple[int, dict]]:
    """The records left behind by earlier invocations (after this one went to an HTTP cache)."""
    db = records._connect(path, create=False)
    try:
        docs = _take(db, None, retention_days, CATCH_UP)
    finally:
        db.close()
    return [(i, d) for i, d in docs if i != invocation_id]


def _unmark(path: Path, ids: list[int]) -> None:
    """The records did not reach the shared backend: the next push takes them along."""
    if not ids:
        return
    try:
        db = records._connect(path, create=False)
        try:
            db.executemany("UPDATE invocations SET pushed_at = NULL WHERE id = ?", [(i,) for i in ids])
        finally:
            db.close()
    except sqlite3.Error:
        pass  # they stay marked: the team misses them, the build does not fail

