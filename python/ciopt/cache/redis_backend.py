"""The Redis backend of the remote cache (redis-py; hiredis parses replies when installed).

URLs: `redis://HOST:PORT/DB`, `rediss://HOST:PORT/DB` (TLS; a private CA through
`?ssl_ca_certs=/path/ca.pem` or `SSL_CERT_FILE`), `unix:///path/to/redis.sock?db=N`.
Credentials come only from `CIOPT_REDIS_USERNAME` / `CIOPT_REDIS_PASSWORD`: a URL that carries
them is refused, so that a password never lands in a YAML file or a log line.

Key layout (`<ns>` is the namespace, "ciopt" by default; every value is a plain string):

    <ns>:ac:<hex>             ActionCache entry, the encoded ActionResult as given
    <ns>:cas:<hex>            a blob of at most STREAM_THRESHOLD bytes, raw
    <ns>:cas:<hex>            a larger blob: the manifest b"ciopt-chunked/1 <size> <chunk_size>"
    <ns>:chunk:<hex>:<i>      chunk i (0-based) of a larger blob, chunk_size bytes, the last shorter

Whether `<ns>:cas:<hex>` is raw or a manifest follows from the digest's size alone. Chunks are
written before their manifest, so a manifest implies its chunks were all stored once. Eviction
takes keys one by one: a blob missing a chunk is a miss for readers (who never write), and
find_missing reports it (one EXISTS over the manifest and all its chunks), so the next writer
uploads it again.

Expiry: no TTL. The server is expected to run with `maxmemory-policy allkeys-lru` (see
docs/cache-redis.md): what a cache should keep is what is used, and LRU knows that for free on
every read, while a TTL expires hot entries and bounds nothing, and refreshing one on each hit
would double the commands. The price: the instance must be dedicated to the cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ciopt import Digest
from ciopt.cache.backend import STREAM_THRESHOLD, BackendError

CHUNK_SIZE = 1024 * 1024  # short enough not to stall the server for other clients
CHUNKS_PER_TRIP = 8  # bounds a large transfer's memory to about 8 MiB
KEYS_PER_TRIP = 1000  # EXISTS / GET / SET per pipeline round trip
BYTES_PER_TRIP = 8 * 1024 * 1024  # payload per MSET / MGET round trip
MANIFEST_MAGIC = b"ciopt-chunked/1"

USERNAME_ENV = "CIOPT_REDIS_USERNAME"
PASSWORD_ENV = "CIOPT_REDIS_PASSWORD"


class _Evicted(Exception):
    """A chunk of a stored blob is gone: the blob is a miss."""


class RedisBackend:
    def __init__(self, url: str, timeout_s: float, namespace: str = "ciopt") -> None:
        options = _url_options(url)
        options.update(
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # redis-py retries with backoff by default: a dead server would then cost several
            # timeouts per call, where the tiered cache wants one error and its breaker.
            retry=Retry(NoBackoff(), 0),
            username=os.environ.get(USERNAME_ENV) or None,
            password=os.environ.get(PASSWORD_ENV) or None,
        )
        # RESP2 unless the URL asks: every server speaks it, and RESP3 brings nothing here.
        options.setdefault("protocol", 2)
        self.name = url
        self._ns = namespace
        self._pool = redis.ConnectionPool(**options)  # connects lazily, on the first command
        self._redis = redis.Redis(connection_pool=self._pool)

    # -- ActionCache

    def get_action(self, key: str) -> bytes | None:
        with self._failures("get action"):
            return self._redis.get(self._ac(key))

    def get_actions(self, keys: Sequence[str]) -> list[bytes | None]:
        """Many ActionCache entries, in order, by MGET (one round trip per KEYS_PER_TRIP)."""
        out: list[bytes | None] = []
        for start in range(0, len(keys), KEYS_PER_TRIP):
            group = [self._ac(k).encode() for k in keys[start:start + KEYS_PER_TRIP]]
            (values,) = self._round_trip("get actions", [_command(b"MGET", *group)], 1)
            out.extend(values)
        return out

    def put_action(self, key: str, value: bytes) -> None:
        with self._failures("put action"):
            self._redis.set(self._ac(key), value)

    # -- CAS

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        missing: list[Digest] = []
        for start in range(0, len(digests), KEYS_PER_TRIP):
            batch = digests[start : start + KEYS_PER_TRIP]
            keys = [self._keys(d) for d in batch]
            exists = b"".join(_command(b"EXISTS", *k) for k in keys)
            found = self._round_trip("find_missing", [exists], len(batch))
            missing.extend(d for d, k, n in zip(batch, keys, found) if n != len(k))
        return missing

    def get_blob(self, digest: Digest) -> bytes | None:
        if not _chunked(digest):
            with self._failures("get blob"):
                return self._redis.get(self._cas(digest.hash))
        chunks = self._chunks(digest)
        if chunks is None:
            return None
        try:
            return b"".join(chunks)
        except _Evicted:
            return None

    def get_blob_to_file(self, digest: Digest, dest: Path) -> bool:
        if not _chunked(digest):
            data = self.get_blob(digest)
            if data is None:
                return False
            dest.write_bytes(data)
            return True
        chunks = self._chunks(digest)
        if chunks is None:
            return False
        try:
            with open(dest, "wb") as f:
                f.writelines(chunks)
        except _Evicted:
            dest.unlink(missing_ok=True)
            return False
        except BaseException:
            dest.unlink(missing_ok=True)  # never leave a partial blob where a whole one is expected
            raise
        return True

    def put_blob(self, digest: Digest, data: bytes) -> None:
        if not _chunked(digest):
            self._round_trip("put blob", [_command(b"SET", self._cas(digest.hash).encode(), data)], 1)
            return
        view = memoryview(data)
        self._put_chunks(digest, (view[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)))

    def put_blob_file(self, digest: Digest, path: Path) -> None:
        if not _chunked(digest):
            self.put_blob(digest, path.read_bytes())
            return
        with open(path, "rb") as f:
            self._put_chunks(digest, iter(lambda: f.read(CHUNK_SIZE), b""))

    def close(self) -> None:
        self._pool.disconnect()

    # -- BuildRecords (analytics/publish.py): the build's record goes over this connection

    def append_records(self, entries: Sequence[tuple[str, bytes]], *, fields_v: str, max_len: int,
                       min_id: str | None, timeout_s: float) -> list[str]:
        """XADD each (uuid, payload) to the records stream `<ns>:records` (layout: analytics/
        stream.py), capped at about `max_len` entries, then XTRIM MINID ~ `min_id`; one round
        trip over the pool's connection (opened now only if the build never needed one), every
        socket wait at most `timeout_s`. Returns the entry ids; BackendError on any failure."""
        key = f"{self._ns}:records".encode()
        packed = [_command(b"XADD", key, b"MAXLEN", b"~", str(max_len).encode(), b"*", b"uuid", uuid.encode(),
                           b"v", fields_v.encode(), b"z", payload) for uuid, payload in entries]
        if min_id is not None:
            packed.append(_command(b"XTRIM", key, b"MINID", b"~", min_id.encode()))
        with self._failures("push records"):
            conn = self._pool.get_connection()
            connect_timeout = conn.socket_connect_timeout
            try:
                conn.socket_connect_timeout = min(timeout_s, connect_timeout or timeout_s)
                conn.connect()  # a no-op when connected
                sock = getattr(conn, "_sock", None)
                if sock is not None:
                    sock.settimeout(timeout_s)
                conn.send_packed_command(packed)
                ids = []
                for i in range(len(packed)):
                    try:
                        reply = conn.read_response()
                    except redis.exceptions.ResponseError:
                        if i < len(entries):
                            raise
                        continue  # a server before 6.2 refuses MINID: the entries are in all the same
                    if i < len(entries):
                        ids.append(reply.decode() if isinstance(reply, bytes) else str(reply))
                if sock is not None:
                    sock.settimeout(conn.socket_timeout)
                return ids
            except BaseException:
                conn.disconnect()  # unread replies would answer the next caller's commands
                raise
            finally:
                conn.socket_connect_timeout = connect_timeout
                self._pool.release(conn)

    # -- batches (used by the tiered cache when present)

    def put_blobs(self, items: Iterable[tuple[Digest, bytes]]) -> None:
        """Store many blobs: the small ones by MSET, KEYS_PER_TRIP or BYTES_PER_TRIP at a time."""
        batch: list[bytes] = []
        size = 0
        for digest, data in items:
            if _chunked(digest):
                self.put_blob(digest, data)
                continue
            batch += (self._cas(digest.hash).encode(), data)
            size += len(data)
            if len(batch) >= 2 * KEYS_PER_TRIP or size >= BYTES_PER_TRIP:
                self._round_trip("put blobs", [_command(b"MSET", *batch)], 1)
                batch, size = [], 0
        if batch:
            self._round_trip("put blobs", [_command(b"MSET", *batch)], 1)

    def get_blobs(self, digests: Sequence[Digest]) -> list[bytes | None]:
        """The blobs under `digests`, in order, None for the absent; small ones by MGET."""
        out: list[bytes | None] = [None] * len(digests)
        batch: list[int] = []
        size = 0
        for i, digest in enumerate(digests):
            if _chunked(digest):
                out[i] = self.get_blob(digest)
                continue
            batch.append(i)
            size += digest.size
            if len(batch) >= KEYS_PER_TRIP or size >= BYTES_PER_TRIP:
                self._mget_into(digests, batch, out)
                batch, size = [], 0
        if batch:
            self._mget_into(digests, batch, out)
        return out

    # -- inside

    def _ac(self, key: str) -> str:
        return f"{self._ns}:ac:{key}"

    def _cas(self, hex_: str) -> str:
        return f"{self._ns}:cas:{hex_}"

    def _chunk(self, hex_: str, i: int) -> str:
        return f"{self._ns}:chunk:{hex_}:{i}"

    def _keys(self, digest: Digest) -> list[bytes]:
        """Every key a stored blob occupies: its value or manifest, and its chunks."""
        keys = [self._cas(digest.hash).encode()]
        if _chunked(digest):
            keys += (self._chunk(digest.hash, i).encode() for i in range(_ceil_div(digest.size, CHUNK_SIZE)))
        return keys

    def _mget_into(self, digests: Sequence[Digest], batch: list[int], out: list[bytes | None]) -> None:
        keys = [self._cas(digests[i].hash).encode() for i in batch]
        (values,) = self._round_trip("get blobs", [_command(b"MGET", *keys)], 1)
        for i, value in zip(batch, values):
            out[i] = value

    def _round_trip(self, what: str, packed: list[bytes], replies: int) -> list:
        """Send encoded commands (one write per item), then read their `replies`. In batches,
        redis-py's own packing costs more than the server: Python work per command, and slow
        copies of large values."""
        with self._failures(what):
            conn = self._pool.get_connection()
            try:
                conn.send_packed_command(packed)
                return [conn.read_response() for _ in range(replies)]
            except BaseException:
                conn.disconnect()  # unread replies would answer the next caller's commands
                raise
            finally:
                self._pool.release(conn)

    def _put_chunks(self, digest: Digest, chunks: Iterator[bytes | memoryview]) -> None:
        size = 0
        sets: list[bytes] = []
        for i, chunk in enumerate(chunks):
            sets.append(_command(b"SET", self._chunk(digest.hash, i).encode(), chunk))
            size += len(chunk)
            if len(sets) == CHUNKS_PER_TRIP:
                self._round_trip("put blob", sets, len(sets))
                sets = []
        if sets:
            self._round_trip("put blob", sets, len(sets))
        # Only after every chunk is in: a manifest never points at chunks not yet written.
        manifest = b"%s %d %d" % (MANIFEST_MAGIC, size, CHUNK_SIZE)
        self._round_trip("put blob", [_command(b"SET", self._cas(digest.hash).encode(), manifest)], 1)

    def _chunks(self, digest: Digest) -> Iterator[bytes] | None:
        """The chunks of a large blob, fetched CHUNKS_PER_TRIP at a time; None when absent.
        Iterating raises _Evicted when a chunk has gone since the manifest was written."""
        with self._failures("get blob"):
            manifest = self._redis.get(self._cas(digest.hash))
        if manifest is None:
            return None
        count = _chunk_count(manifest)
        return None if count is None else self._fetch_chunks(digest, count)

    def _fetch_chunks(self, digest: Digest, count: int) -> Iterator[bytes]:
        for start in range(0, count, CHUNKS_PER_TRIP):
            keys = [self._chunk(digest.hash, i) for i in range(start, min(count, start + CHUNKS_PER_TRIP))]
            with self._failures("get blob"):
                values = self._redis.mget(keys)
            for value in values:
                if value is None:
                    raise _Evicted
                yield value

    @contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, OSError) as e:
            message = " ".join(str(e).split()) or type(e).__name__
            if isinstance(e, redis.exceptions.OutOfMemoryError):
                message += " (full and not evicting: set maxmemory-policy allkeys-lru, see docs/cache-redis.md)"
            raise BackendError(f"redis {self.name}: {what}: {message}") from e


def _command(*args: bytes | memoryview) -> bytes:
    """One command in RESP, the protocol's request encoding."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts += (b"$%d\r\n" % len(a), a, b"\r\n")
    return b"".join(parts)  # one copy of each value, not two


