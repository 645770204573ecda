"""The figures of `ciopt analytics report` and `ciopt dashboard`, each a function over Records.

    r = Records.load(path)                         # one read of the database
    f = Filter(since=days_ago(7), branch="main")   # None anywhere: no restriction
    wall_time(r, f); time_split(r, f); cache_hit_rate(r, f); time_saved(r, f)
    critical_path_frequency(r, f); waterfall(r, f); slowest_targets(r, f); flaky_tests(r, f)
    executors(r, f, costs); selection_effect(r, f); baseline_comparison(r, f); summary(r, f, costs)

Definitions (docs/analytics.md says the same for readers of the report):

* An invocation is in a window when it *started* in it; only finished ones count. Invocations
  recorded by ciopt (here, or pulled) feed every figure but the baseline comparison, which
  sets imported CI history (JUnit, GitHub Actions) against them.
* Percentiles are nearest-rank: p95 of n values is the ceil(0.95 n)-th smallest.
* Time split of an invocation's wall time: `loading` (loading and analysis before the first
  action), `upload` (from the last action's end to the end: queued cache uploads, the
  record), and the phase between, divided among the action-seconds of `queue_wait`,
  `cache_fetch` (cache hits) and `execution` (actions that ran); when actions overlap
  (-j N) their seconds are scaled down to the phase, otherwise the rest is `other` (the
  engine's own work: hashing, staging, scheduling).
* Cache hit rate per tier: hits of the tier / lookups, lookups being actions that were cache
  hits or ran (skipped ones asked nothing), bypassed invocations left out.
* Time saved: for each cache hit and each test selection skipped, the duration of the
  latest real run of that label before the invocation (records.py derives it when the
  record is written or merged); `unknown` counts those never seen running.
* Flaky tests: a flaky run passed on a retry; a flip is a real run whose pass/fail differs
  from the previous real run of the same test with the same ActionKey (same inputs, other
  result), on any branch, decided when the run is recorded or merged (rollup.py). Flake
  rate = (flaky runs + flips) / real runs.
* Executors: busy time is the duration of the actions that ran there; utilization is busy
  time over the capacity of the invocations it served (wall time x slots: -j for the local
  executor, the most actions it ran at once for a remote one); cost is busy hours x the
  price per hour of its class (`hardware.costs`; an executor id named there is its own
  class; else "gpu" when the id says so, else "cpu"; unpriced: cpu 1, gpu 10 per hour).
"""

from __future__ import annotations

import math
import sqlite3
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ciopt.analytics.records import _read_only
from ciopt.analytics.rollup import ALL_BRANCHES, roll_up_pending

__all__ = [
    "DAY",
    "NO_BRANCH",
    "Filter",
    "Invocation",
    "Records",
    "baseline_comparison",
    "cache_hit_rate",
    "critical_path_frequency",
    "day_of",
    "days_ago",
    "executors",
    "flaky_tests",
    "percentile",
    "selection_effect",
    "slowest_targets",
    "summary",
    "time_saved",
    "time_split",
    "wall_time",
    "waterfall",
]

DAY = 86400.0
NO_BRANCH = ""  # the branch of an invocation recorded on a detached HEAD outside CI
TOP = 15
DEFAULT_COSTS: Mapping[str, float] = {"cpu": 1.0, "gpu": 10.0}  # as hardware.DEFAULT_COSTS
SPLIT_PARTS = ("loading", "queue_wait", "cache_fetch", "execution", "upload", "other")


@dataclass(frozen=True)
class Filter:
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    branch: str | None = None  # None: every branch

    def has_time(self, t: float) -> bool:
        return (self.since is None or t >= self.since) and (self.until is None or t < self.until)

    def has(self, t: float, branch: str) -> bool:
        return self.has_time(t) and (self.branch is None or branch == self.branch)


ALL = Filter()


def days_ago(days: int, now: float | None = None) -> float:
    """The start (00:00 UTC) of the day `days - 1` days before today: "the last 7 days" are
    today and the six before, whole days, so that every figure can be summed per day."""
    today = math.floor((time.time() if now is None else now) / DAY)
    return (today - (days - 1)) * DAY


