"""The last green commit: the newest commit whose tests all passed, as a base for selection when
the CI names none (a scheduled run, a manual dispatch, the first push of a branch).

Two places remember it. The BuildRecords beside the local store (every `ciopt test` writes one,
with its git commit and exit code) serve a developer machine or a persistent runner. Ephemeral
runners start with no records, so `ciopt ci mark-green` also writes a small ActionCache entry in
the shared cache, one per branch, under a key derived from a fixed seed and the branch name (the
way directory snapshots keep their index). With `signing_key_env` set it is signed like every
entry, so a fork cannot plant a base that hides its changes from selection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ciopt import Store, hash_bytes

if TYPE_CHECKING:
    from ciopt.cache.tiered import RemoteTier

KEY_SEED = "ciopt-last-green-v1"
RECORDS_SCANNED = 200  # invocations looked at, newest first


def key_for(store: Store, branch: str) -> str:
    return hash_bytes(f"{KEY_SEED}\n{branch}".encode(), store.digest_function).hash


def from_records(records: Path, workspace: Path) -> Iterator[str]:
    """Commits of green `ciopt test` runs of this workspace, newest first (bypassed runs count:
    everything ran and passed)."""
    from ciopt.analytics.records import recent_invocations

    try:
        rows = recent_invocations(records, RECORDS_SCANNED)
    except sqlite3.Error:
        return  # a damaged records file only costs this candidate
    for row in rows:
        if (row.get("command") == "test" and row.get("exit_code") == 0 and row.get("git_commit")
                and row.get("workspace") == str(workspace)):
            yield str(row["git_commit"])


def from_remote(remote: RemoteTier, store: Store, branch: str) -> str | None:
    raw = remote.get_entry(key_for(store, branch))
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        return None
    commit = doc.get("commit") if isinstance(doc, dict) else None
    return commit if isinstance(commit, str) else None


def remember(remote: RemoteTier, store: Store, branch: str, commit: str) -> None:
    """Writes the branch's last green commit to the shared cache (nothing when read-only)."""
    entry = json.dumps({"commit": commit, "branch": branch, "at": time.time()}).encode()
    remote.put_entry(key_for(store, branch), entry)


__all__ = ["KEY_SEED", "from_records", "from_remote", "key_for", "remember"]
