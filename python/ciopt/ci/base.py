"""The base revision a CI run's changes are measured from, for `selection.enabled`.

Order: `selection.base` when configured; under GitHub Actions the pull request's target
branch (`GITHUB_BASE_REF`, merge-base with HEAD) or, for a push, the event's `before` commit;
otherwise the merge-base of HEAD with `origin/HEAD`. When none resolves (a shallow clone, a
first push) the answer says why, and the caller runs every test: selection may only ever
drop tests it can prove unaffected.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_NULL_SHA = "0" * 40


@dataclass(frozen=True)
class BaseRevision:
    commit: str | None  # None: no usable base, run everything
    source: str  # where it came from, or why there is none


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def _commit(root: Path, rev: str) -> str | None:
    return _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


def _merge_base(root: Path, rev: str) -> str | None:
    return _git(root, "merge-base", "HEAD", rev) if _commit(root, rev) else None


def find_base(root: Path, configured: str | None, env: Mapping[str, str] = os.environ) -> BaseRevision:
    if configured:
        found = _merge_base(root, configured) if configured.startswith("origin/") else _commit(root, configured)
        return BaseRevision(found, f"selection.base = {configured}" if found else
                            f"selection.base = {configured} is not a commit here (shallow clone? fetch it)")
    if env.get("GITHUB_ACTIONS") == "true":
        ref = env.get("GITHUB_BASE_REF")
        if ref:
            for candidate in (f"origin/{ref}", ref):
                found = _merge_base(root, candidate)
                if found:
                    return BaseRevision(found, f"merge-base with {candidate} (GITHUB_BASE_REF)")
            return BaseRevision(None, f"GITHUB_BASE_REF={ref} has no merge-base here: fetch it "
                                      "(actions/checkout with fetch-depth: 0)")
        before = _push_before(env)
        if before and before != _NULL_SHA:
            found = _commit(root, before)
            return BaseRevision(found, "the push's `before` commit (github.event.before)" if found else
                                f"the push's before commit {before[:12]} is not in this clone: set fetch-depth")
    found = _merge_base(root, "origin/HEAD")
    if found:
        return BaseRevision(found, "merge-base with origin/HEAD")
    return BaseRevision(None, "no base revision: origin/HEAD is unknown here (set selection.base or pass "
                              "--affected-since REV)")


def _push_before(env: Mapping[str, str]) -> str | None:
    if env.get("GITHUB_EVENT_NAME") != "push" or not env.get("GITHUB_EVENT_PATH"):
        return None
    try:
        event = json.loads(Path(env["GITHUB_EVENT_PATH"]).read_text())
    except (OSError, ValueError):
        return None
    before = event.get("before") if isinstance(event, dict) else None
    return before if isinstance(before, str) else None


__all__ = ["BaseRevision", "find_base"]