def _chunked(digest: Digest) -> bool:
    return digest.size > STREAM_THRESHOLD


def _chunk_count(manifest: bytes) -> int | None:
    """Chunks behind a manifest; None when it is not one (garbled, or another format)."""
    parts = manifest.split(b" ")
    if len(parts) != 3 or parts[0] != MANIFEST_MAGIC:
        return None
    try:
        size, chunk_size = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if size < 0 or chunk_size <= 0:
        return None
    return _ceil_div(size, chunk_size)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _url_options(url: str) -> dict[str, object]:
    """redis-py connection options for `url`; ValueError for credentials or an unknown scheme."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.username or parts.password or "username" in query or "password" in query:
        _, at, host = parts.netloc.rpartition("@")
        shown = f"{parts.scheme}://{'***@' if at else ''}{host}{parts.path}{'?***' if parts.query else ''}"
        raise ValueError(
            f"redis URL {shown}: credentials are not allowed in the URL (it ends up in config files and logs); "
            f"set {USERNAME_ENV} and/or {PASSWORD_ENV} in the environment instead"
        )
    try:
        return redis.connection.parse_url(url)
    except ValueError as e:
        raise ValueError(f"redis URL {url!r}: {e}") from None


__all__ = ["CHUNK_SIZE", "RedisBackend"]
