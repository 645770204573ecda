"""What each executed action's key was made of, kept so `ciopt explain` can say why it missed.

An ActionKey is one digest: once two differ nothing tells which part did. So for every action
that ran (a cache miss) the engine records the parts (argv, env, each input's digest, the
toolchain, the installed distributions) under the target's label, keeping the latest record
and the one before it with a different key. "Why did this miss?" is then a diff of the two.

Layout in the store, all written in one batch at the end of a build:

    ActionCache  H("ciopt-key-record-v1" label)  ->  msgpack {"latest": rec, "prior": rec | None}
    CAS          one manifest per build: every recorded input's path -> digest (zlib, msgpack)
    CAS          per action: its sorted input paths (zlib, msgpack; identical closures share it)
    CAS          the project interpreter's distributions (shared by all Python actions)

Digests are the bulk of the inputs and appear once per build in the manifest, not once per
action; path lists compress well. Nothing here is read on a cache hit: the hot path pays only
for actions that really ran.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgpack

from ciopt import Digest, Store, hash_bytes
from ciopt.graph.action_graph import Action

RECORD_VERSION = 1
_RECORD_PREFIX = b"ciopt-key-record-v1\0"
log = logging.getLogger(__name__)

InputTriple = tuple[str, Digest, bool]  # (exec-root-relative path, digest, executable)


@dataclass(frozen=True)
class KeyParts:
    """The parts of one action's key, as computed by a build or by `ciopt explain`."""

    label: str
    key: str
    mnemonic: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    inputs: dict[str, tuple[str, bool]] | None  # path -> ("<hex>/<size>", executable); None = evicted
    outputs: tuple[str, ...]
    requires: tuple[tuple[str, object], ...]
    timeout_s: float | None
    toolchain: dict[str, object]  # the parsed canonical toolchain JSON
    distributions: tuple[str, ...] | None = None  # "name==version"; None = not a Python action or unknown
    status: str = "executed"  # how the recorded run ended: executed | failed | cached_remote
    at: float = field(default=0.0, compare=False)

    @classmethod
    def of(cls, action: Action, inputs: Iterable[InputTriple], key: str, toolchain: str,
           distributions: Sequence[str] | None = None, status: str = "executed") -> KeyParts:
        return cls(
            label=str(action.label), key=key, mnemonic=action.mnemonic, argv=tuple(action.argv), env=action.env,
            inputs={p: (str(d), bool(x)) for p, d, x in inputs}, outputs=action.outputs,
            requires=action.requires, timeout_s=action.timeout_s, toolchain=json.loads(toolchain),
            distributions=tuple(distributions) if distributions is not None else None, status=status,
            at=time.time(),
        )


@dataclass(frozen=True)
class Executed:
    """What the engine hands over for an action that ran: the raw parts, converted only here."""

    action: Action
    inputs: Sequence[InputTriple]
    key: str
    toolchain: str  # canonical JSON, as in the key
    distributions: Sequence[str] | None  # Python actions only
    status: str  # executed | failed | cached_remote


@dataclass(frozen=True)
class Recorded:
    """The records of one label: the latest executed key and the one before it that differs."""

    latest: KeyParts
    prior: KeyParts | None


def record_key(label: str) -> str:
    """The ActionCache key the records of `label` live under (never an ActionKey: other prefix)."""
    return hash_bytes(_RECORD_PREFIX + label.encode()).hash


def _pack(obj: object) -> bytes:
    return zlib.compress(msgpack.packb(obj), 1)


def _unpack(raw: bytes | None) -> object:
    return msgpack.unpackb(zlib.decompress(raw), strict_map_key=False) if raw is not None else None


def write_records(store: Store, ran: Sequence[Executed]) -> None:
    """Record the parts of the actions a build executed: one read and one write transaction.

    A failure is logged, never raised: losing an explanation must not fail a build."""
    if not ran:
        return
    try:
        _write(store, ran)
    except Exception as e:  # noqa: BLE001
        log.warning("could not record the key parts of %d actions: %s", len(ran), e)


