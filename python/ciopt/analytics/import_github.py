"""GitHub Actions workflow runs and their jobs as BuildRecords: a team's CI before ciopt.

Reads what `gh api` prints (docs/analytics.md has the exact shape):

    gh api repos/O/R/actions/runs            {"total_count": N, "workflow_runs": [RUN, ...]}
    gh api repos/O/R/actions/runs/ID/jobs    {"total_count": N, "jobs": [JOB, ...]}

and with `--paginate`, several such documents one after the other in one file. A single RUN
or JOB object (`gh api repos/O/R/actions/runs/ID`) is read too.

Each completed run is one invocation (source "github-actions", command "workflow"): started
at `run_started_at` (else `created_at`), finished at `updated_at`, exit code 0 for a
`success` (or `skipped`, `neutral`) conclusion, 130 for `cancelled`, else 1. Each job of it
is one action (mnemonic "gha_job") labelled with the job's name, run on the executor named
by `runner_name` (else its `labels`). Steps are checked but not imported: the job is the unit
a runner is paid for. A run is identified by repository, id and attempt, so importing it
again adds nothing; its jobs may come in a later import.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ciopt.analytics.exchange import FORMAT_VERSION
from ciopt.errors import UserError

__all__ = ["GithubHistory", "read_github_json"]

_ACTION_COLUMNS = ["label", "mnemonic", "status", "executor", "started_at", "finished_at", "duration_s",
                   "exit_code", "attempts", "message"]
# https://api.github.com/repos/O/R/actions/... or https://github.com/O/R/actions/...
_REPO_IN_URL = re.compile(r"(?:/repos|github\.com)/([^/]+/[^/]+)/actions/")
_OK_CONCLUSIONS = ("success", "skipped", "neutral")


class GithubHistory:
    """Runs and jobs gathered from any number of files, turned into record documents at the end
    (a job's file may come before its run's)."""

    def __init__(self, *, baseline: bool = True) -> None:
        self.baseline = baseline
        self.runs: dict[tuple[int, int], dict[str, Any]] = {}
        self.jobs: dict[tuple[int, int], dict[int, dict[str, Any]]] = {}
        self.repos: dict[int, str] = {}
        self.incomplete = 0  # runs or jobs still queued or in progress: skipped

    def add_file(self, path: Path, text: str) -> None:
        for n, doc in enumerate(_documents(path, text)):
            where = f"document {n + 1}" if n else "document"
            if not isinstance(doc, dict):
                raise UserError(f"{path}: {where}: expected a JSON object, got {type(doc).__name__}")
            if "workflow_runs" in doc:
                self._runs(path, _list(path, doc, "workflow_runs", where))
            elif "jobs" in doc:
                self._jobs(path, _list(path, doc, "jobs", where))
            elif "run_id" in doc and "steps" in doc:
                self._jobs(path, [doc])
            elif "run_started_at" in doc or "workflow_id" in doc:
                self._runs(path, [doc])
            else:
                raise UserError(f"{path}: {where}: neither a runs list ({{\"workflow_runs\": [...]}}, from "
                                f"`gh api repos/O/R/actions/runs`) nor a jobs list ({{\"jobs\": [...]}}, from "
                                f"`.../runs/ID/jobs`)")

    def _runs(self, path: Path, runs: list[Any]) -> None:
        for i, run in enumerate(runs):
            where = f"workflow_runs[{i}]"
            if not isinstance(run, dict):
                raise UserError(f"{path}: {where}: expected an object")
            run_id = _int(path, run, "id", where)
            attempt = _int(path, run, "run_attempt", where, default=1)
            if run.get("status") != "completed":
                self.incomplete += 1
                continue
            started = _time(path, run, "run_started_at", where, optional=True) or _time(path, run, "created_at", where)
            finished = _time(path, run, "updated_at", where)
            repo = _repo(run)
            if repo:
                self.repos[run_id] = repo
            conclusion = run.get("conclusion")
            self.runs[(run_id, attempt)] = {
                "started_at": started,
                "finished_at": max(started, finished),
                "duration_s": max(0.0, finished - started),
                "exit_code": 0 if conclusion in _OK_CONCLUSIONS else 130 if conclusion == "cancelled" else 1,
                "git_branch": _str(path, run, "head_branch", where),
                "git_commit": _str(path, run, "head_sha", where),
                "user": (run.get("actor") or {}).get("login") if isinstance(run.get("actor"), dict) else None,
                "patterns": [p for p in (_str(path, run, "name", where), _str(path, run, "event", where)) if p],
            }

    def _jobs(self, path: Path, jobs: list[Any]) -> None:
        for i, job in enumerate(jobs):
            where = f"jobs[{i}]"
            if not isinstance(job, dict):
                raise UserError(f"{path}: {where}: expected an object")
            job_id = _int(path, job, "id", where)
            run_id = _int(path, job, "run_id", where)
            attempt = _int(path, job, "run_attempt", where, default=1)
            name = _str(path, job, "name", where) or f"job {job_id}"
            steps = job.get("steps", [])
            if not isinstance(steps, list) or any(not isinstance(s, dict) for s in steps):
                raise UserError(f"{path}: {where}.steps: expected a list of objects")
            if job.get("status") != "completed":
                self.incomplete += 1
                continue
            conclusion = job.get("conclusion")
            started = _time(path, job, "started_at", where)
            finished = _time(path, job, "completed_at", where, optional=True) or started
            labels = job.get("labels") or []
            if not isinstance(labels, list):
                raise UserError(f"{path}: {where}.labels: expected a list of strings")
            ran = conclusion not in ("skipped", "cancelled") or finished > started
            repo = _repo(job)
            if repo:
                self.repos.setdefault(run_id, repo)
            self.jobs.setdefault((run_id, attempt), {})[job_id] = {
                "label": name,
                "status": ("executed" if conclusion in _OK_CONCLUSIONS else "failed") if ran else "skipped",
                "executor": _str(path, job, "runner_name", where) or ",".join(map(str, labels)) or None,
                "started_at": started if ran else None,
                "finished_at": max(started, finished) if ran else None,
                "duration_s": max(0.0, finished - started) if ran else None,
                "exit_code": (0 if conclusion in _OK_CONCLUSIONS else 1) if ran else None,
                "message": None if conclusion in _OK_CONCLUSIONS else conclusion,
            }

    def documents(self) -> list[dict[str, Any]]:
        """One record document per run (and per run known only from its jobs), oldest first."""
        docs = []
        for key in sorted(set(self.runs) | set(self.jobs), key=lambda k: (self._start(k), k)):
            run_id, attempt = key
            jobs = sorted(self.jobs.get(key, {}).values(), key=lambda j: (j["started_at"] or 0.0, j["label"]))
            run = self.runs.get(key) or self._run_from_jobs(jobs)
            repo = self.repos.get(run_id, "")
            invocation = {
                "uuid": f"github-actions:{repo}:{run_id}:{attempt}",
                "command": "workflow",
                "workspace": repo,
                "ci": "github-actions",
                "source": "github-actions",
                "baseline": int(self.baseline),
                **run,
            }
            rows = [[j["label"], "gha_job", j["status"], j["executor"], j["started_at"], j["finished_at"],
                     j["duration_s"], j["exit_code"], 1, j["message"]] for j in jobs]
            docs.append({"v": FORMAT_VERSION, "invocation": invocation,
                         "actions": {"columns": _ACTION_COLUMNS, "rows": rows}})
        return docs

    def _start(self, key: tuple[int, int]) -> float:
        if key in self.runs:
            return float(self.runs[key]["started_at"])
        return min((j["started_at"] or 0.0 for j in self.jobs.get(key, {}).values()), default=0.0)

    @staticmethod
    def _run_from_jobs(jobs: list[dict[str, Any]]) -> dict[str, Any]:
        starts = [j["started_at"] for j in jobs if j["started_at"] is not None]
        ends = [j["finished_at"] for j in jobs if j["finished_at"] is not None]
        start = min(starts, default=0.0)
        end = max(ends, default=start)
        return {"started_at": start, "finished_at": end, "duration_s": end - start,
                "exit_code": 1 if any(j["status"] == "failed" for j in jobs) else 0, "patterns": []}


def read_github_json(path: Path, text: str, *, baseline: bool = True) -> list[dict[str, Any]]:
    """The record documents of one file (runs with no jobs, or jobs with their run made up)."""
    history = GithubHistory(baseline=baseline)
    history.add_file(path, text)
    return history.documents()


def _documents(path: Path, text: str) -> Iterator[Any]:
    """The JSON documents of `text`, one after the other (what `gh api --paginate` prints)."""
    decoder = json.JSONDecoder()
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            return
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
        yield doc


def _list(path: Path, doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = doc[key]
    if not isinstance(value, list):
        raise UserError(f"{path}: {where}: {key} must be a list, got {type(value).__name__}")
    return value


def _int(path: Path, obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise UserError(f"{path}: {where}.{key} is missing")
        raise UserError(f"{path}: {where}.{key}: expected an integer, got {value!r}")
    return value


def _str(path: Path, obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise UserError(f"{path}: {where}.{key}: expected a string, got {value!r}")


def _time(path: Path, obj: Mapping[str, Any], key: str, where: str, optional: bool = False) -> float | None:
    raw = obj.get(key)
    if raw is None:
        if optional:
            return None
        raise UserError(f"{path}: {where}.{key} is missing")
    if not isinstance(raw, str):
        raise UserError(f"{path}: {where}.{key}: expected an ISO 8601 time such as 2024-05-01T10:00:00Z, got {raw!r}")
    try:
        moment = datetime.fromisoformat(raw)
        value = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        raise UserError(f"{path}: {where}.{key}: {raw!r} is not an ISO 8601 time such as 2024-05-01T10:00:00Z") \
            from None
    if not math.isfinite(value):
        raise UserError(f"{path}: {where}.{key}: {raw!r} is out of range")
    return value


def _repo(obj: Mapping[str, Any]) -> str:
    repository = obj.get("repository")
    if isinstance(repository, dict) and isinstance(repository.get("full_name"), str):
        return repository["full_name"]
    for key in ("url", "html_url", "run_url"):
        url = obj.get(key)
        if isinstance(url, str):
            m = _REPO_IN_URL.search(url)
            if m:
                return m.group(1)
    return ""
