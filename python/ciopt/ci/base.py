"""The base revision a CI run's changes are measured from, for `selection.enabled` and
`ciopt ci base`.

Order: `selection.base` when configured; the pull/merge request's target branch (its merge-base
with HEAD; GitLab's precomputed diff base first); a push's `before` commit; the last green commit
(when the caller supplies where to look: ci/last_green.py); the merge-base of HEAD with
`origin/HEAD`, unless that is HEAD itself (a build of the default branch, where it would select
nothing). When none resolves the answer says why, and says so plainly when the clone is shallow:
the caller then runs every test, since selection may only ever drop tests it can prove
unaffected.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ciopt.ci.provider import CiEnv, detect

# Candidates for the last green commit, newest first, as (commit, where it was recorded).
LastGreen = Callable[[], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class BaseRevision:
    commit: str | None  # None: no usable base, run everything
    source: str  # where it came from, or why there is none
    kind: str | None = None  # configured | pull_request | push | last_green | origin_head; None with no base
    shallow: bool = False  # the clone is shallow (the usual reason for no base)


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


def commit_of(root: Path, rev: str) -> str | None:
    """The full commit id `rev` names at `root`, None when it names none here."""
    return _commit(root, rev)


def current_branch(root: Path) -> str | None:
    return _git(root, "branch", "--show-current")


def _is_ancestor(root: Path, commit: str) -> bool:
    try:
        proc = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=root,
                              capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def is_shallow(root: Path) -> bool:
    return _git(root, "rev-parse", "--is-shallow-repository") == "true"


def _missing(root: Path, what: str, ci: CiEnv) -> BaseRevision:
    shallow = is_shallow(root)
    why = "the clone is shallow" if shallow else "it is not in this clone"
    return BaseRevision(None, f"{what}, but {why}: {ci.deepen_hint}", shallow=shallow)


def find_base(root: Path, configured: str | None, env: Mapping[str, str] = os.environ, *,
              target_branch: str | None = None, before: str | None = None,
              last_green: LastGreen | None = None) -> BaseRevision:
    """The base revision for selection at `root`. `target_branch` / `before` override what the
    CI environment says (for CIs ciopt does not know)."""
    ci = detect(env)
    if configured:
        found = _merge_base(root, configured) if configured.startswith("origin/") else _commit(root, configured)
        if found:
            return BaseRevision(found, f"selection.base = {configured}", "configured")
        return _missing(root, f"selection.base = {configured} is not a commit here", ci)

    if ci.diff_base and not target_branch and _commit(root, ci.diff_base):
        return BaseRevision(ci.diff_base, "the merge request's diff base (CI_MERGE_REQUEST_DIFF_BASE_SHA)",
                            "pull_request")
    target = target_branch or ci.target_branch
    if target:
        for candidate in (f"origin/{target}", target):
            found = _merge_base(root, candidate)
            if found:
                return BaseRevision(found, f"merge-base with {candidate} (the request's target branch)",
                                    "pull_request")
        return _missing(root, f"the target branch {target} needs a merge-base with HEAD", ci)

    before = before or ci.before
    if before:
        if _commit(root, before):
            return BaseRevision(before, "the push's `before` commit", "push")
        return _missing(root, f"the push's before commit {before[:12]} is the base", ci)

    if last_green is not None:
        for commit, where in last_green():
            if _commit(root, commit) and _is_ancestor(root, commit):
                return BaseRevision(commit, f"the last green commit ({where})", "last_green")

    head = _commit(root, "HEAD")
    found = _merge_base(root, "origin/HEAD")
    if found and found != head:
        return BaseRevision(found, "merge-base with origin/HEAD", "origin_head")
    shallow = is_shallow(root)
    if shallow:
        return BaseRevision(None, f"no base revision: the clone is shallow; {ci.deepen_hint}", shallow=True)
    why = ("HEAD is the tip of origin/HEAD and no green commit is recorded" if found else
           "origin/HEAD is unknown here and no green commit is recorded")
    return BaseRevision(None, f"no base revision: {why} (set selection.base or pass --affected-since REV)")


__all__ = ["BaseRevision", "LastGreen", "commit_of", "current_branch", "find_base", "is_shallow"]