def day_of(t: float) -> str:
    return datetime.fromtimestamp(math.floor(t / DAY) * DAY, UTC).date().isoformat()


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted `values`; None when empty."""
    if not values:
        return None
    return values[max(0, math.ceil(p / 100.0 * len(values)) - 1)]


@dataclass(slots=True)
class Invocation:
    id: int
    uuid: str
    command: str
    started_at: float
    day: str  # UTC date of started_at, 2024-05-01
    duration_s: float
    exit_code: int | None
    branch: str
    source: str
    baseline: bool
    bypass: bool
    jobs: int
    actions_executed: int
    actions_cached_local: int
    actions_cached_remote: int
    actions_failed: int
    tests_cached: int
    ran_tests: int
    unaffected_tests: int
    critical_path_s: float | None
    loading_s: float
    queue_wait_s: float
    cache_fetch_s: float
    execution_s: float
    upload_s: float
    saved_cache_s: float
    saved_selection_s: float
    saved_unknown: int
    split: dict[str, float] | None = None  # split_of(), computed once


_INVOCATION_SQL = """
SELECT id, uuid, command, started_at, duration_s, exit_code, COALESCE(git_branch, '') AS branch, source,
       baseline, bypass, COALESCE(jobs, 1) AS jobs, actions_executed, actions_cached_local,
       actions_cached_remote, actions_failed, tests_cached, ran_tests, unaffected_tests, critical_path_s,
       COALESCE(loading_s, 0.0), queue_wait_s, cache_fetch_s, action_time_s, COALESCE(upload_s, 0.0),
       saved_cache_s, saved_selection_s, saved_unknown
