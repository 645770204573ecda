"""Batched pytest: many test files per process, results per file.

One pytest start-up (interpreter, plugins, conftest imports) costs 0.3-1 s; paid per test file
it made `ciopt test` 3x slower than plain `pytest` on a real repository. Files that must run
are therefore packed into a few processes, one per free `-j` slot, balanced by each file's last
recorded duration (longest first, the LPT rule), at most `max_files` per process. The plugin
(pytest_plugin.py) reports every file separately, and each file's result is cached under its
own ActionKey, so caching stays per file while start-up is paid per batch.

Files of one batch share a sandbox holding the union of their inputs (as Pants batches do):
a test could see a file only a neighbour declared. Tests tagged `exclusive` and `--no-batch`
run alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ciopt.graph.action_graph import PYTEST_ARGV, Action, pytest_extra_args, pytest_files

EXCLUSIVE_TAG = "exclusive"
DEFAULT_DURATION_S = 1.0  # a file never run before: assume an average file

T = TypeVar("T")


def batchable(action: Action) -> bool:
    return action.mnemonic == "PyTest" and EXCLUSIVE_TAG not in action.tags


def batch_key(action: Action) -> tuple[object, ...]:
    """Actions with equal keys may share a pytest process: same env, extra arguments, platform."""
    return (action.argv[:len(PYTEST_ARGV)], pytest_extra_args(action), action.env, action.requires)


def plan_batches(items: Sequence[T], action_of: Callable[[T], Action], slots: int, max_files: int,
                 durations: Mapping[str, float], sizes: Mapping[str, int] | None = None) -> list[list[T]]:
    """Split `items` into batches: compatible actions only, at least one batch per free slot
    (when there are enough files), none over `max_files` files; longest-first onto the batch
    with the least expected time.

    Expected time: the file's last recorded duration; for a file never recorded, the median of
    the recorded ones, or, when nothing is recorded (a cold CI runner), the test files' size in
    bytes, which tracks the number of tests well enough to balance by."""
    groups: dict[tuple[object, ...], list[T]] = {}
    for it in items:
        groups.setdefault(batch_key(action_of(it)), []).append(it)
    known = [durations[str(action_of(it).label)] for it in items if durations.get(str(action_of(it).label), 0) > 0]
    default = sorted(known)[len(known) // 2] if known else DEFAULT_DURATION_S

    def cost(it: T) -> float:
        action = action_of(it)
        if str(action.label) in durations:
            return durations[str(action.label)]
        if not known and sizes:
            return float(sum(sizes.get(f, 0) for f in pytest_files(action))) or DEFAULT_DURATION_S
        return default

    batches: list[list[T]] = []
    for members in groups.values():
        n_files = sum(max(1, len(pytest_files(action_of(m)))) for m in members)
        k = max(1, min(len(members), max(slots, math.ceil(n_files / max(1, max_files)))))
        bins: list[tuple[float, int, list[T]]] = [(0.0, 0, []) for _ in range(k)]
        for it in sorted(members, key=cost, reverse=True):
            n = max(1, len(pytest_files(action_of(it))))
            # The least loaded bin with room; a bin over the cap only when every bin is full.
            order = sorted(range(k), key=lambda i: (bins[i][1] + n > max_files, bins[i][0]))
            i = order[0]
            total, count, members_i = bins[i]
            members_i.append(it)
            bins[i] = (total + cost(it), count + n, members_i)
        # Within a process, files run in path order, as plain `pytest` collects them: suites with
        # order-dependent files (one relies on a module another imported) behave as they do there.
        batches.extend(sorted(b, key=lambda it: pytest_files(action_of(it))) for _, _, b in bins if b)
    return batches


@dataclass
class FileResults:
    """What the plugin reported for the files of one action, merged."""

    outcome: str  # passed | failed | missing (a file was never reported: the process died first)
    cases: list[dict[str, object]] = field(default_factory=list)
    log: str = ""
    duration_s: float = 0.0
    started_at: float | None = None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def merge_reports(files: Sequence[str], reports: Mapping[str, Mapping[str, object]]) -> FileResults:
    res = FileResults(outcome="passed")
    for f in files:
        r = reports.get(f)
        if r is None:
            res.missing.append(f)
            continue
        res.cases.extend(r.get("cases", []))  # type: ignore[arg-type]
        res.log += str(r.get("log", ""))
        res.duration_s += float(r.get("duration_s", 0.0))  # type: ignore[arg-type]
        res.wall_s += float(r.get("wall_s", 0.0))  # type: ignore[arg-type]
        started = r.get("started_at")
        if isinstance(started, (int, float)) and started > 0:
            res.started_at = started if res.started_at is None else min(res.started_at, started)
        if r.get("outcome") == "failed":
            res.outcome = "failed"
        elif r.get("outcome") == "no_tests":
            # pytest's exit code 5 for a file alone: nothing to fail, so a pass, with a note.
            res.notes.append(f"{f}: no tests collected")
    if res.missing:
        res.outcome = "missing"  # run again alone: never report a file that did not run
    return res


__all__ = ["EXCLUSIVE_TAG", "FileResults", "batch_key", "batchable", "merge_reports", "plan_batches"]
