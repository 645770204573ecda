"""Several cache servers as one: rendezvous (highest random weight) hashing with xxHash.

Each key goes to the server with the highest xxh64(server name + key): adding a server moves
only the keys it now wins (about 1/N of them), removing one moves only its own, and every
client computes the same placement without coordination (ccache's `shards` work this way).
A dead shard raises for its share; the tiered cache counts that as a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import xxhash

from ciopt import Digest
from ciopt.cache.backend import RemoteBackend

T = TypeVar("T")


class ShardedBackend:
    def __init__(self, shards: Sequence[RemoteBackend]) -> None:
        if not shards:
            raise ValueError("no shards")
        self.shards = list(shards)
        self.name = ",".join(s.name for s in shards)

    def shard_for(self, key: str) -> RemoteBackend:
        return max(self.shards, key=lambda s: xxhash.xxh64_intdigest(s.name.encode() + b"\0" + key.encode()))

    def _by_shard(self, items: Sequence[T], key: Callable[[T], str]) -> dict[int, list[T]]:
        out: dict[int, list[T]] = {}
        for it in items:
            out.setdefault(id(self.shard_for(key(it))), []).append(it)
        return out

    def _shard(self, ident: int) -> RemoteBackend:
        return next(s for s in self.shards if id(s) == ident)

    def get_action(self, key: str) -> bytes | None:
        return self.shard_for(key).get_action(key)

    def put_action(self, key: str, value: bytes) -> None:
        self.shard_for(key).put_action(key, value)

    def find_missing(self, digests: Sequence[Digest]) -> list[Digest]:
        missing: list[Digest] = []
        for ident, group in self._by_shard(digests, lambda d: d.hash).items():
            missing.extend(self._shard(ident).find_missing(group))
        return missing

    def get_blob(self, digest: Digest) -> bytes | None:
        return self.shard_for(digest.hash).get_blob(digest)

    def get_blob_to_file(self, digest: Digest, dest: Path) -> bool:
        return self.shard_for(digest.hash).get_blob_to_file(digest, dest)

    def put_blob(self, digest: Digest, data: bytes) -> None:
        self.shard_for(digest.hash).put_blob(digest, data)

    def put_blob_file(self, digest: Digest, path: Path) -> None:
        self.shard_for(digest.hash).put_blob_file(digest, path)

    def get_blobs(self, digests: Sequence[Digest]) -> list[bytes | None]:
        out: dict[Digest, bytes | None] = {}
        for ident, group in self._by_shard(digests, lambda d: d.hash).items():
            out.update(zip(group, _get_many(self._shard(ident), group)))
        return [out[d] for d in digests]

    def put_blobs(self, items: Sequence[tuple[Digest, bytes]]) -> None:
        for ident, group in self._by_shard(items, lambda it: it[0].hash).items():
            _put_many(self._shard(ident), group)

    def close(self) -> None:
        for s in self.shards:
            s.close()


def _get_many(backend: RemoteBackend, digests: Sequence[Digest]) -> list[bytes | None]:
    """Batched when the backend can (one pipeline / parallel requests), else one by one."""
    many = getattr(backend, "get_blobs", None)
    return list(many(digests)) if many is not None else [backend.get_blob(d) for d in digests]


def _put_many(backend: RemoteBackend, items: Sequence[tuple[Digest, bytes]]) -> None:
    many = getattr(backend, "put_blobs", None)
    if many is not None:
        many(items)
    else:
        for d, data in items:
            backend.put_blob(d, data)


def connect(urls: Sequence[str], timeout_s: float) -> RemoteBackend:
    """The backend for `cache.remote.url`: one server, or shards of several."""
    backends = [_one(u, timeout_s) for u in urls]
    return backends[0] if len(backends) == 1 else ShardedBackend(backends)


def _one(url: str, timeout_s: float) -> RemoteBackend:
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from ciopt.cache.redis_backend import RedisBackend

        return RedisBackend(url, timeout_s)
    if scheme in ("http", "https"):
        from ciopt.cache.http_backend import HttpBackend

        return HttpBackend(url, timeout_s)
    raise ValueError(f"cache.remote.url: unsupported scheme in {url!r} (redis://, rediss://, unix://, http://, https://)")


__all__ = ["ShardedBackend", "connect", "get_many", "put_many"]
get_many, put_many = _get_many, _put_many