FROM invocations WHERE duration_s IS NOT NULL
"""


class _Series:
    """Per-target figures by label in time order: each element is (time, Tally); a filter is a
    bisect per label (`since` and `until` bound invocation start times).

    Two sources give the same elements: the rollup (one Tally per label and day, read from
    label_days: cheap whatever the number of actions) for filters on whole UTC days, and the
    action rows (one Tally per run) for any other window."""

    __slots__ = ("groups", "_summed")

    def __init__(self) -> None:
        self.groups: dict[str, tuple[list[float], list[tuple]]] = {}
        self._summed: dict[tuple[str, int, int], tuple] = {}

    def add_all(self, rows: Iterable[tuple[float, str, tuple]], *, in_time_order: bool = False) -> None:
        """(time, label, tally), in time order when `in_time_order` says so, else in any."""
        groups = self.groups
        for t, label, tally in rows:
            pair = groups.get(label)
            if pair is None:
                pair = groups[label] = ([], [])
            pair[0].append(t)
            pair[1].append(tally)
        if in_time_order:
            return
        for label, (ts, values) in groups.items():
            if any(a > b for a, b in zip(ts, ts[1:])):
                order = sorted(range(len(ts)), key=ts.__getitem__)
                groups[label] = ([ts[i] for i in order], [values[i] for i in order])

    def summed(self, f: Filter) -> dict[str, tuple]:
        """label -> its Tallies in `f` added up, the durations sorted. Windows that cover the same
        elements (the last 90 days of 60 days of records) are added up once."""
        out: dict[str, tuple] = {}
        cache = self._summed
        for label, (ts, values) in self.groups.items():
            i = 0 if f.since is None else bisect_left(ts, f.since)
            j = len(ts) if f.until is None else bisect_left(ts, f.until)
            if j <= i:
                continue
            hit = cache.get((label, i, j))
            if hit is None:
                cols = list(zip(*values[i:j]))
                packed = array("d")
                packed.frombytes(b"".join(cols[_DURATIONS]))
                hit = cache[(label, i, j)] = (sum(cols[_RUNS]), sorted(packed), *(sum(c) for c in cols[_CRITICAL:]))
            out[label] = hit
        return out


# A Tally: (runs, durations (packed float64s), critical, critical_s, test_runs, flaky, flips, failed),
# the columns of label_days (rollup.py).
_RUNS, _DURATIONS, _CRITICAL, _CRITICAL_S, _TEST_RUNS, _FLAKY, _FLIPS, _FAILED = range(8)



class Records:
    """What the metrics read, loaded once: every finished invocation started since `since`, and
    (on first use) the action rows the per-target figures need."""

    def __init__(self, path: Path, invocations: list[Invocation],
                 executors: dict[int, list[tuple[str, int, float, int]]], now: float,
                 since: float | None = None) -> None:
        self.path = Path(path)
        self.now = now
        self._since = since
        self.ciopt = sorted((i for i in invocations if i.source == "ciopt" and not i.baseline),
                            key=lambda i: (i.started_at, i.id))
        self.imported = [i for i in invocations if not (i.source == "ciopt" and not i.baseline)]
        self.by_id = {i.id: i for i in invocations}
        self.executors_of = executors
        self._starts = [i.started_at for i in self.ciopt]
        self._selected: dict[Filter, list[Invocation]] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._rolled = False
        self._rollup_ok = True

    @classmethod
    def load(cls, path: Path, *, since: float | None = None, now: float | None = None) -> Records:
        """Reads `path` (missing: no records). Raises sqlite3.Error for a database it cannot read."""
        now = time.time() if now is None else now
        db = _read_only(Path(path))
        if db is None:
            return cls(Path(path), [], {}, now)
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < 2:
                # Written by a ciopt before schema 2: let the writer migrate it, then read.
                db.close()
                from ciopt.analytics.records import _connect

                _connect(Path(path), create=True).close()
                db = _read_only(Path(path))
                assert db is not None
            sql = _INVOCATION_SQL + ("" if since is None else " AND (started_at >= :since OR baseline = 1)")
            days: dict[int, str] = {}
            invocations = []
            for r in db.execute(sql, {"since": since}):
                t = float(r[3])
                d = int(t // DAY)
                day = days.get(d)
                if day is None:
                    day = days[d] = day_of(t)
                invocations.append(Invocation(
                    r[0], r[1], r[2], t, day, float(r[4]), r[5], r[6], r[7], bool(r[8]), bool(r[9]), int(r[10]),
                    *r[11:18], float(r[18]) if r[18] is not None else None, *(float(x) for x in r[19:26]),
                    int(r[26])))
            executors: dict[int, list[tuple[str, int, float, int]]] = {}
            ex_sql = "SELECT e.invocation_id, e.executor, e.actions, e.busy_s, e.max_parallel FROM invocation_executors e"
            if since is not None:
                ex_sql += " JOIN invocations i ON i.id = e.invocation_id WHERE i.started_at >= :since"
            for inv, ex, n, busy, par in db.execute(ex_sql, {"since": since}):
                executors.setdefault(inv, []).append((ex, n, busy, par))
        finally:
            db.close()
        return cls(Path(path), invocations, executors, now, since)

    def select(self, f: Filter = ALL) -> list[Invocation]:
        """The ciopt invocations in `f`, oldest first."""
        hit = self._selected.get(f)
        if hit is None:
            i = 0 if f.since is None else bisect_left(self._starts, f.since)
            j = len(self._starts) if f.until is None else bisect_left(self._starts, f.until)
            hit = self.ciopt[i:j]
            if f.branch is not None:
                hit = [x for x in hit if x.branch == f.branch]
            self._selected[f] = hit
        return hit

    def branches(self) -> list[tuple[str, int]]:
        """(branch, invocations) of the ciopt invocations, most used first."""
        counts: dict[str, int] = {}
        for i in self.ciopt:
            counts[i.branch] = counts.get(i.branch, 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    # -- per-target figures, loaded on first use -------------------------------------------------

    def series(self, f: Filter) -> _Series:
        """The per-target series that answers `f` exactly: from the rollup when `f` is on whole
        days, else from the action rows."""
        on_days = all(x is None or x % DAY == 0 for x in (f.since, f.until))
        branch = ALL_BRANCHES if f.branch is None else f.branch
        key = ("days" if on_days else "rows", branch)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = self._from_rollup(branch) if on_days else self._from_rows(f.branch)
        return s

    def _db(self) -> sqlite3.Connection | None:
        if not self._rolled:
            self._rolled = True
            try:
                roll_up_pending(self.path)  # invocations a ciopt before the rollup recorded
            except sqlite3.Error:
                self._rollup_ok = False  # read-only: the action rows answer every filter
        return _read_only(self.path)

    def _from_rollup(self, branch: str) -> _Series:
        s = _Series()
        db = self._db()
        if db is None:
            return s
        if not self._rollup_ok:
            db.close()
            return self._from_rows(None if branch == ALL_BRANCHES else branch)
        try:
            first = -(2**62) if self._since is None else int(self._since // DAY)
            rows = db.execute("SELECT day, label, runs, durations, critical, critical_s, test_runs, flaky, flips, "
                              "failed FROM label_days WHERE branch = ? AND day >= ? ORDER BY day", (branch, first))
            s.add_all(((r[0] * DAY, r[1], (r[2], r[3] or b"", *r[4:])) for r in rows), in_time_order=True)
        finally:
            db.close()
        return s

    def _from_rows(self, branch: str | None) -> _Series:
        s = _Series()
        db = self._db()
        if db is None:
            return s
        try:
            where = "i.source = 'ciopt' AND i.baseline = 0 AND i.duration_s IS NOT NULL"
            args: dict[str, Any] = {"since": self._since, "branch": branch}
            if self._since is not None:
                where += " AND i.started_at >= :since"
            if branch is not None:
                where += " AND COALESCE(i.git_branch, '') = :branch"
            rows = db.execute(
                "SELECT i.started_at, a.label, a.status, a.duration_s, a.critical_path, a.test_outcome, a.flip "
                "FROM actions a JOIN invocations i ON i.id = a.invocation_id "
                f"WHERE {where} AND (a.status IN ('executed', 'failed') OR a.critical_path = 1)", args)

            def tally(status: str, d: float | None, critical: int, outcome: str | None, flip: int) -> tuple:
                ran = status in ("executed", "failed")
                timed = ran and d is not None
                test = ran and outcome is not None
                return (int(timed), array("d", [d]).tobytes() if timed else b"", int(bool(critical)),
                        (d or 0.0) if critical else 0.0, int(test), int(test and outcome == "flaky"),
                        int(test and bool(flip)), int(test and outcome in ("failed", "timeout")))

            s.add_all((r[0], r[1], tally(*r[2:])) for r in rows)
        finally:
            db.close()
        return s


# ----------------------------------------------------------------------------------------------
# Invocation-level figures.


def _daily(invs: list[Invocation]) -> dict[str, list[Invocation]]:
    # The dashboard asks several figures of the same selection: group it once.
    key = (id(invs), len(invs))
    hit = _DAILY.get(key)
    if hit is not None and hit[0] is invs:
        return hit[1]
    out: dict[str, list[Invocation]] = {}
    for i in invs:
        out.setdefault(i.day, []).append(i)
    _DAILY.clear()
    _DAILY[key] = (invs, out)
    return out


_DAILY: dict[tuple[int, int], tuple[list[Invocation], dict[str, list[Invocation]]]] = {}


def _spread(values: list[float]) -> dict[str, float | int | None]:
    values = sorted(values)
    return {"n": len(values), "p50_s": percentile(values, 50), "p90_s": percentile(values, 90),
            "mean_s": (sum(values) / len(values)) if values else None}


def wall_time(r: Records, f: Filter = ALL) -> dict[str, Any]:
    """Wall time per invocation: spread, per day, and the trend (newer half vs older half)."""
    invs = r.select(f)
    walls = sorted(i.duration_s for i in invs)
    half = len(invs) // 2
    older = _spread([i.duration_s for i in invs[:half]])
    newer = _spread([i.duration_s for i in invs[half:]])
    change = None
    if half >= 2 and older["p50_s"]:
        change = (newer["p50_s"] - older["p50_s"]) / older["p50_s"]  # type: ignore[operator]
    return {
        "invocations": len(walls),
        "total_s": sum(walls),
        "mean_s": sum(walls) / len(walls) if walls else None,
        "p50_s": percentile(walls, 50),
        "p90_s": percentile(walls, 90),
        "max_s": walls[-1] if walls else None,
        "trend": {"older_p50_s": older["p50_s"], "newer_p50_s": newer["p50_s"], "change_pct": change},
        "daily": [{"day": d, "invocations": len(v), "p50_s": s["p50_s"], "p90_s": s["p90_s"]}
                  for d, v in sorted(_daily(invs).items()) for s in (_spread([i.duration_s for i in v]),)],
    }


def split_of(i: Invocation) -> dict[str, float]:
    """The wall time of one invocation by part (see the module docstring)."""
    if i.split is None:
        i.split = _split(i)
    return i.split


def _split(i: Invocation) -> dict[str, float]:
    wall = i.duration_s
    loading = min(i.loading_s, wall)
    upload = min(i.upload_s, wall - loading)
    phase = wall - loading - upload
    busy = i.queue_wait_s + i.cache_fetch_s + i.execution_s
    scale = phase / busy if busy > phase and busy > 0 else 1.0
    parts = {"loading": loading, "queue_wait": i.queue_wait_s * scale, "cache_fetch": i.cache_fetch_s * scale,
             "execution": i.execution_s * scale, "upload": upload}
    parts["other"] = max(0.0, phase - busy * scale)
    return parts


def time_split(r: Records, f: Filter = ALL) -> dict[str, Any]:
    """Where the wall time went, summed over the invocations in `f`, and per day."""
    invs = r.select(f)
    totals = dict.fromkeys(SPLIT_PARTS, 0.0)
    daily: dict[str, dict[str, float]] = {}
    for i in invs:
        day = daily.setdefault(i.day, dict.fromkeys(SPLIT_PARTS, 0.0))
        for k, v in split_of(i).items():
            totals[k] += v
            day[k] += v
    wall = sum(totals.values())
    return {"total_s": wall, "parts": totals,
            "share": {k: (v / wall if wall else None) for k, v in totals.items()},
            "daily": [{"day": d, **v} for d, v in sorted(daily.items())]}


def _rates(invs: Iterable[Invocation]) -> dict[str, Any]:
    local = remote = miss = 0
    for i in invs:
        if i.bypass:
            continue
        local += i.actions_cached_local
        remote += i.actions_cached_remote
        miss += i.actions_executed + i.actions_failed
    lookups = local + remote + miss
    return {"lookups": lookups, "local": local, "remote": remote, "miss": miss,
            "local_rate": local / lookups if lookups else None,
            "remote_rate": remote / lookups if lookups else None,
            "hit_rate": (local + remote) / lookups if lookups else None}


def cache_hit_rate(r: Records, f: Filter = ALL) -> dict[str, Any]:
    """Hits per tier (local store, shared cache) over lookups, in all and per day."""
    invs = r.select(f)
    return {**_rates(invs), "daily": [{"day": d, **_rates(v)} for d, v in sorted(_daily(invs).items())]}


def time_saved(r: Records, f: Filter = ALL) -> dict[str, Any]:
    """Seconds the cache and selection saved: the last real runs of what did not run."""
    invs = r.select(f)
    cache = sum(i.saved_cache_s for i in invs)
    selection = sum(i.saved_selection_s for i in invs)
    wall = sum(i.duration_s for i in invs)
    return {"cache_s": cache, "selection_s": selection, "total_s": cache + selection,
            "unknown": sum(i.saved_unknown for i in invs), "wall_s": wall,
            # Of the time the invocations would have taken without ciopt, the part saved.
            "saved_share": (cache + selection) / (cache + selection + wall) if cache + selection + wall else None,
            "daily": [{"day": d, "cache_s": sum(i.saved_cache_s for i in v),
                       "selection_s": sum(i.saved_selection_s for i in v)}
                      for d, v in sorted(_daily(invs).items())]}


def selection_effect(r: Records, f: Filter = ALL) -> dict[str, Any]:
    """Tests that ran, came from the cache, or were skipped as unaffected."""
    invs = r.select(f)
    ran = sum(i.ran_tests for i in invs)
    cached = sum(i.tests_cached for i in invs)
    skipped = sum(i.unaffected_tests for i in invs)
    total = ran + cached + skipped
    return {"invocations": len(invs), "with_selection": sum(1 for i in invs if i.unaffected_tests),
            "tests_run": ran, "tests_cached": cached, "tests_skipped": skipped,
            "skipped_share": skipped / total if total else None,
            "saved_s": sum(i.saved_selection_s for i in invs),
            "daily": [{"day": d, "run": sum(i.ran_tests for i in v), "cached": sum(i.tests_cached for i in v),
                       "skipped": sum(i.unaffected_tests for i in v)} for d, v in sorted(_daily(invs).items())]}


def executors(r: Records, f: Filter = ALL, costs: Mapping[str, float] | None = None,
              classes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Busy time, utilization and cost per executor, and CPU vs GPU."""
    costs = dict(costs or {})
    rows: dict[str, dict[str, Any]] = {}
    served: dict[str, list[tuple[float, int, int]]] = {}  # executor -> (wall, jobs, max_parallel) per invocation
    for i in r.select(f):
        for ex, n, busy, par in r.executors_of.get(i.id, ()):
            row = rows.setdefault(ex, {"id": ex, "actions": 0, "busy_s": 0.0, "invocations": 0})
            row["actions"] += n
            row["busy_s"] += busy
            row["invocations"] += 1
            served.setdefault(ex, []).append((i.duration_s, i.jobs, par))
    kinds = {"cpu": {"busy_s": 0.0, "cost": 0.0, "executors": 0}, "gpu": {"busy_s": 0.0, "cost": 0.0, "executors": 0}}
    for ex, row in rows.items():
        klass = _class_of(ex, costs, classes)
        gpu = klass.lower().startswith("gpu")
        price = costs.get(klass, DEFAULT_COSTS["gpu" if gpu else "cpu"])
        local = ex == "local" or ex.startswith("local:")
        slots = max(p for _, _, p in served[ex])
        capacity = sum(wall * (jobs if local else slots) for wall, jobs, _ in served[ex])
        row.update({"class": klass, "gpu": gpu, "cost_per_hour": price, "cost": row["busy_s"] / 3600.0 * price,
                    "capacity_s": capacity, "utilization": row["busy_s"] / capacity if capacity else None})
        kind = kinds["gpu" if gpu else "cpu"]
        kind["busy_s"] += row["busy_s"]
        kind["cost"] += row["cost"]
        kind["executors"] += 1
    listed = sorted(rows.values(), key=lambda x: (-x["busy_s"], x["id"]))
    return {"executors": listed, "by_kind": kinds, "total_cost": sum(x["cost"] for x in listed),
            "busy_s": sum(x["busy_s"] for x in listed)}


