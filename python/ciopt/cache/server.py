"""The embedded team cache behind `ciopt cache serve`: HTTP in the bazel-remote layout over a
local LMDB Store, so that Bazel (`--remote_cache=http://HOST:PORT`) and ciopt's HTTP backend
share one cache.

    GET|HEAD|PUT [/PREFIX]/ac/<hex>    ActionCache (opaque bytes: Bazel's ActionResult protos
                                       and ciopt's encoded results both fit)
    GET|HEAD|PUT [/PREFIX]/cas/<hex>   blobs; a PUT whose body does not hash to <hex> is refused
    POST [/PREFIX]/records             BuildRecords pushed by builds (analytics/publish.py):
                                       zlib-compressed (Content-Encoding: deflate) or plain
                                       JSON {"records": [document, ...]}; each is checked,
                                       kept once per invocation uuid, in an append-only
                                       SQLite beside the store (RECORDS_FILE), trimmed to the
                                       newest MAX_RECORDS and to ?retention_days=N
    GET [/PREFIX]/records?after=N&limit=M  {"entries": [{"id", "uuid", "z"}], "last": ID, "more": bool},
                                       z the base64 of zlib(JSON document); ids only grow
    POST [/PREFIX]/cas:missing         FindMissingBlobs in one request: the body is digests, one
                                       `<hex>/<size>` a line (at most BATCH_DIGESTS_MAX); the
                                       answer (text/plain) the ones the store lacks, same format
    POST [/PREFIX]/cas:read            BatchReadBlobs: the same body (each blob at most
                                       STREAM_THRESHOLD, together at most BATCH_READ_BYTES_MAX);
                                       the answer (application/octet-stream), for every digest
                                       asked in order, a line `<hex> <size>` then its bytes, or
                                       `<hex> -1` when absent
    GET /status                        JSON figures

Records are a write (the write token) and their GET a read, like /ac and /cas; the two batch
POSTs are reads (the read token, like GET /cas).
Any prefix before ac/, cas/, cas: or records is accepted and ignored (bazel-remote does the same; Bazel puts
its instance name there). Every uploaded blob is verified with the store's digest function
before it is stored, so a confused or hostile client cannot plant bytes under another
digest. Large bodies never sit in memory: uploads stream to a file beside the store and enter
it with `Store.put_file`; downloads of large blobs stream from the store's own blob file.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import zlib
from base64 import b64decode, b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs

from ciopt import (
    CorruptBlobError,
    Digest,
    Store,
    StoreError,
    __version__,
    hash_bytes,
    hash_file,
)
from ciopt.cache.backend import STREAM_THRESHOLD

__all__ = ["CacheServer", "RecordsLog", "Tokens"]

log = logging.getLogger("ciopt.cache.server")

_PATH = re.compile(r"^(?:/[^?#]*)?/(ac|cas)/([0-9a-f]{64})$")
_RECORDS_PATH = re.compile(r"^(?:/[^?#]*)?/records/?$")
_BATCH_PATH = re.compile(r"^(?:/[^?#]*)?/cas:(missing|read)$")
_BATCH_LINE = re.compile(rb"^([0-9a-f]{64})/([0-9]{1,19})$")
# The batch endpoints' limits: digests per request (a line is at most 64 + 1 + 19 bytes and a
# newline), and the bytes one /cas:read answer may carry (the client splits bigger asks).
BATCH_DIGESTS_MAX = 100_000
BATCH_BODY_MAX = BATCH_DIGESTS_MAX * 85
BATCH_READ_BYTES_MAX = 64 * 1024 * 1024
RECORDS_FILE = "served-records.sqlite"
# A POST /records body (compressed) and what it may expand to: a build pushes its record and
# at most 20 left behind, a 200-action record is 3-8 KB compressed and ~60 KB of JSON.
RECORDS_BODY_MAX = 16 * 1024 * 1024
RECORDS_JSON_MAX = 64 * 1024 * 1024
RECORDS_PAGE_MAX = 500
CHUNK = 1024 * 1024
# Bodies up to this size are handled in memory; larger ones stream through a file. The store
# keeps blobs up to 1 MiB inside LMDB and larger ones as files, so this matches its own split.
MEMORY_BODY_MAX = 1024 * 1024
# ActionCache entries are small protos or encoded results; anything far bigger is abuse.
AC_BODY_MAX = 16 * 1024 * 1024
# A refused upload's body is read and dropped up to this size so the connection can be kept;
# a bigger one closes the connection instead of being read for nothing.
DRAIN_MAX = 1024 * 1024


@dataclass(frozen=True)
class Tokens:
    """Who may do what. No token: open. A write token alone: anyone reads, writers need it.
    A read token needs a write token too (writes would otherwise be open to anyone)."""

    read: str | None = None
    write: str | None = None

    def check(self, authorization: str | None, write: bool) -> Literal["ok", "unauthenticated", "forbidden"]:
        if self.read is None and self.write is None:
            return "ok"
        presented = _presented_token(authorization)
        is_writer = presented is not None and self.write is not None and hmac.compare_digest(presented, self.write)
        if write:
            if is_writer:
                return "ok"
            is_reader = presented is not None and self.read is not None and hmac.compare_digest(presented, self.read)
            return "forbidden" if is_reader else "unauthenticated"
        if self.read is None or is_writer:
            return "ok"
        if presented is not None and hmac.compare_digest(presented, self.read):
            return "ok"
        return "unauthenticated"

    def describe(self) -> str:
        if self.read is None and self.write is None:
            return "open (no tokens)"
        if self.read is None:
            return "anyone reads, writes need the write token"
        return "reads need the read or write token, writes the write token"


def _presented_token(authorization: str | None) -> str | None:
    """`Bearer TOKEN`, or Basic auth whose password is the token (what Bazel sends for
    `--remote_cache=http://user:TOKEN@host`); the user name is ignored."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, **amounts: int) -> None:
        with self._lock:
            for k, v in amounts.items():
                self._values[k] = self._values.get(k, 0) + v

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class RecordsLog:
    """The records endpoint's storage: an append-only SQLite table beside the served store,
    one row per invocation uuid, ids in arrival order (AUTOINCREMENT: never reused, so a
    puller's cursor stays valid after trimming)."""

    def __init__(self, path: Path, max_records: int | None = None) -> None:
        from ciopt.analytics.exchange import MAX_RECORDS

        self.path = path
        self.max_records = max_records or MAX_RECORDS
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:  # on first use: a cache nobody pushes records to has no such file
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                       "uuid TEXT NOT NULL UNIQUE, received_at REAL NOT NULL, z BLOB NOT NULL)")
            self._db = db
        return self._db

    def add(self, documents: list[dict[str, Any]], retention_days: float | None) -> dict[str, Any]:
        from ciopt.analytics.exchange import pack

        packed = [pack(d) for d in documents]
        now = time.time()
        with self._lock:
            db = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                added, ids = 0, []
                for uuid, z in packed:
                    cur = db.execute("INSERT OR IGNORE INTO records (uuid, received_at, z) VALUES (?, ?, ?)",
                                     (uuid, now, z))
                    if cur.rowcount:
                        added += 1
                        ids.append(cur.lastrowid)
                db.execute("DELETE FROM records WHERE id <= (SELECT id FROM records ORDER BY id DESC "
                           "LIMIT 1 OFFSET ?)", (self.max_records,))
                if retention_days is not None:
                    db.execute("DELETE FROM records WHERE received_at < ?", (now - retention_days * 86400,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return {"added": added, "duplicates": len(packed) - added, "ids": ids}

    def page(self, after: int, limit: int) -> dict[str, Any]:
        with self._lock:
            if self._db is None and not self.path.exists():
                return {"entries": [], "last": after, "more": False}
            rows = self._open().execute("SELECT id, uuid, z FROM records WHERE id > ? ORDER BY id LIMIT ?",
                                        (after, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return {"entries": [{"id": i, "uuid": u, "z": b64encode(z).decode("ascii")} for i, u, z in rows],
                "last": rows[-1][0] if rows else after, "more": more}

    def count(self) -> int:
        with self._lock:
            if self._db is None and not self.path.exists():
                return 0
            return int(self._open().execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default of 5 drops bursts of parallel HEADs from a build's find_missing.
    request_queue_size = 128
    cache: CacheServer


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class CacheServer:
    """The server; `serve_forever()` blocks until `shutdown()` (from another thread)."""

    def __init__(self, store: Store, host: str, port: int, *, max_size: int, tokens: Tokens = Tokens(),
                 gc_interval_s: float = 60.0, access_log: bool = False) -> None:
        self.store = store
        self.digest_function: str = store.digest_function
        self.max_size = max_size
        self.tokens = tokens
        self.gc_interval_s = gc_interval_s
        self.access_log = access_log
        self.started = time.monotonic()
        self.counters = _Counters()
        self._blob_dir = Path(store.path) / "blobs"
        # Uploads are staged on the store's filesystem, not /tmp (often a small tmpfs).
        self.incoming = Path(store.path) / "incoming"
        shutil.rmtree(self.incoming, ignore_errors=True)  # leftovers of a killed server
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.records = RecordsLog(Path(store.path) / RECORDS_FILE)
        cls = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = cls((host, port), _Handler)
        self.httpd.cache = self
        self._written_since_gc = 0
        self._gc_lock = threading.Lock()
        self._gc_wake = threading.Event()
        self._stopping = threading.Event()
        self._gc_thread = threading.Thread(target=self._gc_loop, name="ciopt-cache-gc", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._gc_thread.start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self._stopping.set()
            self._gc_wake.set()
            self._gc_thread.join(timeout=30)
            self.httpd.server_close()
            self.records.close()
            self.store.sync()

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def status(self) -> dict[str, Any]:
        c = self.counters.snapshot()
        return {
            "version": __version__,
            "url": self.url,
            "digest_function": self.digest_function,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "auth": self.tokens.describe(),
            "max_size": self.max_size,
            "hits": c.get("ac_hits", 0) + c.get("cas_hits", 0),
            "misses": c.get("ac_misses", 0) + c.get("cas_misses", 0),
            "puts": c.get("ac_puts", 0) + c.get("cas_puts", 0),
            "checks": c.get("checks", 0),
            "bytes_served": c.get("bytes_served", 0),
            "bytes_received": c.get("bytes_received", 0),
            "rejected_puts": c.get("rejected_puts", 0),
            "unauthorized": c.get("unauthorized", 0),
            "errors": c.get("errors", 0),
            "corrupt_blobs_dropped": c.get("corrupt", 0),
            "records": {"received": c.get("records_received", 0), "added": c.get("records_added", 0),
                        "served": c.get("records_served", 0)},
            "ac": {k: c.get(f"ac_{k}", 0) for k in ("hits", "misses", "puts")},
            "cas": {k: c.get(f"cas_{k}", 0) for k in ("hits", "misses", "puts")},
            "gc": {"runs": c.get("gc_runs", 0), "evicted": c.get("gc_evicted", 0),
                   "evicted_bytes": c.get("gc_evicted_bytes", 0)},
            "store": dict(self.store.stats()),
        }

    # -- gc to the size cap ------------------------------------------------------------------

    def note_write(self, nbytes: int) -> None:
        with self._gc_lock:
            self._written_since_gc += nbytes
            # A burst of uploads may not wait for the timer: past a tenth of the cap, gc now.
            urgent = self._written_since_gc > self.max_size // 10
        if urgent:
            self._gc_wake.set()

    def _gc_loop(self) -> None:
        pending = True  # the cap may have been lowered since the store was last used
        while not self._stopping.is_set():
            if pending:
                self._gc_once()
            self._gc_wake.wait(self.gc_interval_s)
            self._gc_wake.clear()
            with self._gc_lock:
                pending, self._written_since_gc = self._written_since_gc > 0, 0

    def _gc_once(self) -> None:
        try:
            r = self.store.gc(self.max_size)
        except StoreError as e:
            self.counters.add(errors=1)
            log.warning("gc failed: %s", e)
            return
        self.counters.add(gc_runs=1, gc_evicted=r["evicted"], gc_evicted_bytes=r["evicted_bytes"])
        if r["evicted"]:
            log.info("gc: evicted %d blobs (%d bytes) to stay under %d bytes",
                     r["evicted"], r["evicted_bytes"], self.max_size)

    # -- blob access -------------------------------------------------------------------------

    def external_blob(self, hex_hash: str) -> Path:
        """Where the store keeps a blob over 1 MiB (documented in docs/store-and-hashing.md).
        Only a hint: the store's own answer decides whether the blob is there."""
        return self._blob_dir / hex_hash[:2] / hex_hash


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Bazel and the backend reuse connections
    # Headers and body leave in separate writes; with Nagle on, the second waits for the
    # client's delayed ACK (40 ms on Linux) on every small answer.
    disable_nagle_algorithm = True
    server_version = f"ciopt-cache/{__version__}"
    # Idle keep-alive connections (each holds a thread) are closed after this long.
    timeout = 300
    server: _HTTPServer

    @property
    def cache(self) -> CacheServer:
        return self.server.cache

    # -- dispatch ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if _RECORDS_PATH.match(path) or _BATCH_PATH.match(path):
            self._dispatch("POST")
        else:
            self._refuse_method()

    def do_DELETE(self) -> None:
        self._refuse_method()

    def _refuse_method(self) -> None:
        self._discard_body()
        self._text(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported: use GET, HEAD or PUT",
                   extra={"Allow": "GET, HEAD, PUT"})

    def send_response(self, code: int, message: str | None = None) -> None:
        self._answered = True
        super().send_response(code, message)

    def _dispatch(self, method: str) -> None:
        self._answered = False
        path = self.path.split("?", 1)[0]
        batch = _BATCH_PATH.match(path) if method == "POST" else None
        # The batch POSTs only read: they need what GET /cas needs, no more.
        write = method == "PUT" or (method == "POST" and batch is None)
        verdict = self.cache.tokens.check(self.headers.get("Authorization"), write)
        if verdict != "ok":
            self.cache.counters.add(unauthorized=1)
            self._discard_body()
            if verdict == "forbidden":
                self._text(HTTPStatus.FORBIDDEN, "this token may read but not write")
            else:
                self._text(HTTPStatus.UNAUTHORIZED, "a token is required (Authorization: Bearer TOKEN)",
                           extra={"WWW-Authenticate": 'Bearer realm="ciopt-cache"'})
            return
        try:
            if path.rstrip("/") == "/status" and method in ("GET", "HEAD"):
                self._status(method)
                return
            if _RECORDS_PATH.match(path) and method in ("GET", "POST"):
                self._post_records() if method == "POST" else self._get_records()
                return
            if batch is not None:
                self._batch_missing() if batch.group(1) == "missing" else self._batch_read()
                return
            m = _PATH.match(path)
            if m is None:
                self._discard_body()
                self._text(HTTPStatus.NOT_FOUND, "not a cache path: expected /ac/<hex> or /cas/<hex> "
                           "(64 lowercase hex digits) or /status")
                return
            namespace, key = m.groups()
            handler = getattr(self, f"_{method.lower()}_{namespace}")
            handler(key)
        except (ConnectionError, TimeoutError):
            raise  # the client went away: nobody to answer
        except (StoreError, OSError, sqlite3.Error) as e:
            self.cache.counters.add(errors=1)
            log.error("%s %s: %s", method, path, e)
            self.close_connection = True
            # Once a status line is out, a second answer would garble the first: just close.
            if not self._answered:
                try:
                    self._text(HTTPStatus.INTERNAL_SERVER_ERROR, f"store error: {e}")
                except OSError:
                    pass

    # -- ActionCache -------------------------------------------------------------------------

    def _get_ac(self, key: str) -> None:
        data = self.cache.store.action_get(key)
        self._answer_blob("ac", data, head=False)

    def _head_ac(self, key: str) -> None:
        data = self.cache.store.action_get(key)
        self._answer_blob("ac", data, head=True)

    def _put_ac(self, key: str) -> None:
        length = self._content_length()
        if length is not None and length > AC_BODY_MAX:
            self._discard_body()
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"ActionCache entries are limited to {AC_BODY_MAX} bytes")
            return
        data = self._read_small_body(AC_BODY_MAX)
        if data is None:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"ActionCache entries are limited to {AC_BODY_MAX} bytes")
            return
        self.cache.store.action_put(key, data)
        self.cache.counters.add(ac_puts=1, bytes_received=len(data))
        self._text(HTTPStatus.OK, "")

    # -- CAS ---------------------------------------------------------------------------------

    def _get_cas(self, key: str) -> None:
        self._send_cas(key, head=False)

    def _head_cas(self, key: str) -> None:
        self._send_cas(key, head=True)

    def _send_cas(self, key: str, head: bool) -> None:
        store = self.cache.store
        try:
            f: IO[bytes] | None = open(self.cache.external_blob(key), "rb")
        except OSError:
            f = None
        if f is None:
            if head:
                # contains() also extends the blob's life, as REAPI's FindMissingBlobs does.
                self._answer_blob("cas", b"" if store.contains(key) else None, head=True, length=None)
                return
            try:
                data = store.get(key)
            except CorruptBlobError:
                self.cache.counters.add(corrupt=1)
                data = None
            self._answer_blob("cas", data, head=False)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            if not store.contains(key):  # an upload not committed yet, or an orphan
                self._answer_blob("cas", None, head=head)
                return
            if head:
                self._answer_blob("cas", b"", head=True, length=size)
                return
            # The store verifies what it hands out; streaming past it must not skip that.
            if hash_file(f"/proc/self/fd/{f.fileno()}" if os.path.isdir("/proc/self/fd") else f.name,
                         digest=self.cache.digest_function).hash != key:  # type: ignore[arg-type]
                try:
                    store.get(key)  # drops the corrupt blob
                except CorruptBlobError:
                    pass
                self.cache.counters.add(corrupt=1)
                self._answer_blob("cas", None, head=False)
                return
            f.seek(0)
            self.cache.counters.add(cas_hits=1, bytes_served=size)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            shutil.copyfileobj(f, self.wfile, CHUNK)

    def _put_cas(self, key: str) -> None:
        cache = self.cache
        length = self._content_length()
        if length is None and not self._chunked():
            self._text(HTTPStatus.LENGTH_REQUIRED, "Content-Length or chunked Transfer-Encoding required",
                       close=True)
            return
        if length is not None and length > cache.max_size:
            self._discard_body()
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"a {length}-byte blob does not fit under the cache's size cap of {cache.max_size} bytes")
            return
        if cache.store.contains(key):
            self._discard_body(limit=None)
            cache.counters.add(cas_puts=1)
            self._text(HTTPStatus.OK, "")
            return
        fn = cache.digest_function
        if length is not None and length <= MEMORY_BODY_MAX:
            data = self._read_small_body(MEMORY_BODY_MAX)
            assert data is not None
            got = hash_bytes(data, digest=fn).hash  # type: ignore[arg-type]
            if got == key:
                cache.store.put(data)
            nbytes = len(data)
        else:
            fd, tmp = tempfile.mkstemp(dir=cache.incoming, prefix=key[:16] + ".")
            try:
                with os.fdopen(fd, "wb") as out:
                    nbytes = 0
                    for chunk in self._body_chunks():
                        out.write(chunk)
                        nbytes += len(chunk)
                got = hash_file(tmp, digest=fn).hash  # type: ignore[arg-type]
                # put_file hashes again as it copies: what enters the store is what it read.
                if got == key and cache.store.put_file(tmp).hash != key:
                    got = "changed while stored"
            finally:
                os.unlink(tmp)
        if got != key:
            cache.counters.add(rejected_puts=1, bytes_received=nbytes)
            log.warning("refused PUT /cas/%s: the body (%d bytes) hashes to %s with %s", key, nbytes, got, fn)
            self._text(HTTPStatus.BAD_REQUEST,
                       f"digest mismatch: the body hashes to {got} with {fn}, not {key} "
                       f"(this cache uses {fn} digests)")
            return
        cache.counters.add(cas_puts=1, bytes_received=nbytes)
        cache.note_write(nbytes)
        self._text(HTTPStatus.OK, "")

    # -- batch CAS: POST /cas:missing and /cas:read ------------------------------------------

    def _batch_digests(self) -> list[Digest] | None:
        """The digests of a batch body (one `<hex>/<size>` a line); None once refused (413)."""
        too_many = f"a batch is limited to {BATCH_DIGESTS_MAX} digests"
        length = self._content_length()
        if length is not None and length > BATCH_BODY_MAX:
            self._discard_body()
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_many)
            return None
        body = self._read_small_body(BATCH_BODY_MAX)
        if body is None:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_many)
            return None
        lines = [line.strip() for line in body.split(b"\n")]
        lines = [line for line in lines if line]
        if len(lines) > BATCH_DIGESTS_MAX:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_many)
            return None
        digests = []
        for n, line in enumerate(lines, 1):
            m = _BATCH_LINE.match(line)
            if m is None:
                raise _BadRequest(f"line {n}: expected <hex>/<size> (64 lowercase hex digits), "
                                  f"not {line[:100].decode('utf-8', 'replace')!r}")
            digests.append(Digest(m.group(1).decode("ascii"), int(m.group(2))))
        return digests

    def _batch_missing(self) -> None:
        digests = self._batch_digests()
        if digests is None:
            return
        # find_missing also extends the life of the blobs present, as HEAD /cas does.
        missing = self.cache.store.find_missing(digests) if digests else []
        self.cache.counters.add(checks=len(digests))
        body = "".join(f"{d}\n" for d in missing).encode("ascii")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _batch_read(self) -> None:
        digests = self._batch_digests()
        if digests is None:
            return
        big = next((d for d in digests if d.size > STREAM_THRESHOLD), None)
        if big is not None:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"{big}: blobs over {STREAM_THRESHOLD} bytes are read with GET /cas/<hex>")
            return
        total = sum(d.size for d in digests)
        if total > BATCH_READ_BYTES_MAX:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"a /cas:read answer is limited to {BATCH_READ_BYTES_MAX} bytes ({total} asked): split it")
            return
        store = self.cache.store
        keys = [d.hash for d in digests]
        try:
            datas = store.get_many(keys) if keys else []
        except CorruptBlobError:  # one bad blob: the others are still good, one by one
            datas = []
            for k in keys:
                try:
                    datas.append(store.get(k))
                except CorruptBlobError:
                    self.cache.counters.add(corrupt=1)
                    datas.append(None)
        parts: list[bytes] = []
        hits = served = 0
        for d, data in zip(digests, datas):
            if data is None or len(data) != d.size:  # a size that does not match: not that blob
                parts.append(f"{d.hash} -1\n".encode("ascii"))
                continue
            parts += (f"{d.hash} {d.size}\n".encode("ascii"), data)
            hits += 1
            served += d.size
        self.cache.counters.add(cas_hits=hits, cas_misses=len(digests) - hits, bytes_served=served)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        body = b"".join(parts)  # one write: the socket is unbuffered and Nagle is off
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- /records ----------------------------------------------------------------------------

    def _post_records(self) -> None:
        length = self._content_length()
        if length is not None and length > RECORDS_BODY_MAX:
            self._discard_body()
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a records body is limited to {RECORDS_BODY_MAX} bytes")
            return
        body = self._read_small_body(RECORDS_BODY_MAX)
        if body is None:
            self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a records body is limited to {RECORDS_BODY_MAX} bytes")
            return
        documents, problem = _records_body(body, self.headers.get("Content-Encoding", ""))
        if problem is not None:
            self.cache.counters.add(rejected_puts=1)
            self._text(HTTPStatus.BAD_REQUEST, problem)
            return
        retention = _query_number(self.path, "retention_days")
        result = self.cache.records.add(documents, retention if retention and retention > 0 else None)
        self.cache.counters.add(records_received=len(documents), records_added=result["added"],
                                bytes_received=len(body))
        self._json(result)

    def _get_records(self) -> None:
        after = _query_number(self.path, "after") or 0
        limit = _query_number(self.path, "limit") or 200
        page = self.cache.records.page(int(after), max(1, min(RECORDS_PAGE_MAX, int(limit))))
        self.cache.counters.add(records_served=len(page["entries"]))
        self._json(page)

    def _json(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.cache.counters.add(bytes_served=len(body))

    # -- /status -----------------------------------------------------------------------------

    def _status(self, method: str) -> None:
        body = (json.dumps(self.cache.status(), indent=2) + "\n").encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    # -- answers and bodies ------------------------------------------------------------------

    def _answer_blob(self, namespace: str, data: bytes | None, head: bool, length: int | None = -1) -> None:
        """200 with `data` (HEAD: headers only, Content-Length `length` when known), or 404."""
        counters = self.cache.counters
        # A HEAD is an existence check (find_missing), not a lookup: it counts apart.
        counters.add(**({"checks": 1} if head else {f"{namespace}_{'misses' if data is None else 'hits'}": 1}))
        if data is None:
            self._text(HTTPStatus.NOT_FOUND, "", head=head)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        size = len(data) if length == -1 else length
        if size is not None:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            counters.add(bytes_served=len(data))
            self.wfile.write(data)

    def _text(self, status: HTTPStatus, message: str, *, head: bool = False, close: bool = False,
              extra: dict[str, str] | None = None) -> None:
        body = (message + "\n").encode() if message else b""
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if close or self.close_connection:
            # Said out loud, so the client does not reuse the connection and hit a reset.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body and not head and self.command != "HEAD":
            self.wfile.write(body)

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None or self._chunked():
            return None
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 0:
            raise _BadRequest(f"invalid Content-Length {value!r}")
        return n

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body, a chunk at a time, from Content-Length or chunked encoding."""
        if self._chunked():
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequest("malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._exactly(size)
                self.rfile.readline(8)  # the CRLF after each chunk
        else:
            yield from self._exactly(self._content_length() or 0)

    def _exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            chunk = self.rfile.read(min(n, CHUNK))
            if not chunk:
                raise ConnectionError("the client closed the connection mid-body")
            n -= len(chunk)
            yield chunk

    def _read_small_body(self, limit: int) -> bytes | None:
        """The whole body when it is at most `limit` bytes; None (connection to be closed) when over."""
        parts, total = [], 0
        for chunk in self._body_chunks():
            total += len(chunk)
            if total > limit:
                self.close_connection = True
                return None
            parts.append(chunk)
        return b"".join(parts)

    def _discard_body(self, limit: int | None = DRAIN_MAX) -> None:
        """Drop the request body so the connection can carry the next request; a body over
        `limit` is not worth reading, and the connection is closed after the answer instead."""
        try:
            length = self._content_length()
        except _BadRequest:
            self.close_connection = True
            return
        if length is None and not self._chunked():
            return
        if limit is not None and (length is None or length > limit):
            self.close_connection = True
            return
        for _ in self._body_chunks():
            pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _BadRequest as e:
            self.close_connection = True
            try:
                self._text(HTTPStatus.BAD_REQUEST, str(e), close=True)
            except OSError:
                pass
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.cache.access_log:
            log.info("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("%s %s", self.address_string(), format % args)


def _records_body(body: bytes, encoding: str) -> tuple[list[dict[str, Any]], str | None]:
    """The record documents of a POST /records body, or why it is refused."""
    from ciopt.analytics.exchange import _problem

    if encoding.strip().lower() in ("deflate", "zlib"):
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(body, RECORDS_JSON_MAX)
        except zlib.error as e:
            return [], f"Content-Encoding deflate: not zlib data: {e}"
        if inflater.unconsumed_tail:
            return [], f"the records expand to more than {RECORDS_JSON_MAX} bytes"
    elif encoding.strip() not in ("", "identity"):
        return [], f"unsupported Content-Encoding {encoding!r} (deflate or none)"
    try:
        doc = json.loads(body)
    except ValueError as e:
        return [], f"not JSON: {e}"
    documents = doc.get("records") if isinstance(doc, dict) and "records" in doc else [doc]
    if not isinstance(documents, list):
        return [], "'records' must be a list of record documents"
    for n, d in enumerate(documents):
        problem = _problem(d)
        if problem is not None:
            return [], f"records[{n}]: {problem}"
    return documents, None


def _query_number(path: str, name: str) -> float | None:
    values = parse_qs(path.partition("?")[2]).get(name)
    if not values:
        return None
    try:
        n = float(values[-1])
    except ValueError:
        raise _BadRequest(f"?{name}= must be a number, not {values[-1]!r}") from None
    if not math.isfinite(n) or n < 0:
        raise _BadRequest(f"?{name}= must be a finite number >= 0, not {values[-1]!r}")
    return n


class _BadRequest(Exception):
    """A malformed request: answered 400, connection closed."""
