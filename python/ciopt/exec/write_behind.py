"""Write-behind of action results: blobs and ActionCache entries are stored in batches.

Every LMDB commit costs an fsync; one per output and one per result made a build of many
small actions wait on the disk more than on the actions. A background thread commits
whatever has accumulated (blobs first, then the entries that reference them, so an entry
never points at a missing blob). A build killed before a flush only loses cache entries:
those actions run again next time.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ciopt import Store

FLUSH_INTERVAL_S = 0.1
FLUSH_AT = 256
log = logging.getLogger(__name__)


class WriteBehind:
    def __init__(self, store: Store | None) -> None:
        self.store = store
        self._files: list[Path] = []
        self._blobs: list[bytes] = []
        self._entries: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def add(self, files: list[Path], key: str, result: bytes, blobs: list[bytes] = ()) -> None:  # type: ignore[assignment]
        """Store `files` and in-memory `blobs`, then the entry `key` -> `result` that names them."""
        if self.store is None:
            return
        with self._lock:
            self._files.extend(files)
            self._blobs.extend(blobs)
            self._entries.append((key, result))
            big = len(self._entries) >= FLUSH_AT
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ciopt-write-behind", daemon=True)
                self._thread.start()
        if big:
            self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self._commit()

    def _commit(self) -> None:
        with self._lock:
            files, self._files = self._files, []
            blobs, self._blobs = self._blobs, []
            entries, self._entries = self._entries, []
        if not entries or self.store is None:
            return
        try:
            self.store.put_files(files)
            if blobs:
                self.store.put_many(blobs)
            self.store.action_put_many(entries)
        except Exception as e:  # noqa: BLE001 - a failed cache write must never fail the build
            self.errors.append(str(e))
            log.warning("could not store %d action results: %s", len(entries), e)

    def flush(self) -> None:
        """Commit everything pending now (end of build)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._commit()
        self._closed = False
