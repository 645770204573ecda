"""The remote tier: the shared cache behind the local store.

Lookups go to the local LMDB store first (the engine does that); on a miss the engine asks
this tier. A remote hit is checked before it is used, and written to the local store, so the
next run on this machine is a local hit:

* the ActionCache entry's signature, when `cache.remote.signing_key_env` is set (signing.py);
* every blob it names (outputs, the test log, per-test cases) against its digest, as it is
  downloaded. A mismatch is counted, logged, and the whole entry is a miss, never a result.

Uploads happen after success, behind the build: entries queue up (bounded; beyond the bound
they are dropped with one warning), a background thread batches them (one find_missing for
the blobs of many entries, then only the missing blobs, then the entries, so an entry never
points at a blob the remote lacks), and the queue is flushed before exit within
`flush_timeout_s`, after which what is left is dropped with a warning.

Degradation: the first backend error trips a breaker for the rest of the invocation (one
warning, everything local from then on), or, with `degradation: fail`, stops the build with
an error naming the backend.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ciopt import Digest, Store, hash_bytes, hash_file
from ciopt.cache.backend import STREAM_THRESHOLD, BackendError, RemoteBackend
from ciopt.cache.signing import SignatureError, Signer, unwrap_unverified
from ciopt.errors import UserError
from ciopt.exec.action_result import ActionResult

MAX_QUEUED = 10_000  # entries waiting for upload; beyond this they are dropped (with a warning)
UPLOAD_BATCH = 64


class RemoteCacheFailed(UserError):
    """The remote cache failed and `degradation: fail` says that stops the build."""


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    uploads: int = 0
    errors: int = 0
    verify_failures: int = 0  # blobs whose bytes did not match their digest
    signature_failures: int = 0
    dropped: int = 0  # uploads given up (queue full, flush time cap, breaker)
    latencies_s: list[float] = field(default_factory=list)  # ActionCache lookups

    def to_json(self) -> dict[str, object]:
        lat = sorted(self.latencies_s)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {"hits": self.hits, "misses": self.misses, "bytes_down": self.bytes_down,
                "bytes_up": self.bytes_up, "uploads": self.uploads, "errors": self.errors,
                "verify_failures": self.verify_failures, "signature_failures": self.signature_failures,
                "dropped": self.dropped, "lookup_ms_p50": pct(0.5), "lookup_ms_p95": pct(0.95),
                "lookup_ms_p99": pct(0.99)}


@dataclass
class _Upload:
    key: str
    entry: bytes  # the encoded ActionResult (signed on the way out)
    files: list[tuple[Path, Digest]]  # blobs the entry names, where they are on disk
    blobs: list[tuple[Digest, bytes]] = field(default_factory=list)  # ... or in memory


class RemoteTier:
    def __init__(self, backend: RemoteBackend, store: Store, *, read_only: bool = False,
                 signer: Signer | None = None, degradation: str = "fallback",
                 warn: Callable[[str], None] = lambda m: None, flush_timeout_s: float = 30.0) -> None:
        self.backend = backend
        self.store = store
        self.digest = store.digest_function
        self.read_only = read_only
        self.signer = signer
        self.degradation = degradation
        self.warn = warn
        self.flush_timeout_s = flush_timeout_s
        self.stats = TierStats()
        self.broken: str | None = None  # why the breaker tripped
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Upload | None] = queue.Queue(MAX_QUEUED)
        self._worker: threading.Thread | None = None
        self._warned_full = False
        # Filled by prefetch(): entries and small blobs fetched in batches ahead of fetch().
        self._entries: dict[str, bytes | None] = {}
        self._blobs: dict[Digest, bytes] = {}

    # -- failure handling ---------------------------------------------------------------------

    def _failed(self, e: Exception) -> None:
        with self._lock:
            self.stats.errors += 1
            if self.broken is not None:
                return
            self.broken = str(e)
        if self.degradation == "fail":
            raise RemoteCacheFailed(f"remote cache: {e} (degradation: fail)") from None
        self.warn(f"remote cache unavailable, continuing with the local cache only: {e}")

    # -- lookups ------------------------------------------------------------------------------

    def prefetch(self, keys: list[str]) -> None:
        """Look up many keys in one round trip (when the backend can batch), and the small
        blobs their entries name in another, so that fetch() of each needs no round trip.
        Nothing here is trusted yet: fetch() verifies signatures and digests as always."""
        many = getattr(self.backend, "get_actions", None)
        keys = [k for k in keys if k not in self._entries]
        if self.broken is not None or many is None or not keys:
            return
        from ciopt.cache.shards import get_many

        try:
            raws = many(keys)
            wanted: list[Digest] = []
            for key, raw in zip(keys, raws):
                self._entries[key] = raw
                result = ActionResult.decode(unwrap_unverified(raw)) if raw is not None else None
                wanted += (_named(result) or []) if result is not None else []
            small = [d for d in dict.fromkeys(wanted) if d.size <= STREAM_THRESHOLD and d not in self._blobs]
            small = self.store.find_missing(small) if small else []
            for start in range(0, len(small), 256):
                group = small[start:start + 256]
                for d, data in zip(group, get_many(self.backend, group)):
                    if data is not None:
                        self._blobs[d] = data
        except BackendError as e:
            self._failed(e)

    def fetch(self, key: str, keep: dict[Digest, bytes]) -> bytes | None:
        """The ActionCache entry for `key` from the remote, once every blob it names has been
        downloaded and verified; None on any miss. Small blobs are left in `keep` (large ones
        go to the store): the caller materializes from memory and stores blobs and entry in one
        batched commit, not one per hit."""
        if self.broken is not None:
            return None
        started = time.perf_counter()
        try:
            raw = self._entries.pop(key) if key in self._entries else self.backend.get_action(key)
        except BackendError as e:
            self._failed(e)
            return None
        finally:
            self.stats.latencies_s.append(time.perf_counter() - started)
        payload = self._verified(key, raw) if raw is not None else None
        result = ActionResult.decode(payload) if payload is not None else None
        wanted = _named(result) if result is not None else None
        if wanted is None:
            self.stats.misses += 1
            return None
        try:
            if not self._download(self.store.find_missing(wanted), keep):
                self.stats.misses += 1
                return None
        except BackendError as e:
            self._failed(e)
            return None
        self.stats.hits += 1
        return payload

    def _verified(self, key: str, raw: bytes) -> bytes | None:
        """The payload of an entry, its signature checked when signing is on; None if refused."""
        try:
            return self.signer.verify(key, raw) if self.signer is not None else unwrap_unverified(raw)
        except SignatureError as e:
            self.stats.signature_failures += 1
            self.warn(f"remote cache entry {key[:12]} refused: {e}")
            return None

    def _download(self, missing: list[Digest], keep: dict[Digest, bytes] | None = None) -> bool:
        """Every digest into the local store (small ones into `keep` when given), verified;
        False when one is absent or corrupt."""
        from ciopt.cache.shards import get_many

        small = [d for d in missing if d.size <= STREAM_THRESHOLD]
        for start in range(0, len(small), 256):  # one round trip per 256 blobs, bounded memory
            group = small[start:start + 256]
            need = [d for d in group if d not in self._blobs]
            fetched = dict(zip(need, get_many(self.backend, need))) if need else {}
            datas = [self._blobs[d] if d in self._blobs else fetched.get(d) for d in group]
            good: list[bytes] = []
            for d, data in zip(group, datas):
                if data is None:
                    return False
                if hash_bytes(data, self.digest) != d:
                    self._corrupt(d)
                    return False
                good.append(data)
            if keep is not None:
                keep.update(zip(group, good))
            else:
                self.store.put_many(good)
            self.stats.bytes_down += sum(d.size for d in group)
        for d in missing:
            if d.size > STREAM_THRESHOLD:
                fd, tmp = tempfile.mkstemp(prefix=".remote-", dir=self.store.path)
                os.close(fd)
                try:
                    if not self.backend.get_blob_to_file(d, Path(tmp)):
                        return False
                    if hash_file(tmp, self.digest) != d:
                        self._corrupt(d)
                        return False
                    self.store.put_file(tmp)
                finally:
                    Path(tmp).unlink(missing_ok=True)
                self.stats.bytes_down += d.size
        return True

    def _corrupt(self, d: Digest) -> None:
        self.stats.verify_failures += 1
        self.warn(f"remote cache blob {d} did not match its digest: ignored (a miss)")

    # -- for directory snapshots (dirs.py): the same checks, synchronously ---------------------

    def get_entry(self, key: str) -> bytes | None:
        """An ActionCache entry, signature checked (None: absent, refused, or the tier is down)."""
        if self.broken is not None:
            return None
        try:
            raw = self.backend.get_action(key)
        except BackendError as e:
            self._failed(e)
            return None
        return self._verified(key, raw) if raw is not None else None

    def missing_remotely(self, digests: list[Digest]) -> list[Digest]:
        """The digests the remote lacks (all of them when the tier is down)."""
        if self.broken is not None:
            return digests
        try:
            return self.backend.find_missing(digests)
        except BackendError as e:
            self._failed(e)
            return digests

    def put_entry(self, key: str, payload: bytes) -> None:
        if self.read_only or self.broken is not None:
            return
        try:
            self.backend.put_action(key, self.signer.sign(key, payload) if self.signer is not None else payload)
        except BackendError as e:
            self._failed(e)

    def download(self, digests: list[Digest], keep: dict[Digest, bytes] | None = None) -> bool:
        """These blobs into the local store (small ones into `keep` when given), verified; False
        when one is absent, corrupt, or the tier is down."""
        if self.broken is not None:
            return False
        try:
            return self._download(digests, keep)
        except BackendError as e:
            self._failed(e)
            return False

    def upload_bytes_now(self, items: list[tuple[Digest, bytes]]) -> int:
        """Upload these in-memory blobs where the remote lacks them, now; returns bytes sent."""
        if self.read_only or self.broken is not None or not items:
            return 0
        before = self.stats.bytes_up
        by_digest = dict(items)
        try:
            self._put_bytes([(d, by_digest[d]) for d in self.backend.find_missing(list(by_digest))])
        except BackendError as e:
            self._failed(e)
        return self.stats.bytes_up - before

    def upload_now(self, files: list[tuple[Path, Digest]]) -> int:
        """Upload the blobs the remote lacks, now; returns the bytes sent."""
        if self.read_only or self.broken is not None:
            return 0
        before = self.stats.bytes_up
        where: dict[Digest, Path] = {}
        for path, d in files:
            where.setdefault(d, path)
        try:
            self._put_all(self.backend.find_missing(list(where)), where)
        except BackendError as e:
            self._failed(e)
        except OSError as e:
            self.warn(f"remote cache upload skipped: {e}")
        return self.stats.bytes_up - before

    def _put_all(self, missing: list[Digest], where: dict[Digest, Path]) -> None:
        """Upload these blobs: small ones in batches (one round trip each), large ones streamed."""
        batch: list[tuple[Digest, bytes]] = []
        size = 0
        for d in missing:
            if d.size > STREAM_THRESHOLD:
                self._put_large(d, where[d])
                continue
            data = where[d].read_bytes()
            if hash_bytes(data, self.digest) != d:
                continue  # rewritten since it was hashed: not the bytes the entry names
            batch.append((d, data))
            size += d.size
            if len(batch) >= 256 or size >= STREAM_THRESHOLD:
                self._put_bytes(batch)
                batch, size = [], 0
        self._put_bytes(batch)

    def _put_bytes(self, items: list[tuple[Digest, bytes]]) -> None:
        """Small blobs in one batched request (their bytes already checked by the caller)."""
        from ciopt.cache.shards import put_many

        if items:
            put_many(self.backend, items)
            self.stats.bytes_up += sum(d.size for d, _ in items)

    def _put_large(self, d: Digest, path: Path) -> None:
        # The file may have been rewritten since it was hashed: upload only if it still holds
        # the bytes the digest names (small ones are checked in _put_all as they are read).
        if hash_file(path, self.digest) != d:
            return
        self.backend.put_blob_file(d, path)
        self.stats.bytes_up += d.size

    # -- uploads ------------------------------------------------------------------------------

    def upload(self, key: str, entry: bytes, files: list[tuple[Path, Digest]],
               blobs: list[tuple[Digest, bytes]] = ()) -> None:  # type: ignore[assignment]
        """Queue a successful result for upload (never blocks the build)."""
        if self.read_only or self.broken is not None:
            return
        try:
            self._queue.put_nowait(_Upload(key, entry, files, list(blobs)))
        except queue.Full:
            self.stats.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                self.warn(f"remote cache upload queue full ({MAX_QUEUED} entries): later results are not uploaded")
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._upload_loop, name="ciopt-remote-upload", daemon=True)
            self._worker.start()

    def _upload_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < UPLOAD_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._send(batch)
                    return
                batch.append(nxt)
            self._send(batch)

    def _send(self, batch: list[_Upload]) -> None:
        if self.broken is not None:
            self.stats.dropped += len(batch)
            return
        try:
            where: dict[Digest, Path] = {}
            in_memory: dict[Digest, bytes] = {}
            for up in batch:
                for path, d in up.files:
                    where.setdefault(d, path)
                in_memory.update(up.blobs)
            missing = self.backend.find_missing([*where, *(d for d in in_memory if d not in where)])
            self._put_all([d for d in missing if d in where], where)
            self._put_bytes([(d, in_memory[d]) for d in missing if d not in where])
            for up in batch:
                entry = self.signer.sign(up.key, up.entry) if self.signer is not None else up.entry
                self.backend.put_action(up.key, entry)
                self.stats.uploads += 1
        except BackendError as e:
            self.stats.dropped += len(batch)
            try:
                self._failed(e)
            except RemoteCacheFailed:
                pass  # reported by close(): uploads run after the results are known
        except OSError as e:
            self.stats.dropped += len(batch)
            self.warn(f"remote cache upload skipped: {e}")

    def close(self) -> None:
        """Flush queued uploads within flush_timeout_s, then drop the rest with a warning, and
        close the backend's connections."""
        self.flush()
        try:
            self.backend.close()
        except BackendError:
            pass

    def flush(self) -> None:
        """Flush queued uploads within flush_timeout_s, then drop the rest with a warning. The
        backend's connections stay open: the build pushes its record over them (analytics/
        publish.py) before close()."""
        worker, self._worker = self._worker, None
        if worker is not None:
            try:
                self._queue.put(None, timeout=self.flush_timeout_s)
            except queue.Full:
                pass
            worker.join(self.flush_timeout_s)
            if worker.is_alive():
                left = self._queue.qsize()
                self.stats.dropped += left
                self.warn(f"remote cache: {left} uploads still pending after {self.flush_timeout_s:g} s; "
                          "dropped (the next run uploads them)")


