"""Directory snapshots for dependency caching: `ciopt cache save` / `ciopt cache restore`.

Like actions/cache, but content-addressed. A snapshot of some directories (a venv,
node_modules, ~/.cache/pip) is a Merkle tree of two levels: one listing blob per directory,
the sorted entries directly in it,

    [relative path, kind ("f" file | "d" directory | "l" symlink), mode, digest or link target]

and a root blob listing every directory with the digest of its listing. Files are blobs in
the store (and the remote tier), so a venv with one package bumped shares every other file,
and every other directory listing, with the previous snapshot: saving it uploads that
package's files, its directories' listings and the root; restoring over an old venv rewrites
only the files that differ.

Keys: NAME + the digests of the key files (lockfiles) + the platform (OS, CPU architecture).
An index entry per workspace lists recent snapshots (name, key, time), newest first; a
restore whose exact key misses falls back to the newest snapshot of the same NAME, or of a
`--restore-prefix` (restore-keys), and reports `partial`.

Paths are restored where they were saved, relative to the current directory when given
relatively (a venv's scripts carry absolute paths in their shebangs, so a venv restored
elsewhere would not run: restore it at the path it was saved from).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ciopt import Digest, Store, hash_bytes, hash_file
from ciopt.cache.tiered import RemoteTier
from ciopt.errors import UserError

FORMAT = "ciopt-dir-snapshot-v2"
WRITE_BATCH_BYTES = 64 * 1024 * 1024  # blobs read from the store per batch on restore
INDEX_KEY_SEED = "ciopt-dir-snapshot-index-v1"
INDEX_LIMIT = 200


class SnapshotError(UserError):
    pass


@dataclass
class SnapshotReport:
    name: str
    key: str
    result: str  # hit | partial | miss (restore); saved (save)
    matched_name: str | None = None
    files: int = 0
    bytes_total: int = 0
    files_written: int = 0
    files_removed: int = 0
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def snapshot_key(store: Store, name: str, key_files: list[Path]) -> str:
    parts = [FORMAT, name, f"{sys.platform}-{platform.machine()}"]
    for f in sorted(key_files, key=str):
        if not f.is_file():
            raise SnapshotError(f"--key-file {f}: no such file")
        parts.append(f"{f.as_posix()}={hash_file(f, store.digest_function)}")
    return hash_bytes("\n".join(parts).encode(), store.digest_function).hash


def _index_key(store: Store) -> str:
    return hash_bytes(INDEX_KEY_SEED.encode(), store.digest_function).hash


def _scan(paths: list[Path], store: Store) -> tuple[list[list[object]], list[tuple[Path, Digest]]]:
    entries: list[list[object]] = []
    files: list[Path] = []
    file_rows: list[list[object]] = []
    for root in paths:
        if not os.path.lexists(root):
            raise SnapshotError(f"{root}: no such file or directory")
        base = root.as_posix()
        entries.append([base, "d", 0o755, None])
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = Path(dirpath) / name
                st = full.lstat()
                rel = full.as_posix()
                if stat.S_ISLNK(st.st_mode):
                    entries.append([rel, "l", 0o777, os.readlink(full)])
                elif stat.S_ISDIR(st.st_mode):
                    entries.append([rel, "d", stat.S_IMODE(st.st_mode), None])
                elif stat.S_ISREG(st.st_mode):
                    row: list[object] = [rel, "f", stat.S_IMODE(st.st_mode), None]
                    entries.append(row)
                    file_rows.append(row)
                    files.append(full)
    digests = store.hash_files(files) if files else []
    for row, d in zip(file_rows, digests):
        row[3] = str(d)
    return entries, list(zip(files, digests))


def save(store: Store, remote: RemoteTier | None, name: str, paths: list[Path], key_files: list[Path]) -> SnapshotReport:
    started = time.time()
    key = snapshot_key(store, name, key_files)
    report = SnapshotReport(name, key, "saved")
    entries, files = _scan(paths, store)
    report.files = len(files)
    report.bytes_total = sum(d.size for _, d in files)
    by_dir: dict[str, list[list[object]]] = {}
    for e in entries:
        by_dir.setdefault(str(e[0]).rpartition("/")[0], []).append(e)
    listings = {d: json.dumps(rows, separators=(",", ":")).encode() for d, rows in sorted(by_dir.items())}
    listing_digests = store.put_many(list(listings.values()))
    root = json.dumps({"format": FORMAT, "name": name,
                       "dirs": [[d, str(dg)] for d, dg in zip(listings, listing_digests)]},
                      separators=(",", ":")).encode()
    missing = set(store.find_missing([d for _, d in files]))
    store.put_files([p for p, d in files if d in missing])
    root_digest = store.put(root)
    entry = json.dumps({"manifest": str(root_digest), "name": name, "saved_at": time.time()}).encode()
    store.action_put(key, entry)
    if remote is not None:
        report.bytes_uploaded = remote.upload_now(files)
        report.bytes_uploaded += remote.upload_bytes_now([*zip(listing_digests, listings.values()),
                                                          (root_digest, root)])
        remote.put_entry(key, entry)
    _add_to_index(store, remote, name, key)
    report.duration_s = round(time.time() - started, 3)
    return report


def _read_index(store: Store, remote: RemoteTier | None) -> list[dict[str, object]]:
    raw = remote.get_entry(_index_key(store)) if remote is not None else None
    raw = raw or store.action_get(_index_key(store))
    try:
        index = json.loads(raw) if raw else []
    except ValueError:
        index = []
    return [e for e in index if isinstance(e, dict)]


def _add_to_index(store: Store, remote: RemoteTier | None, name: str, key: str) -> None:
    index = [e for e in _read_index(store, remote) if e.get("key") != key]
    index.insert(0, {"name": name, "key": key, "at": time.time()})
    data = json.dumps(index[:INDEX_LIMIT]).encode()
    store.action_put(_index_key(store), data)
    if remote is not None:
        remote.put_entry(_index_key(store), data)


def _lookup(store: Store, remote: RemoteTier | None, key: str) -> dict[str, object] | None:
    raw = store.action_get(key)
    if raw is None and remote is not None:
        raw = remote.get_entry(key)
        if raw is not None:
            store.action_put(key, raw)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def restore(store: Store, remote: RemoteTier | None, name: str, paths: list[Path], key_files: list[Path],
            prefixes: list[str]) -> SnapshotReport:
    started = time.time()
    key = snapshot_key(store, name, key_files)
    report = SnapshotReport(name, key, "miss")
    entry = _lookup(store, remote, key)
    if entry is not None:
        report.result, report.matched_name = "hit", name
    else:
        for candidate in _read_index(store, remote):
            cname = str(candidate.get("name", ""))
            if cname == name or any(cname.startswith(p) for p in prefixes):
                entry = _lookup(store, remote, str(candidate.get("key")))
                if entry is not None:
                    report.result, report.matched_name = "partial", cname
                    break
    if entry is None:
        report.duration_s = round(time.time() - started, 3)
        return report
    manifest_digest = Digest.parse(str(entry["manifest"]))
    if store.find_missing([manifest_digest]) and not (remote and remote.download([manifest_digest])):
        report.result, report.notes = "miss", ["the snapshot's manifest is gone from every tier"]
        return report
    root = json.loads(store.get(manifest_digest) or b"{}")
    if root.get("format") != FORMAT:
        report.result, report.notes = "miss", [f"snapshot written by another ciopt version ({root.get('format')})"]
        return report
    wanted = {p.as_posix() for p in paths}
    dirs = [(d, Digest.parse(dg)) for d, dg in root.get("dirs", []) if _under(d, wanted) or
            any(w.rpartition("/")[0] == d for w in wanted)]
    lost = store.find_missing([dg for _, dg in dirs])
    if lost and not (remote and remote.download(lost)):
        report.result, report.notes = "miss", ["directory listings of the snapshot are gone from every tier"]
        return report
    rows = [r for blob in store.get_many([dg for _, dg in dirs]) for r in json.loads(blob or b"[]")
            if _under(str(r[0]), wanted)]
    digests = [Digest.parse(r[3]) for r in rows if r[1] == "f"]
    missing = set(store.find_missing(digests))
    if missing and (remote is None or remote.missing_remotely(list(missing))):
        report.result, report.notes = "miss", ["blobs of the snapshot are gone from every tier"]
        report.duration_s = round(time.time() - started, 3)
        return report
    before = remote.stats.bytes_down if remote is not None else 0
    _materialize(store, rows, wanted, report, missing, remote)
    if remote is not None:
        report.bytes_downloaded = remote.stats.bytes_down - before
    report.files = len(digests)
    report.bytes_total = sum(d.size for d in digests)
    report.duration_s = round(time.time() - started, 3)
    return report


def _under(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _materialize(store: Store, rows: list[list[object]], roots: set[str], report: SnapshotReport,
                 remote_only: set[Digest], remote: RemoteTier | None) -> None:
    keep = {str(r[0]) for r in rows}
    # What is on disk now and not in the snapshot goes: a restored venv must not keep a
    # package the lockfile no longer has. Only inside the restored paths.
    for root in roots:
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for n in filenames + dirnames:
                full = os.path.join(dirpath, n)
                rel = Path(full).as_posix()
                if rel not in keep:
                    if os.path.isdir(full) and not os.path.islink(full):
                        shutil.rmtree(full, ignore_errors=True)
                    else:
                        os.unlink(full)
                    report.files_removed += 1
    present = [r for r in rows if r[1] == "f" and os.path.isfile(str(r[0])) and not os.path.islink(str(r[0]))]
    current = dict(zip((str(r[0]) for r in present), store.hash_files([str(r[0]) for r in present]))) \
        if present else {}
    to_write: list[tuple[Path, Digest, int]] = []
    for rel, kind, mode, value in rows:
        path = Path(str(rel))
        if kind == "d":
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                path.unlink()
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, int(mode))  # type: ignore[arg-type]
        elif kind == "l":
            if os.path.islink(path) and os.readlink(path) == value:
                continue
            if os.path.lexists(path):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(str(value), path)
            report.files_written += 1
        else:
            digest = Digest.parse(str(value))
            if current.get(str(rel)) == digest:
                if stat.S_IMODE(path.stat().st_mode) != mode:
                    os.chmod(path, int(mode))  # type: ignore[arg-type]
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_symlink():
                path.unlink()
            to_write.append((path, digest, int(mode)))  # type: ignore[arg-type]
    _write_files(store, to_write, report, remote_only, remote)


def _write_files(store: Store, files: list[tuple[Path, Digest, int]], report: SnapshotReport,
                 remote_only: set[Digest], remote: RemoteTier | None) -> None:
    """Many files: blobs read in batches (one verified, parallel read per batch instead of one
    call per file), each file written to a temporary name and renamed. Blobs only the remote
    tier has are downloaded (verified) straight into the files, not through the local store:
    a fresh runner restores a venv once, and writing 300 MB into LMDB to read it back out
    doubled the restore."""
    start = 0
    while start < len(files):
        end, size = start, 0
        while end < len(files) and (end == start or size + files[end][1].size <= WRITE_BATCH_BYTES):
            size += files[end][1].size
            end += 1
        batch = files[start:end]
        local = [d for _, d, _ in batch if d not in remote_only]
        datas = dict(zip(local, store.get_many(local)))
        far = list(dict.fromkeys(d for _, d, _ in batch if d in remote_only))
        if far:
            got: dict[Digest, bytes] = {}
            if remote is None or not remote.download(far, keep=got):
                raise SnapshotError(f"{len(far)} blobs could not be downloaded from the remote cache mid-restore")
            datas.update(got)
        for path, digest, mode in batch:
            data = datas.get(digest)
            if data is None and digest in remote_only:  # large: the download put it in the store
                data = store.get(digest)
            if data is None:
                raise SnapshotError(f"blob {digest} of {path} vanished from the store during the restore")
            tmp = path.with_name(f".{path.name}.ciopt-restore")
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            report.files_written += 1
        start = end


__all__ = ["SnapshotError", "SnapshotReport", "restore", "save", "snapshot_key"]
