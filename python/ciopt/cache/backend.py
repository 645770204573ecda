"""The remote cache backend interface: what every shared cache (Redis, HTTP, shards of them)
offers the tiered cache. Two namespaces, as in Bazel's remote cache:

    ActionCache  ActionKey hex -> encoded ActionResult (exec/action_result.py)
    CAS          Digest -> blob bytes

Backends move bytes and nothing else: they never verify, sign or interpret what they store.
The tiered cache (tiered.py) verifies every blob against its digest, checks signatures, and
treats anything odd as a miss. Every method may raise BackendError (unreachable, timed out,
refused, a garbled answer); the caller decides between fallback and failure (`degradation`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from ciopt import Digest

# Blobs above this size are streamed (HTTP) or chunked (Redis), never held whole in memory.
# Part of the Redis storage format (raw vs chunked): changing it needs a new layout version.
STREAM_THRESHOLD = 8 * 1024 * 1024


class BackendError(Exception):
    """The backend failed: str() names the backend and what went wrong, in one line."""


class RemoteBackend(Protocol):
    name: str  # for messages: "redis://cache:6379/0", "http://cache:8080"

    def get_action(self, key: str) -> bytes | None:
        """The ActionCache entry under `key` (hex), None when absent."""
        ...

    def put_action(self, key: str, value: bytes) -> None: ...

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        """The digests the backend does not hold, in one batched round trip where it can."""
        ...

    def get_blob(self, digest: Digest) -> bytes | None:
        """The bytes stored under `digest` (not verified here), None when absent."""
        ...

    def get_blob_to_file(self, digest: Digest, dest: Path) -> bool:
        """Stream the blob into `dest` (created or truncated); False when absent."""
        ...

    def put_blob(self, digest: Digest, data: bytes) -> None: ...

    def put_blob_file(self, digest: Digest, path: Path) -> None:
        """Upload a file's bytes under `digest`, streamed when large."""
        ...

    def close(self) -> None: ...


class BatchBackend(RemoteBackend, Protocol):
    """Optional: many small blobs per round trip (Redis pipelines, parallel HTTP requests)."""

    def get_blobs(self, digests: Sequence[Digest]) -> list[bytes | None]: ...

    def put_blobs(self, items: Sequence[tuple[Digest, bytes]]) -> None: ...


def hexes(digests: Iterable[Digest]) -> list[str]:
    return [d.hash for d in digests]


__all__ = ["STREAM_THRESHOLD", "BackendError", "BatchBackend", "RemoteBackend", "hexes"]
