"""A Store with its writes behind: the CAS of the scheduler and of each executor.

Every LMDB write transaction ends in an fsync (about 6-8 ms here). The scheduler handles each
upload and each cacheable result on its one thread, and an executor stores inputs and outputs
between two actions, so writing through would put two or three fsyncs on every action's path.
Instead, blobs and ActionCache entries are kept in memory and a background thread commits them
in batches (one transaction each for blobs and entries, blobs first so an entry never names a
missing blob). Reads see what is still pending. A crash loses only the pending writes: those
blobs are uploaded again after find_missing says so, and those results are recomputed.

Bytes are verified against their digest on the way in (put_verified), so nothing unverified is
ever served from here.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from ciopt import CorruptBlobError, Digest, Store, hash_bytes

log = logging.getLogger("ciopt.remote.cas")

FLUSH_INTERVAL_S = 0.25
FLUSH_AT_BYTES = 64 * 1024 * 1024


class WriteBehindCAS:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.digest_function = store.digest_function
        self._lock = threading.Lock()
        self._blobs: dict[Digest, bytes] = {}
        self._results: dict[str, bytes] = {}
        self._flushing_blobs: dict[Digest, bytes] = {}
        self._flushing_results: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ciopt-cas-writer", daemon=True)
        self._thread.start()

    # -- writes -------------------------------------------------------------------------------------

    def put_verified(self, data: bytes, expected: Digest) -> bool:
        """Keep `data` if it hashes to `expected`; whether it did."""
        if hash_bytes(data, self.digest_function) != expected:
            return False
        self._add_blob(expected, data)
        return True

    def put(self, data: bytes) -> Digest:
        d = hash_bytes(data, self.digest_function)
        self._add_blob(d, data)
        return d

    def _add_blob(self, d: Digest, data: bytes) -> None:
        with self._lock:
            if d not in self._blobs:
                self._blobs[d] = data
                self._pending_bytes += len(data)
            big = self._pending_bytes >= FLUSH_AT_BYTES
        if big:
            self._wake.set()

    def put_file(self, path: str | os.PathLike[str]) -> Digest:
        """Large blobs are streamed straight into the store (their own transaction)."""
        return self.store.put_file(path)

    def action_put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._results[key] = value

    # -- reads --------------------------------------------------------------------------------------

    def _pending(self, d: Digest) -> bytes | None:
        with self._lock:
            data = self._blobs.get(d)
            return data if data is not None else self._flushing_blobs.get(d)

    def get(self, d: Digest) -> bytes | None:
        data = self._pending(d)
        if data is not None:
            return data
        try:
            return self.store.get(d)
        except CorruptBlobError:
            return None

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        with self._lock:
            rest = [d for d in digests if d not in self._blobs and d not in self._flushing_blobs]
        return self.store.find_missing(rest) if rest else []

    def get_to_file(self, d: Digest, dest: str | os.PathLike[str], executable: bool = False) -> bool:
        data = self._pending(d)
        if data is None:
            return self.store.get_to_file(d, dest, executable=executable)
        dest = Path(dest)
        try:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        except FileNotFoundError:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755 if executable else 0o644)
        os.replace(tmp, dest)
        return True

    def action_get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._results.get(key) or self._flushing_results.get(key)
        return value if value is not None else self.store.action_get(key)

    # -- the writer ---------------------------------------------------------------------------------

    def flush(self) -> None:
        with self._lock:
            if self._flushing_blobs or self._flushing_results:
                return  # the writer thread is at it
            blobs, self._blobs = self._blobs, {}
            results, self._results = self._results, {}
            self._flushing_blobs, self._flushing_results = blobs, results
            self._pending_bytes = 0
        try:
            if blobs:
                stored = self.store.put_many(list(blobs.values()))
                if stored != list(blobs):
                    log.error("the store hashed %d pending blob(s) differently; dropped", len(blobs))
            if results:
                self.store.action_put_many(list(results.items()))
        except Exception:  # noqa: BLE001 - a full disk must not kill the daemon; the data is re-sent
            log.exception("writing %d blob(s) and %d result(s) to %s failed", len(blobs), len(results),
                          self.store.path)
        finally:
            with self._lock:
                self._flushing_blobs, self._flushing_results = {}, {}

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()


__all__ = ["WriteBehindCAS"]
