"""What the CI running us says about the change: GitHub Actions first, GitLab CI second, and for
any other CI only what `CI=true` tells (the caller passes the rest as options).

Each provider names the same few facts differently; `detect` maps them onto one `CiEnv` so the
base-revision logic never branches on the provider.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NULL_SHA = "0" * 40

# How to get more history on each CI, for messages about shallow clones.
_DEEPEN_HINT = {
    "github-actions": "set `fetch-depth: 0` on actions/checkout (or run `git fetch --deepen=100` / "
                      "`git fetch --unshallow` before ciopt)",
    "gitlab": "set `GIT_DEPTH: 0` in the job's variables (or run `git fetch --unshallow` before ciopt)",
}
_GENERIC_HINT = "clone with full history (or run `git fetch --unshallow` before ciopt)"


@dataclass(frozen=True)
class CiEnv:
    provider: str  # github-actions | gitlab | ci (CI=true, nothing more known) | local
    event: str | None = None  # push | pull_request | merge_request | workflow_dispatch | schedule ...
    target_branch: str | None = None  # the branch a pull/merge request goes into
    diff_base: str | None = None  # a merge-base the CI already computed (GitLab MRs)
    before: str | None = None  # the previous tip of the pushed branch; None for a new branch
    branch: str | None = None  # the branch being built
    default_branch: str | None = None

    @property
    def deepen_hint(self) -> str:
        return _DEEPEN_HINT.get(self.provider, _GENERIC_HINT)


def _set(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _real_sha(value: str | None) -> str | None:
    # CIs send all zeros for "no previous commit" (a new branch, a tag, a merge request pipeline).
    return value if value and value.strip("0") else None


def _github_event(env: Mapping[str, str]) -> dict[str, object]:
    path = env.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        event = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return event if isinstance(event, dict) else {}


def _github(env: Mapping[str, str]) -> CiEnv:
    name = _set(env, "GITHUB_EVENT_NAME")
    event = _github_event(env)
    before = event.get("before") if name == "push" else None
    repo = event.get("repository")
    default = repo.get("default_branch") if isinstance(repo, dict) else None
    # GITHUB_HEAD_REF is the source branch of a pull request; GITHUB_REF_NAME is then "N/merge".
    branch = _set(env, "GITHUB_HEAD_REF") or _set(env, "GITHUB_REF_NAME")
    return CiEnv("github-actions", name, target_branch=_set(env, "GITHUB_BASE_REF"),
                 before=_real_sha(before if isinstance(before, str) else None), branch=branch,
                 default_branch=default if isinstance(default, str) else None)


def _gitlab(env: Mapping[str, str]) -> CiEnv:
    source = _set(env, "CI_PIPELINE_SOURCE")
    merge_request = source == "merge_request_event" or bool(_set(env, "CI_MERGE_REQUEST_IID"))
    return CiEnv("gitlab", "merge_request" if merge_request else source,
                 target_branch=_set(env, "CI_MERGE_REQUEST_TARGET_BRANCH_NAME"),
                 diff_base=_real_sha(_set(env, "CI_MERGE_REQUEST_DIFF_BASE_SHA")),
                 before=None if merge_request else _real_sha(_set(env, "CI_COMMIT_BEFORE_SHA")),
                 branch=_set(env, "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") or _set(env, "CI_COMMIT_BRANCH")
                 or _set(env, "CI_COMMIT_REF_NAME"),
                 default_branch=_set(env, "CI_DEFAULT_BRANCH"))


def detect(env: Mapping[str, str] = os.environ) -> CiEnv:
    """The CI described by `env`; `local` outside any CI."""
    if env.get("GITHUB_ACTIONS") == "true":
        return _github(env)
    if env.get("GITLAB_CI") == "true":
        return _gitlab(env)
    if env.get("CI", "").lower() in ("1", "true", "yes"):
        return CiEnv("ci")
    return CiEnv("local")


__all__ = ["NULL_SHA", "CiEnv", "detect"]