HISTORY_FILE = "remote-tier.jsonl"
HISTORY_KEEP = 500


def record_history(store_path: Path, backend: str, stats: TierStats) -> None:
    """Append one invocation's figures beside the store, for `ciopt cache stats`."""
    path = Path(store_path) / HISTORY_FILE
    line = json.dumps({"at": time.time(), "backend": backend, **stats.to_json()})
    try:
        lines = path.read_text().splitlines()[-(HISTORY_KEEP - 1):] if path.is_file() else []
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join([*lines, line]) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # figures are a convenience; never a reason to fail


def history_summary(store_path: Path) -> dict[str, object] | None:
    """Totals over the recorded invocations, and the latest one's latency percentiles."""
    path = Path(store_path) / HISTORY_FILE
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if not rows:
        return None
    total = {k: sum(int(r.get(k) or 0) for r in rows) for k in
             ("hits", "misses", "bytes_down", "bytes_up", "uploads", "errors", "verify_failures",
              "signature_failures", "dropped")}
    lookups = total["hits"] + total["misses"]
    last = next((r for r in reversed(rows) if r.get("lookup_ms_p50") is not None), rows[-1])
    return {"invocations": len(rows), "backend": rows[-1].get("backend"), **total,
            "hit_rate": round(total["hits"] / lookups, 4) if lookups else None,
            "last_lookup_ms_p50": last.get("lookup_ms_p50"), "last_lookup_ms_p95": last.get("lookup_ms_p95"),
            "last_lookup_ms_p99": last.get("lookup_ms_p99")}


def _named(result: ActionResult) -> list[Digest] | None:
    """Every blob an ActionResult names (outputs, logs, per-test cases); None if unreadable."""
    named = [o.digest for o in result.outputs] + [d for d in (result.stdout, result.stderr) if d]
    cases = result.extra.get("cases")
    if isinstance(cases, str):
        try:
            named.append(Digest.parse(cases))
        except ValueError:
            return None
    return named


__all__ = ["RemoteCacheFailed", "RemoteTier", "TierStats", "history_summary", "record_history"]