def _write(store: Store, ran: Sequence[Executed]) -> None:
    # Each path's digest is turned into text once per build, however many actions read it.
    manifest: dict[str, list[object]] = {}
    for r in ran:
        for path, digest, executable in r.inputs:
            if path not in manifest:
                manifest[path] = [str(digest), bool(executable)]
    blobs: dict[bytes, str] = {}

    def blob(data: bytes) -> str:
        ref = blobs.get(data)
        if ref is None:
            ref = blobs[data] = str(hash_bytes(data, store.digest_function))
        return ref

    manifest_ref = blob(_pack(manifest))
    dists: dict[tuple[str, ...], str] = {}
    now = time.time()
    labels = [str(r.action.label) for r in ran]
    old = store.action_get_many([record_key(l) for l in labels])
    entries = []
    for label, r, raw in zip(labels, ran, old, strict=True):
        a = r.action
        dist_ref = None
        if r.distributions is not None:
            d = tuple(r.distributions)
            dist_ref = dists.get(d) or dists.setdefault(d, blob(_pack(list(d))))
        rec = {
            "key": r.key, "at": now, "status": r.status, "mnemonic": a.mnemonic, "argv": list(a.argv),
            "env": [list(kv) for kv in a.env], "outputs": list(a.outputs),
            "requires": [[k, list(v) if isinstance(v, tuple) else v] for k, v in a.requires],
            "timeout_s": a.timeout_s, "toolchain": r.toolchain, "manifest": manifest_ref,
            "paths": blob(_pack([p for p, _, _ in r.inputs])), "dists": dist_ref,
        }
        previous = _decode_entry(raw)
        if previous is None:
            prior = None
        elif previous["latest"].get("key") != r.key:
            prior = previous["latest"]
        else:
            prior = previous.get("prior")  # the same key ran again (a failing test): keep what it replaced
        entries.append((record_key(label), msgpack.packb({"v": RECORD_VERSION, "latest": rec, "prior": prior})))
    store.put_many(list(blobs))
    store.action_put_many(entries)


def _decode_entry(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        doc = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException):
        return None
    return doc if isinstance(doc, dict) and doc.get("v") == RECORD_VERSION and doc.get("latest") else None


def read_record(store: Store, label: str) -> Recorded | None:
    """The records of `label`, or None when it never ran with this store."""
    doc = _decode_entry(store.action_get(record_key(label)))
    if doc is None:
        return None
    latest = _parts(store, label, doc["latest"])
    prior = _parts(store, label, doc["prior"]) if doc.get("prior") else None
    return Recorded(latest, prior)


def _get(store: Store, ref: str | None) -> object:
    if not ref:
        return None
    try:
        return _unpack(store.get(ref))
    except Exception:  # noqa: BLE001 - evicted or corrupt: the part is reported as unknown
        return None


def _parts(store: Store, label: str, rec: dict) -> KeyParts:
    manifest = _get(store, rec.get("manifest"))
    paths = _get(store, rec.get("paths"))
    inputs = None
    if isinstance(manifest, dict) and isinstance(paths, list) and all(p in manifest for p in paths):
        inputs = {p: (str(manifest[p][0]), bool(manifest[p][1])) for p in paths}
    dists = _get(store, rec.get("dists"))
    return KeyParts(
        label=label, key=rec["key"], mnemonic=rec["mnemonic"], argv=tuple(rec["argv"]),
        env=tuple((k, v) for k, v in rec["env"]), inputs=inputs, outputs=tuple(rec["outputs"]),
        requires=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rec["requires"]),
        timeout_s=rec["timeout_s"], toolchain=json.loads(rec["toolchain"]),
        distributions=tuple(dists) if isinstance(dists, list) else None, status=rec.get("status", "executed"),
        at=rec.get("at", 0.0),
    )


__all__ = ["Executed", "KeyParts", "Recorded", "read_record", "record_key", "write_records"]