def _class_of(executor: str, costs: Mapping[str, float], classes: Mapping[str, str] | None) -> str:
    if classes and executor in classes:
        return classes[executor]
    if executor in costs:
        return executor
    return "gpu" if "gpu" in executor.lower() else "cpu"


def baseline_comparison(r: Records, f: Filter = ALL) -> list[dict[str, Any]]:
    """Imported pre-ciopt history against what came after, per kind of history.

    The baseline is the imported invocations marked baseline (only `f`'s branch applies to
    them: history is older than the window by nature). They are compared, like with like,
    with the same kind imported as not baseline (CI runs after adopting ciopt) when there are
    any in `f`, else with ciopt's own invocations in `f` (JUnit: `ciopt test` only), which
    time the build/test command and not the whole CI job: `like_for_like` says which."""
    out = []
    kinds = sorted({i.source for i in r.imported if i.baseline})
    for kind in kinds:
        base = [i for i in r.imported if i.baseline and i.source == kind
                and (f.branch is None or i.branch == f.branch)]
        after = [i for i in r.imported if not i.baseline and i.source == kind and f.has(i.started_at, i.branch)]
        like = bool(after)
        if not like:
            after = [i for i in r.select(f) if kind != "junit" or i.command == "test"]
        b = _spread([i.duration_s for i in base])
        a = _spread([i.duration_s for i in after])
        def change(key: str) -> float | None:
            return (a[key] - b[key]) / b[key] if a[key] is not None and b[key] else None  # type: ignore[operator]
        out.append({"kind": kind, "baseline": b, "current": a, "like_for_like": like,
                    "current_source": kind if like else "ciopt",
                    "p50_change_pct": change("p50_s"), "p90_change_pct": change("p90_s"),
                    "mean_change_pct": change("mean_s")})
    return out


