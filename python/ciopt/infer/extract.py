"""Import extraction for many files, cached in the store by file digest.

An unchanged file is never parsed again: its imports are looked up under
digest("ciopt-imports-v3", language, file digest) in the ActionCache, in one batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgpack

from ciopt import Digest, Store, hash_bytes
from ciopt._native import extract_imports

CACHE_VERSION = b"ciopt-imports-v3\0"
ImportTuple = tuple[str, int, list[str], int, int]


def _key(lang: str, digest: Digest) -> str:
    return hash_bytes(CACHE_VERSION + lang.encode() + b"\0" + str(digest).encode()).hash


def extract_cached(root: Path, files: Mapping[str, Digest], store: Store | None,
                   lang: Mapping[str, str] | None = None) -> dict[str, list[ImportTuple]]:
    """Imports of each workspace-relative file; unreadable files map to []."""
    paths = sorted(files)
    langs = [(lang or {}).get(p, "") for p in paths]
    out: dict[str, list[ImportTuple]] = {}
    keys = [_key(l, files[p]) for p, l in zip(paths, langs)]
    cached = store.action_get_many(keys) if store is not None else [None] * len(paths)
    misses = [i for i, c in enumerate(cached) if c is None]
    for i, c in enumerate(cached):
        if c is not None:
            out[paths[i]] = [tuple(t) for t in msgpack.unpackb(c)]  # type: ignore[misc]
    if misses:
        # Grouped by forced language (empty = by extension) so each batch is one parallel call.
        groups: dict[str, list[int]] = {}
        for i in misses:
            groups.setdefault(langs[i], []).append(i)
        fresh: list[tuple[str, bytes]] = []
        for l, idxs in groups.items():
            results = extract_imports([root / paths[i] for i in idxs], l or None)
            for i, r in zip(idxs, results):
                imports = r if isinstance(r, list) else []
                out[paths[i]] = imports
                if isinstance(r, list):
                    fresh.append((keys[i], msgpack.packb(imports)))
        if store is not None and fresh:
            store.action_put_many(fresh)
    return out
