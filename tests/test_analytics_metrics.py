"""metrics.py: each figure over hand-made records whose answers are known, and over the records
of real `ciopt` runs (tests/fixtures/analytics/team_history.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ciopt.analytics import exchange, metrics
from ciopt.analytics.metrics import DAY, Filter, Records, percentile
from fixtures.analytics.team_history import History, shared_history

T0 = 1_700_000_000.0 - (1_700_000_000.0 % DAY)  # a UTC midnight
COLUMNS = ["label", "mnemonic", "key", "status", "executor", "started_at", "finished_at", "duration_s",
           "test_outcome", "critical_path", "unaffected"]


@pytest.fixture(scope="session")
def team(tmp_path_factory: pytest.TempPathFactory) -> History:
    """Records of real ciopt runs and imported history (tests/fixtures/analytics/team_history.py)."""
    return shared_history(tmp_path_factory)


def inv(uuid: str, start: float, duration: float, actions: list[list[Any]] = (), **extra: Any) -> dict:
    """A record document; actions as [label, status, duration, extra...] relative to `start`."""
    rows = []
    t = start + extra.get("loading_s", 0.0)
    for a in actions:
        label, status, dur, *more = a
        opts = dict(more[0]) if more else {}
        ran = status != "skipped"
        rows.append([label, opts.get("mnemonic", "Genrule"), opts.get("key"), status,
                     opts.get("executor", "local" if status in ("executed", "failed") else None),
                     t if ran else None, t + dur if ran else None, dur if ran else None,
                     opts.get("outcome"), int(opts.get("critical", False)), int(opts.get("unaffected", False))])
        t += dur
    return {"v": 1, "invocation": {"uuid": uuid, "command": extra.pop("command", "test"), "started_at": start,
                                   "finished_at": start + duration, "duration_s": duration, "exit_code": 0,
                                   "git_branch": extra.pop("branch", "main"), "jobs": extra.pop("jobs", 1), **extra},
            "actions": {"columns": COLUMNS, "rows": rows}}


def load(tmp_path: Path, docs: list[dict], now: float = T0 + 10 * DAY) -> Records:
    path = tmp_path / "records.sqlite"
    exchange.merge(path, docs, origin=None)
    return Records.load(path, now=now)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(x) for x in range(1, 21)]
    assert percentile(values, 50) == 10.0 and percentile(values, 95) == 19.0 and percentile(values, 100) == 20.0
    assert percentile([7.0], 95) == 7.0 and percentile([], 50) is None


def test_days_ago_starts_at_midnight_utc() -> None:
    now = T0 + 5 * DAY + 3600
    assert metrics.days_ago(1, now) == T0 + 5 * DAY
    assert metrics.days_ago(7, now) == T0 - DAY
    assert metrics.day_of(T0 + 5 * DAY + 3600) == metrics.day_of(T0 + 5 * DAY)


def test_wall_time_spread_trend_and_filters(tmp_path: Path) -> None:
    docs = [inv(f"m{i}", T0 + i * DAY / 2, 10.0 + i) for i in range(8)]  # 10..17 s, two a day
    docs.append(inv("f", T0 + 3 * DAY, 100.0, branch="feature"))
    docs.append(inv("unfinished", T0 + 3 * DAY, 1.0) | {"invocation": {"uuid": "u", "command": "test",
                                                                         "started_at": T0 + 3 * DAY}})
    r = load(tmp_path, docs)
    main = metrics.wall_time(r, Filter(branch="main"))
    assert main["invocations"] == 8 and main["p50_s"] == 13.0 and main["p90_s"] == 17.0
    assert main["mean_s"] == pytest.approx(13.5)
    assert [d["invocations"] for d in main["daily"]] == [2, 2, 2, 2]
    assert main["trend"]["older_p50_s"] == 11.0 and main["trend"]["newer_p50_s"] == 15.0
    assert main["trend"]["change_pct"] == pytest.approx(4 / 11)
    every = metrics.wall_time(r)
    assert every["invocations"] == 9 and every["max_s"] == 100.0  # the unfinished one does not count
    late = metrics.wall_time(r, Filter(since=T0 + 2 * DAY))
    assert late["invocations"] == 5 and late["p50_s"] == 16.0  # 14, 15, 16, 17 and the feature branch's 100
    window = metrics.wall_time(r, Filter(since=T0 + DAY, until=T0 + 2 * DAY))
    assert window["invocations"] == 2 and window["p50_s"] == 12.0


def test_time_split_divides_the_phase_between_loading_and_the_tail(tmp_path: Path) -> None:
    # 20 s: loading 2 s, then 4 s + 6 s of actions one after the other, then 8 s of tail.
    slow = inv("a", T0, 20.0, [["//a:1", "executed", 4.0], ["//a:2", "cached_local", 6.0]], loading_s=2.0)
    # 10 s with -j: 30 action-seconds in an 8-second phase are scaled down to it.
    busy = inv("b", T0 + 100, 10.0, [["//b:1", "executed", 10.0], ["//b:2", "executed", 20.0]], loading_s=1.0)
    r = load(tmp_path, [slow, busy])
    a, b = (metrics.split_of(i) for i in r.select())
    assert a == pytest.approx({"loading": 2.0, "queue_wait": 0.0, "cache_fetch": 6.0, "execution": 4.0,
                               "upload": 8.0, "other": 0.0})
    assert b["loading"] == 1.0 and b["other"] == 0.0 and sum(b.values()) == pytest.approx(10.0)
    assert b["execution"] == pytest.approx(10.0 - 1.0 - b["upload"])
    split = metrics.time_split(r)
    assert split["total_s"] == pytest.approx(30.0)
    assert sum(split["share"].values()) == pytest.approx(1.0)


def test_cache_hit_rate_per_tier_leaves_bypassed_invocations_out(tmp_path: Path) -> None:
    r = load(tmp_path, [
        inv("a", T0, 5.0, [["//a:1", "cached_local", 0.1], ["//a:2", "cached_local", 0.1],
                           ["//a:3", "cached_remote", 0.1], ["//a:4", "executed", 1.0], ["//a:5", "skipped", 0]]),
        inv("b", T0 + DAY, 5.0, [["//a:1", "executed", 1.0], ["//a:2", "failed", 1.0]]),
        inv("c", T0 + DAY, 5.0, [["//a:1", "executed", 1.0]], bypass=1),
    ])
    c = metrics.cache_hit_rate(r)
    assert (c["lookups"], c["local"], c["remote"], c["miss"]) == (6, 2, 1, 3)
    assert (c["local_rate"], c["remote_rate"], c["hit_rate"]) == (2 / 6, 1 / 6, 3 / 6)
    assert [(d["day"], d["hit_rate"]) for d in c["daily"]] == [(metrics.day_of(T0), 0.75),
                                                              (metrics.day_of(T0 + DAY), 0.0)]


def test_time_saved_is_the_last_real_run_of_what_did_not_run(tmp_path: Path) -> None:
    r = load(tmp_path, [
        inv("1", T0, 30.0, [["//a:gen", "executed", 5.0], ["//t:x", "executed", 7.0, {"outcome": "passed"}],
                            ["//t:y", "executed", 2.0, {"outcome": "passed"}]]),
        inv("2", T0 + 100, 30.0, [["//a:gen", "executed", 6.0]]),
        inv("3", T0 + 200, 3.0, [["//a:gen", "cached_remote", 0.2],
                                 ["//t:x", "skipped", 0, {"unaffected": True}],
                                 ["//t:y", "cached_local", 0.1, {"outcome": "passed"}],
                                 ["//t:z", "skipped", 0, {"unaffected": True}]]),
    ])
    s = metrics.time_saved(r)
    assert s["cache_s"] == pytest.approx(6.0 + 2.0)  # the latest real run of //a:gen took 6 s
    assert s["selection_s"] == pytest.approx(7.0) and s["unknown"] == 1  # //t:z never ran
    assert s["saved_share"] == pytest.approx(15.0 / (15.0 + 63.0))
    sel = metrics.selection_effect(r)
    assert (sel["tests_run"], sel["tests_cached"], sel["tests_skipped"]) == (2, 1, 2)
    assert sel["skipped_share"] == pytest.approx(2 / 5) and sel["with_selection"] == 1


def test_slowest_targets_by_p95_with_p50(tmp_path: Path) -> None:
    docs = [inv(f"i{n}", T0 + n * 60, 100.0, [["//a:slow", "executed", float(n + 1)],
                                               ["//a:steady", "executed", 5.0],
                                               ["//a:hit", "cached_local", 99.0]],
                branch="main" if n % 2 else "dev") for n in range(20)]
    r = load(tmp_path, docs)
    top = metrics.slowest_targets(r)
    assert [t["label"] for t in top] == ["//a:slow", "//a:steady"]  # cache hits are not runs
    assert (top[0]["runs"], top[0]["p50_s"], top[0]["p95_s"], top[0]["max_s"]) == (20, 10.0, 19.0, 20.0)
    assert top[1]["p50_s"] == top[1]["p95_s"] == 5.0
    dev = metrics.slowest_targets(r, Filter(branch="dev"))[0]  # runs 1, 3, ..., 19 s
    assert (dev["runs"], dev["p50_s"], dev["p95_s"]) == (10, 9.0, 19.0)
    late = metrics.slowest_targets(r, Filter(since=T0 + 10 * 60 + 1))[0]  # runs 12..20 s
    assert (late["runs"], late["p50_s"]) == (9, 16.0)


def test_flaky_tests_flaky_runs_and_flips_on_the_same_key(tmp_path: Path) -> None:
    def t(outcome: str, key: str) -> list:
        return ["//t:x", "failed" if outcome == "failed" else "executed", 1.0,
                {"outcome": outcome, "key": key, "mnemonic": "PyTest"}]

    r = load(tmp_path, [
        inv("1", T0, 5, [t("failed", "k1"), ["//t:ok", "executed", 1.0, {"outcome": "passed", "key": "o"}]]),
        inv("2", T0 + 10, 5, [t("passed", "k1")]),   # same inputs, other result: a flip
        inv("3", T0 + 20, 5, [t("failed", "k2")]),   # new inputs, failing: no flip
        inv("4", T0 + 30, 5, [t("flaky", "k2")]),    # passed on a retry (counts as a pass): flaky and a flip
        inv("5", T0 + 40, 5, [t("passed", "k2")]),
    ])
    f = metrics.flaky_tests(r)
    assert (f["tests"], f["runs"], f["flaky_tests"], f["flaky_runs"], f["flips"]) == (2, 6, 1, 1, 2)
    [x] = f["top"]
    assert (x["label"], x["runs"], x["flaky"], x["flips"], x["failed"]) == ("//t:x", 5, 1, 2, 2)
    assert x["flake_rate"] == pytest.approx(3 / 5) and f["flake_rate"] == pytest.approx(3 / 6)
    # A window starting after the first failure still sees the flip against it.
    assert metrics.flaky_tests(r, Filter(since=T0 + 5))["flips"] == 2


def test_executors_busy_time_utilization_and_cost(tmp_path: Path) -> None:
    r = load(tmp_path, [
        inv("1", T0, 3600.0, [["//a:1", "executed", 1800.0, {"executor": "local:host"}],
                              ["//a:2", "executed", 3600.0, {"executor": "gpu-a100-1"}],
                              ["//a:3", "executed", 1800.0, {"executor": "big-box"}]], jobs=2),
    ])
    ex = metrics.executors(r, costs={"gpu": 4.0, "big-box": 0.5})
    by = {e["id"]: e for e in ex["executors"]}
    assert by["local:host"]["utilization"] == pytest.approx(1800 / (3600 * 2))  # -j 2
    assert (by["gpu-a100-1"]["class"], by["gpu-a100-1"]["gpu"], by["gpu-a100-1"]["cost"]) == ("gpu", True, 4.0)
    assert (by["big-box"]["class"], by["big-box"]["cost"]) == ("big-box", 0.25)
    assert by["local:host"]["cost"] == pytest.approx(0.5)  # unpriced cpu: 1 per hour
    assert ex["by_kind"]["gpu"]["cost"] == 4.0 and ex["by_kind"]["cpu"]["cost"] == pytest.approx(0.75)
    assert ex["total_cost"] == pytest.approx(4.75) and [e["id"] for e in ex["executors"]][0] == "gpu-a100-1"


def test_critical_path_frequency_and_waterfall(tmp_path: Path) -> None:
    r = load(tmp_path, [
        inv("1", T0, 10, [["//a:gen", "executed", 3.0, {"critical": True}], ["//a:t", "executed", 4.0,
                                                                             {"critical": True}]], loading_s=1.0),
        inv("2", T0 + 60, 10, [["//a:gen", "executed", 2.0, {"critical": True}], ["//a:t", "cached_local", 0.1]],
            loading_s=0.5),
    ])
    cp = metrics.critical_path_frequency(r)
    assert cp["invocations"] == 2
    assert [(t["label"], t["invocations"], t["share"]) for t in cp["targets"]] == [("//a:gen", 2, 1.0),
                                                                                 ("//a:t", 1, 0.5)]
    w = metrics.waterfall(r)  # the latest
    assert w is not None and w["invocation"]["uuid"] == "2"
    assert [(s["label"], s["start_s"], s["duration_s"]) for s in w["steps"]] == [
        ("(loading and analysis)", 0.0, 0.5), ("//a:gen", pytest.approx(0.5), pytest.approx(2.0))]
    first = r.select()[0].id
    assert [s["label"] for s in metrics.waterfall(r, invocation_id=first)["steps"]][1:] == ["//a:gen", "//a:t"]
    assert metrics.waterfall(r, invocation_id=999) is None


def test_baseline_comparison_like_for_like_first(tmp_path: Path) -> None:
    def gha(uuid: str, start: float, minutes: float, baseline: bool) -> dict:
        d = inv(uuid, start, minutes * 60, command="workflow")
        d["invocation"].update(source="github-actions", baseline=int(baseline))
        return d

    docs = [gha(f"b{i}", T0 - 100 * DAY + i, m, True) for i, m in enumerate([10, 12, 14, 20])]
    docs += [inv(f"c{i}", T0 + i, 60.0) for i in range(3)]
    r = load(tmp_path, docs)
    [b] = metrics.baseline_comparison(r)
    assert (b["kind"], b["like_for_like"], b["current_source"]) == ("github-actions", False, "ciopt")
    assert b["baseline"]["n"] == 4 and b["baseline"]["p50_s"] == 720.0 and b["current"]["p50_s"] == 60.0
    assert b["p50_change_pct"] == pytest.approx(60 / 720 - 1)
    r = load(tmp_path / "2", docs + [gha(f"a{i}", T0 + i, m, False) for i, m in enumerate([5, 6, 9])])
    [b] = metrics.baseline_comparison(r)
    assert b["like_for_like"] and b["current"]["n"] == 3 and b["current"]["p50_s"] == 360.0
    assert b["p50_change_pct"] == pytest.approx(-0.5) and b["p90_change_pct"] == pytest.approx(540 / 1200 - 1)
    assert len(r.ciopt) == 3  # imported runs never count as ciopt invocations


def test_every_figure_over_real_ciopt_runs(team: Any) -> None:
    """The records of tests/fixtures/analytics/team_history.py: four real runs and imported history."""
    r = Records.load(team.records)
    s = metrics.summary(r)
    assert s["wall_time"]["invocations"] == 4
    assert {b for b, _ in r.branches()} == {"main", "feature/calc"}
    assert s["selection"]["tests_skipped"] == 3 and s["time_saved"]["selection_s"] > 0
    assert s["time_saved"]["cache_s"] > 0 and s["cache"]["local"] > 0
    flaky = {t["label"]: t for t in s["flaky_tests"]["top"]}
    assert flaky["//tests:test_flip"]["flips"] == 1 and flaky["//tests:test_retry"]["flaky"] == 1
    assert {t["label"] for t in s["slowest_targets"]} >= {"//lib:gen_a", "//lib:gen_b", "//tests:test_calc"}
    assert s["critical_path"]["targets"] and s["executors"]["executors"][0]["busy_s"] > 0
    kinds = {b["kind"]: b for b in s["baseline"]}
    assert kinds["junit"]["baseline"]["n"] == 2 and not kinds["junit"]["like_for_like"]
    assert kinds["github-actions"]["baseline"]["n"] == 4 and kinds["github-actions"]["like_for_like"]
    assert kinds["github-actions"]["current"]["n"] == 3
    wall = sorted(x["duration_s"] for x in team.runs_in_records())
    assert s["wall_time"]["p50_s"] == wall[1] and math.isclose(s["wall_time"]["total_s"], sum(wall))