# ----------------------------------------------------------------------------------------------
# Per-target figures.


def slowest_targets(r: Records, f: Filter = ALL, limit: int = TOP) -> list[dict[str, Any]]:
    """The targets whose real runs take longest, by p95 then p50."""
    rows = []
    for label, t in r.series(f).summed(f).items():
        durations = t[_DURATIONS]
        if durations:
            rows.append({"label": label, "runs": len(durations), "p50_s": percentile(durations, 50),
                         "p95_s": percentile(durations, 95), "max_s": durations[-1], "total_s": sum(durations)})
    rows.sort(key=lambda x: (-x["p95_s"], -x["p50_s"], x["label"]))
    return rows[:limit]


def critical_path_frequency(r: Records, f: Filter = ALL, limit: int = TOP) -> dict[str, Any]:
    """The targets most often on an invocation's critical path."""
    n = len(r.select(f))
    rows = [{"label": label, "invocations": t[_CRITICAL], "share": t[_CRITICAL] / n if n else None,
             "total_s": t[_CRITICAL_S], "mean_s": t[_CRITICAL_S] / t[_CRITICAL]}
            for label, t in r.series(f).summed(f).items() if t[_CRITICAL]]
    rows.sort(key=lambda x: (-x["invocations"], -x["total_s"], x["label"]))
    return {"invocations": n, "targets": rows[:limit]}


