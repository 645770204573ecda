"""The HTTP remote cache: the bazel-remote / Bazel `--remote_cache=http://` layout.

    GET|PUT|HEAD <base>/ac/<hex>    ActionCache entries
    GET|PUT|HEAD <base>/cas/<hex>   blobs, under the hex of their digest (BLAKE3 or SHA-256,
                                     whichever the store uses; Bazel interop needs sha256)

Any server with that layout works: `ciopt cache serve`, bazel-remote, nginx with WebDAV PUT.
404 means absent; every other failure is a one-line BackendError naming the server.

`ciopt cache serve` also has two batch endpoints (cache/server.py), used when present:
`POST <base>/cas:missing` (find_missing in one request instead of a HEAD per blob) and
`POST <base>/cas:read` (small blobs in one framed answer instead of a GET each). A server that
answers them 404/405/501 (nginx, bazel-remote) is asked once; from then on this backend uses
HEAD and GET per blob.

Standard library only: one keep-alive `http.client` connection per thread (a connection is not
thread-safe, and opening one per request costs a round trip, or three with TLS), and a small
pool of threads for the parallel HEADs of `find_missing` and the batch `get_blobs`/`put_blobs`.
Credentials come from the environment only, never from the URL or the YAML, so a config file
can be committed: `CIOPT_CACHE_TOKEN` (Bearer) or `CIOPT_CACHE_USER` + `CIOPT_CACHE_PASSWORD`.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ciopt import Digest
from ciopt.cache.backend import STREAM_THRESHOLD, BackendError

__all__ = ["PASSWORD_ENV", "TOKEN_ENV", "USER_ENV", "HttpBackend"]

TOKEN_ENV = "CIOPT_CACHE_TOKEN"
USER_ENV = "CIOPT_CACHE_USER"
PASSWORD_ENV = "CIOPT_CACHE_PASSWORD"

# Streaming granularity: big enough that syscalls do not dominate, small enough that memory
# stays flat whatever the blob size.
CHUNK = 1024 * 1024
# An error answer's body is read (for the message) up to this much; more closes the connection.
_ERROR_BODY_MAX = 64 * 1024
# Failures that mean a kept-alive connection went stale (the server closed it while idle):
# worth one retry on a fresh connection, since every method of this layout is idempotent.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# How the batch endpoints are split: digests per /cas:missing request (the server takes up to
# 100,000), and digests and declared bytes per /cas:read request (the server's answers are
# capped at 64 MiB); the pieces go out in parallel.
_MISSING_PER_REQUEST = 20_000
_READ_PER_REQUEST = 1_000
_READ_BYTES_PER_REQUEST = 16 * 1024 * 1024
# Answers meaning "no such endpoint here" (nginx, bazel-remote, older `ciopt cache serve`).
_NO_ENDPOINT = (404, 405, 501)

T = TypeVar("T")
R = TypeVar("R")


class _Conn:
    """A connection and whether it already carried a request (only then can it be stale)."""

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.used = False


class HttpBackend:
    """A RemoteBackend over plain HTTP(S) in the bazel-remote layout."""

    def __init__(self, url: str, timeout_s: float, *, parallelism: int = 8,
                 env: Mapping[str, str] = os.environ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        self.name = urlunsplit((scheme, _netloc_without_credentials(parts), parts.path.rstrip("/"), "", ""))
        if scheme not in ("http", "https"):
            raise BackendError(f"http {self.name}: expected an http:// or https:// URL")
        if not parts.hostname:
            raise BackendError(f"http {self.name}: no host in the URL")
        if parts.username is not None or parts.password is not None:
            # A URL lands in logs and committed YAML; a password in it would travel with them.
            raise BackendError(f"http {self.name}: credentials in the URL are not accepted; "
                               f"set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}")
        try:
            port = parts.port
        except ValueError as e:
            raise BackendError(f"http {self.name}: {e}") from None
        self._https = scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._base = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._parallelism = max(1, parallelism)
        self._headers = {"Accept": "*/*"}
        auth = _auth_header(env)
        if auth:
            self._headers["Authorization"] = auth
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._pool: ThreadPoolExecutor | None = None
        self._ssl = ssl.create_default_context() if self._https else None
        # Whether the server has the batch endpoints: None until asked, then kept.
        self._batch: bool | None = None

    # -- RemoteBackend ------------------------------------------------------------------------

    def get_action(self, key: str) -> bytes | None:
        return self._get_bytes(f"/ac/{key}")

    def put_action(self, key: str, value: bytes) -> None:
        self._put(f"/ac/{key}", value, len(value))

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        unique = list(dict.fromkeys(digests))
        if not unique:
            return []
        if self._batch is not False:
            chunks = [unique[i:i + _MISSING_PER_REQUEST] for i in range(0, len(unique), _MISSING_PER_REQUEST)]
            answers = self._map(self._batch_missing, chunks[:1])
            if answers[0] is not None:
                answers += self._map(self._batch_missing, chunks[1:])
                missing = {d for a in answers for d in a or ()}
                return [d for d in unique if d in missing]
        present = dict(zip(unique, self._map(self._head_cas, unique), strict=True))
        return [d for d in unique if not present[d]]

    def get_blob(self, digest: Digest) -> bytes | None:
        return self._get_bytes(f"/cas/{digest.hash}")

    def get_blob_to_file(self, digest: Digest, dest: Path) -> bool:
        rel = f"/cas/{digest.hash}"
        with self._exchange("GET", rel) as resp:
            if resp.status == 404:
                return False
            self._expect(resp, "GET", rel, (200,))
            try:
                with open(dest, "wb") as f:
                    while chunk := self._read_chunk(resp, rel):
                        f.write(chunk)  # a local disk error stays an OSError: not the server's fault
            except BaseException:
                Path(dest).unlink(missing_ok=True)  # never leave half a blob behind
                raise
        return True

    def put_blob(self, digest: Digest, data: bytes) -> None:
        self._put(f"/cas/{digest.hash}", data, len(data))

    def put_blob_file(self, digest: Digest, path: Path) -> None:
        with open(path, "rb") as f:
            # http.client sends a file object in `blocksize` reads, so only a chunk is in memory.
            self._put(f"/cas/{digest.hash}", f, os.fstat(f.fileno()).st_size)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            conns, self._conns = self._conns, []
        if pool is not None:
            pool.shutdown(wait=True)
        for c in conns:
            c.conn.close()

    # -- BuildRecords: the records endpoint of `ciopt cache serve` (cache/server.py) -----------

    def post_records(self, body: bytes, *, query: str = "", timeout_s: float | None = None) -> dict | None:
        """POST a records body (zlib-compressed JSON `{"records": [document, ...]}`) to
        <base>/records over this thread's kept-alive connection, every socket wait at most
        `timeout_s`. Returns the server's JSON answer, or None when the server has no records
        endpoint (404, 405, 501: bazel-remote, nginx); BackendError for any other failure."""
        headers = {"Content-Length": str(len(body)), "Content-Type": "application/json",
                   "Content-Encoding": "deflate"}
        rel = "/records" + (f"?{query}" if query else "")
        c = self._connection()
        saved = c.conn.timeout
        if timeout_s is not None:
            c.conn.timeout = timeout_s
            if c.conn.sock is not None:
                c.conn.sock.settimeout(timeout_s)
        try:
            with self._exchange("POST", rel, body, headers) as resp:
                if resp.status in (404, 405, 501):
                    return None
                self._expect(resp, "POST", "/records", (200,))
                return self._json(resp, "POST")
        finally:
            c.conn.timeout = saved
            if c.conn.sock is not None:
                c.conn.sock.settimeout(saved)

    def get_records(self, after: int, limit: int) -> dict | None:
        """GET <base>/records?after=AFTER&limit=LIMIT: `{"entries": [{"id", "uuid", "z"}], ...}`
        (z: base64 of the stored zlib payload); None when the server has no records endpoint."""
        rel = f"/records?after={int(after)}&limit={int(limit)}"
        with self._exchange("GET", rel) as resp:
            if resp.status in (404, 405, 501):
                return None
            self._expect(resp, "GET", "/records", (200,))
            return self._json(resp, "GET")

    def _json(self, resp: http.client.HTTPResponse, method: str) -> dict:
        try:
            doc = json.loads(resp.read())
        except (OSError, http.client.HTTPException) as e:
            raise self._error(method, "/records", _describe(e, self.timeout_s)) from None
        except ValueError as e:
            raise self._error(method, "/records", f"not a JSON answer: {e}") from None
        if not isinstance(doc, dict):
            raise self._error(method, "/records", "not a JSON object")
        return doc

    # -- BatchBackend (backend.py): the tiered cache uses these when a backend has them --------

    def get_blobs(self, digests: Sequence[Digest]) -> list[bytes | None]:
        """Many blobs at once (in parallel), in the order asked; None for each absent one.
        Unverified, like get_blob: the caller checks every blob against its digest."""
        digests = list(digests)
        if self._batch is False or len(digests) <= 1:
            return self._map(self.get_blob, digests)
        small = list(dict.fromkeys(d for d in digests if d.size <= STREAM_THRESHOLD))
        chunks: list[list[Digest]] = []
        size = 0
        for d in small:
            if not chunks or len(chunks[-1]) >= _READ_PER_REQUEST or size + d.size > _READ_BYTES_PER_REQUEST:
                chunks.append([])
                size = 0
            chunks[-1].append(d)
            size += d.size
        got: dict[Digest, bytes | None] = {}
        if chunks:
            first = self._map(self._batch_read, chunks[:1])
            if first[0] is None:  # no batch endpoint: one GET each
                return self._map(self.get_blob, digests)
            for chunk, datas in zip(chunks, first + self._map(self._batch_read, chunks[1:]), strict=True):
                assert datas is not None
                got.update(zip(chunk, datas, strict=True))
        large = [d for d in dict.fromkeys(digests) if d not in got]
        got.update(zip(large, self._map(self.get_blob, large), strict=True))
        return [got[d] for d in digests]

    def put_blobs(self, items: Sequence[tuple[Digest, bytes]]) -> None:
        """Upload many blobs at once (in parallel)."""
        self._map(lambda item: self.put_blob(*item), list(items))

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpBackend({self.name!r})"

    # -- internals ---------------------------------------------------------------------------

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._parallelism, thread_name_prefix="ciopt-http")
            pool = self._pool
        futures = [pool.submit(fn, i) for i in items]
        # Every future is waited for before raising, so no request outlives the call.
        results, first_error = [], None
        for f in futures:
            try:
                results.append(f.result())
            except BackendError as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return results

    @contextmanager
    def _batch_post(self, rel: str, digests: Sequence[Digest]) -> Iterator[http.client.HTTPResponse | None]:
        """POST digests (one `<hex>/<size>` a line) to a batch endpoint; yields its 200 answer,
        or None (remembered) when the server has no such endpoint."""
        body = "".join(f"{d}\n" for d in digests).encode("ascii")
        headers = {"Content-Length": str(len(body)), "Content-Type": "text/plain; charset=utf-8"}
        with self._exchange("POST", rel, body, headers) as resp:
            if resp.status in _NO_ENDPOINT:
                self._batch = False
                yield None
                return
            self._expect(resp, "POST", rel, (200,))
            self._batch = True
            yield resp

    def _batch_missing(self, digests: Sequence[Digest]) -> list[Digest] | None:
        """The digests the server lacks (POST /cas:missing); None without the endpoint."""
        rel = "/cas:missing"
        with self._batch_post(rel, digests) as resp:
            if resp is None:
                return None
            try:
                text = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise self._error("POST", rel, _describe(e, self.timeout_s)) from None
            asked = set(digests)
            missing = []
            for line in text.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    d = Digest.parse(line.strip().decode("ascii"))
                except (ValueError, UnicodeDecodeError):
                    raise self._error("POST", rel, f"garbled answer line {line[:100]!r}") from None
                if d not in asked:
                    raise self._error("POST", rel, f"the answer names {d}, which was not asked")
                missing.append(d)
            return missing

    def _batch_read(self, digests: Sequence[Digest]) -> list[bytes | None] | None:
        """Small blobs (POST /cas:read), in the order asked, None for each absent one;
        None without the endpoint. The bytes are not verified here (see get_blobs)."""
        rel = "/cas:read"
        with self._batch_post(rel, digests) as resp:
            if resp is None:
                return None
            out: list[bytes | None] = []
            try:
                for d in digests:
                    line = resp.readline(200)
                    name, _, size_text = line.decode("ascii", "replace").strip().partition(" ")
                    try:
                        size = int(size_text)
                    except ValueError:
                        size = -2
                    if name != d.hash or size < -1 or size > STREAM_THRESHOLD:
                        what = "the answer was cut short" if not line else f"garbled frame header {line[:100]!r}"
                        raise self._error("POST", rel, f"{what} (expected {d.hash[:12]}…)")
                    if size == -1:
                        out.append(None)
                        continue
                    data = resp.read(size)
                    if len(data) != size:
                        raise self._error("POST", rel, f"the answer was cut short ({size - len(data)} bytes missing)")
                    out.append(data)  # a size other than d.size is caught by the caller's check
                if resp.read(1):
                    raise self._error("POST", rel, "more in the answer than was asked")
            except (OSError, http.client.HTTPException) as e:
                raise self._error("POST", rel, _describe(e, self.timeout_s)) from None
            return out

    def _head_cas(self, digest: Digest) -> bool:
        rel = f"/cas/{digest.hash}"
        with self._exchange("HEAD", rel) as resp:
            if resp.status == 404:
                return False
            self._expect(resp, "HEAD", rel, (200,))
            return True

    def _get_bytes(self, rel: str) -> bytes | None:
        with self._exchange("GET", rel) as resp:
            if resp.status == 404:
                return None
            self._expect(resp, "GET", rel, (200,))
            try:
                return resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise self._error("GET", rel, _describe(e, self.timeout_s)) from None

    def _read_chunk(self, resp: http.client.HTTPResponse, rel: str) -> bytes:
        try:
            chunk = resp.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise self._error("GET", rel, _describe(e, self.timeout_s)) from None
        # read(n) answers b"" when the server hangs up early, leaving `length` (the bytes
        # still due) above 0, where read() would raise IncompleteRead.
        if not chunk and resp.length:
            raise self._error("GET", rel, f"the answer was cut short ({resp.length} bytes missing)")
        return chunk

    def _put(self, rel: str, body: bytes | IO[bytes], length: int) -> None:
        headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
        with self._exchange("PUT", rel, body, headers) as resp:
            # nginx answers 201 (created) or 204 (replaced); bazel-remote and ciopt 200.
            self._expect(resp, "PUT", rel, (200, 201, 204))

    def _connection(self) -> _Conn:
        c: _Conn | None = getattr(self._local, "conn", None)
        if c is None:
            if self._https:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout_s, context=self._ssl, blocksize=CHUNK)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s, blocksize=CHUNK)
            c = _Conn(conn)
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    def _drop(self) -> None:
        c: _Conn | None = getattr(self._local, "conn", None)
        if c is not None:
            self._local.conn = None
            c.conn.close()
            with self._lock:
                if c in self._conns:
                    self._conns.remove(c)

    @contextmanager
    def _exchange(self, method: str, rel: str, body: bytes | IO[bytes] | None = None,
                  headers: Mapping[str, str] | None = None) -> Iterator[http.client.HTTPResponse]:
        """One request and its response, which the caller reads inside the `with`; the
        connection is kept for the next request only when the response was read to its end."""
        resp = self._send(method, rel, body, {**self._headers, **(headers or {})})
        ok = False
        try:
            yield resp
            ok = True
        finally:
            if ok and not resp.isclosed():
                # Small leftovers (a 404 page) are read so the connection can be reused.
                try:
                    leftover = resp.read(_ERROR_BODY_MAX + 1)
                    ok = len(leftover) <= _ERROR_BODY_MAX and resp.isclosed()
                except (OSError, http.client.HTTPException):
                    ok = False
            if not ok or resp.will_close:
                self._drop()

    def _send(self, method: str, rel: str, body: bytes | IO[bytes] | None,
              headers: dict[str, str]) -> http.client.HTTPResponse:
        path = self._base + rel
        start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        for attempt in (1, 2):
            c = self._connection()
            retry = c.used and attempt == 1
            try:
                if body is not None and not isinstance(body, bytes):
                    body.seek(start)
                try:
                    c.conn.request(method, path, body=body, headers=headers)
                except _STALE as send_error:
                    if retry:
                        raise
                    resp = self._early_answer(c) or _reraise(send_error)
                else:
                    resp = c.conn.getresponse()
                c.used = True
                return resp
            except _STALE as e:
                self._drop()
                if retry:
                    continue
                raise self._error(method, rel, _describe(e, self.timeout_s)) from None
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise self._error(method, rel, _describe(e, self.timeout_s)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _early_answer(c: _Conn) -> http.client.HTTPResponse | None:
        """A server refusing a request (401, 413) may close while we still send the body; its
        answer can already be waiting, and says more than "broken pipe"."""
        try:
            return c.conn.getresponse()
        except (OSError, http.client.HTTPException):
            return None

    def _expect(self, resp: http.client.HTTPResponse, method: str, rel: str, ok: tuple[int, ...]) -> None:
        if resp.status in ok:
            return
        what = f"HTTP {resp.status} {resp.reason}".rstrip()
        if "Authorization" not in self._headers and resp.status in (401, 403):
            what += f" (no credentials: set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV})"
        elif resp.status == 401:
            what += " (credentials refused)"
        elif resp.status == 403:
            what += " (not allowed with these credentials)"
        try:
            detail = resp.read(_ERROR_BODY_MAX).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            detail = ""
        # HTML error pages (nginx) say nothing the status does not; a plain text reason does.
        if detail and "<" not in detail:
            what += ": " + " ".join(detail.split())[:200]
        raise self._error(method, rel, what)

    def _error(self, method: str, rel: str, what: str) -> BackendError:
        namespace, _, key = rel.lstrip("/").partition("/")
        short = f"{namespace}/{key[:12]}" + ("…" if len(key) > 12 else "") if key else namespace
        return BackendError(f"http {self.name}: {method} {short}: {what}")


def _netloc_without_credentials(parts: object) -> str:
    netloc: str = getattr(parts, "netloc", "")
    return netloc.rpartition("@")[2]


def _auth_header(env: Mapping[str, str]) -> str | None:
    token = env.get(TOKEN_ENV)
    if token:
        return f"Bearer {token}"
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if user or password:
        raw = f"{user or ''}:{password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")
    return None


def _describe(e: BaseException, timeout_s: float) -> str:
    if isinstance(e, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return f"timed out after {timeout_s:g}s"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host ({e.strerror})"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(e, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, http.client.IncompleteRead):
        return f"the answer was cut short ({len(e.partial)} bytes read)"
    if isinstance(e, http.client.HTTPException):
        return f"garbled answer: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}"


def _reraise(e: BaseException) -> http.client.HTTPResponse:
    raise e