def flaky_tests(r: Records, f: Filter = ALL, limit: int = TOP) -> dict[str, Any]:
    """Tests with flaky runs or pass/fail flips on the same key, by flake rate."""
    tests = runs = flaky = flips = 0
    rows = []
    for label, t in r.series(f).summed(f).items():
        n = t[_TEST_RUNS]
        if not n:
            continue
        fl, fp = t[_FLAKY], t[_FLIPS]
        tests += 1
        runs += n
        flaky += fl
        flips += fp
        if fl or fp:
            rows.append({"label": label, "runs": n, "flaky": fl, "flips": fp, "failed": t[_FAILED],
                         "flake_rate": (fl + fp) / n})
    rows.sort(key=lambda x: (-x["flake_rate"], -x["runs"], x["label"]))
    return {"tests": tests, "runs": runs, "flaky_tests": len(rows), "flaky_runs": flaky, "flips": flips,
            "flake_rate": (flaky + flips) / runs if runs else None, "top": rows[:limit]}


def waterfall(r: Records, f: Filter = ALL, invocation_id: int | None = None) -> dict[str, Any] | None:
    """The critical path of one invocation (default: the latest in `f`), as bars from its start:
    loading first, then each action on the path. None when there is no such invocation."""
    if invocation_id is None:
        invs = r.select(f)
        if not invs:
            return None
        inv = invs[-1]
    else:
        inv = r.by_id.get(invocation_id)  # type: ignore[assignment]
        if inv is None:
            return None
    db = _read_only(r.path)
    steps: list[dict[str, Any]] = []
    if inv.loading_s:
        steps.append({"label": "(loading and analysis)", "status": "loading", "mnemonic": None,
                      "start_s": 0.0, "duration_s": inv.loading_s})
    if db is not None:
        try:
            for label, status, mnemonic, started, duration in db.execute(
                    "SELECT label, status, mnemonic, started_at, duration_s FROM actions "
                    "WHERE invocation_id = ? AND critical_path = 1 ORDER BY started_at, id", (inv.id,)):
                start = (started - inv.started_at) if started is not None else None
                steps.append({"label": label, "status": status, "mnemonic": mnemonic,
                              "start_s": start, "duration_s": duration or 0.0})
        except sqlite3.Error:
            pass
        finally:
            db.close()
    return {"invocation": {"id": inv.id, "uuid": inv.uuid, "command": inv.command, "branch": inv.branch,
                           "started_at": inv.started_at, "day": inv.day,
                           "duration_s": inv.duration_s, "critical_path_s": inv.critical_path_s,
                           "exit_code": inv.exit_code},
            "steps": steps}


def summary(r: Records, f: Filter = ALL, costs: Mapping[str, float] | None = None,
            limit: int = TOP) -> dict[str, Any]:
    """Every figure for `f`: what the report prints and each dashboard view shows."""
    return {
        "filter": {"since": f.since, "until": f.until, "branch": f.branch},
        "wall_time": wall_time(r, f),
        "time_split": time_split(r, f),
        "cache": cache_hit_rate(r, f),
        "time_saved": time_saved(r, f),
        "selection": selection_effect(r, f),
        "critical_path": critical_path_frequency(r, f, limit),
        "slowest_targets": slowest_targets(r, f, limit),
        "flaky_tests": flaky_tests(r, f, limit),
        "executors": executors(r, f, costs),
        "baseline": baseline_comparison(r, f),
    }
