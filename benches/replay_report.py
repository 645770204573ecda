"""Figures, Markdown, JSON and the PNG plot of the CI replay (benches/ci_replay.py), from its rows.

A row is one runner's run at one commit (see ci_replay.py: `Row`); this module only reads them, so
`ci_replay.py --report-only` can rebuild every output from the rows a long run left behind.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

GOALS = {
    "time_cut": "≥ 0.70 (total and median per commit)",
    "dependency_hit_rate": "≥ 0.90",
    "test_cache_hit_rate": "≥ 0.99",
    "missed_failures": "0",
    "concurrent_errors": "0",
}


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


# A file that failed at baseline, by what ciopt did with it: a miss only when ciopt did not run it
# (a cached pass, skipped as unaffected, absent); run and passed means the failure did not
# reproduce (a flaky test: it may fail under ciopt at another commit), not that it was hidden.
HIDDEN = ("cached", "skipped_unaffected", "other", None)


def failure_check(baseline: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(hidden: baseline failures ciopt did not run; not_reproduced: ran and passed under ciopt)."""
    if not baseline:
        return [], []
    failed = baseline["failed_files"]
    files = ours.get("files", {})
    return ([f for f in failed if files.get(f) in HIDDEN],
            [f for f in failed if files.get(f) == "executed"])


def concurrent_errors(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[str]:
    ours = row["ciopt"]
    return ([*ours.get("errors", []), *(f"cache warning: {w}" for w in ours.get("warnings", []))]
            + [f"{f}: failed at baseline, hidden by ciopt ({ours['files'].get(f, 'absent')})"
               for f in failure_check(baseline, ours)[0]])


def side_total(row: Mapping[str, Any], side: str) -> float:
    return float(row[side]["total_s"]) if row.get(side) else 0.0


def summarize(repo: str, rows: list[dict[str, Any]], pin: Mapping[str, str]) -> dict[str, Any]:
    """The per-repository object of ci_replay.json."""
    serve = [r for r in rows if r["phase"] == "replay" and r["backend"] == "serve"]
    redis = [r for r in rows if r["phase"] == "replay" and r["backend"] == "redis"]
    conc = [r for r in rows if r["phase"] == "concurrent"]
    base_by_commit = {r["commit"]: r["baseline"] for r in serve if r.get("baseline")}

    def cut_figures(replay: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = [(base_by_commit[r["commit"]]["total_s"], r["ciopt"]["total_s"])
                 for r in replay if r["commit"] in base_by_commit]
        base_s = sum(b for b, _ in pairs)
        ours_s = sum(o for _, o in pairs)
        cuts = [1 - o / b for b, o in pairs if b]
        deps = [r["ciopt"]["dependencies"] for r in replay]
        eligible = sum(r["ciopt"]["eligible"] for r in replay)
        eligible_hits = sum(r["ciopt"]["eligible_hits"] for r in replay)
        ran = sum(r["ciopt"]["tests"].get("executed", 0) + r["ciopt"]["tests"].get("failed", 0) for r in replay)
        cached = sum(r["ciopt"]["tests"].get("cached", 0) for r in replay)
        skipped = sum(r["ciopt"]["tests"].get("skipped_unaffected", 0) for r in replay)
        return {
            "commits": len(pairs),
            "baseline_s": round(base_s, 2),
            "ciopt_s": round(ours_s, 2),
            "time_cut": round(1 - ours_s / base_s, 4) if base_s else None,
            "median_time_cut": round(statistics.median(cuts), 4) if cuts else None,
            "slower_commits": sum(1 for b, o in pairs if o > b),
            "dependency_hit_rate": _ratio(sum(1 for d in deps if d in ("hit", "partial")), len(deps)),
            "dependency_results": {k: deps.count(k) for k in ("hit", "partial", "miss")},
            "test_cache_hit_rate": _ratio(eligible_hits, eligible),
            "test_cache_eligible": eligible,
            "action_cache_hit_rate": _ratio(cached, cached + ran),
            "test_files_run": ran,
            "test_files_cached": cached,
            "test_files_skipped_unaffected": skipped,
            "hidden_failures": sum(len(failure_check(base_by_commit.get(r["commit"]), r["ciopt"])[0]) for r in replay),
            "not_reproduced_failures": sum(len(failure_check(base_by_commit.get(r["commit"]), r["ciopt"])[1])
                                           for r in replay),
            "only_ciopt_failed": sum(1 for r in replay if r["commit"] in base_by_commit
                                     for f in r["ciopt"]["failed_files"]
                                     if base_by_commit[r["commit"]]["files"].get(f) != "failed"),
        }

    extra = [r for r in rows if r["phase"] == "replay" and r["backend"] == "serve-extra"]
    mutated = [r["mutation"] for r in serve + extra if r.get("mutation") and r["mutation"].get("mutant")]
    hidden_in_mutants = [f for m in mutated for f in m["missed"] if m["missed_status"].get(f) in HIDDEN + ("absent",)]
    out: dict[str, Any] = {
        "repo": repo,
        "github": pin.get("github"),
        "range": pin.get("range"),
        **cut_figures(serve),
        "missed_failures": len(hidden_in_mutants),
        "mutant_failures_not_reproduced": sum(len(m["missed"]) for m in mutated) - len(hidden_in_mutants),
        "mutant_failing_files": sum(len(m["baseline_failed"]) for m in mutated),
        "mutations": len(mutated),
        "mutation_attempts": sum(1 for r in serve + extra if r.get("mutation")),
        "mutation_poisoned_next": sum(1 for r in serve + extra if r.get("after_mutation")
                                     and failure_check(r.get("baseline"), r["ciopt"])[0]),
        "commits_after_mutation": sum(1 for r in serve + extra if r.get("after_mutation")),
        # Recomputed from the rows: what the runner reported (a bad exit, a crash, a cache
        # warning) and baseline failures ciopt hid; a flaky file that ran and passed is not one.
        "concurrent_errors": sum(len(concurrent_errors(r, base_by_commit.get(r["commit"]))) for r in conc),
        "concurrent_not_reproduced": sum(len(failure_check(base_by_commit.get(r["commit"]), r["ciopt"])[1])
                                         for r in conc),
        "concurrent_commits": len(conc),
        "concurrent_action_cache_hit_rate": _ratio(
            sum(r["ciopt"]["tests"].get("cached", 0) for r in conc),
            sum(r["ciopt"]["tests"].get("cached", 0) + r["ciopt"]["tests"].get("executed", 0)
                + r["ciopt"]["tests"].get("failed", 0) for r in conc)),
    }
    if redis:
        out["redis"] = {**cut_figures(redis), "selection": any(r.get("selection", True) for r in redis)}
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"
    return str(v)


def markdown(summaries: list[dict[str, Any]], rows_by_repo: Mapping[str, list[dict[str, Any]]],
             machine: Mapping[str, Any]) -> str:
    lines = ["# CI replay", "",
             "Generated by `benches/ci_replay.py`. Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "",
             "| repository | range | commits | baseline s | ciopt s | time cut | median cut | dep. hits | test cache hits (unchanged inputs) | action cache hits | missed failures / mutations | concurrent errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['repo']} | {s.get('range') or ''} | {s['commits']} | {_fmt(s['baseline_s'])} | {_fmt(s['ciopt_s'])} "
                     f"| {_fmt(s['time_cut'])} | {_fmt(s['median_time_cut'])} | {_fmt(s['dependency_hit_rate'])} "
                     f"| {_fmt(s['test_cache_hit_rate'])} ({s['test_cache_eligible']}) | {_fmt(s['action_cache_hit_rate'])} "
                     f"| {s['missed_failures']} / {s['mutations']} | {s['concurrent_errors']} ({s['concurrent_commits']} runs) |")
        if "redis" in s:
            r = s["redis"]
            lines.append(f"| {s['repo']} (Redis{'' if r['selection'] else ', no selection'}) | | {r['commits']} | {_fmt(r['baseline_s'])} | {_fmt(r['ciopt_s'])} "
                         f"| {_fmt(r['time_cut'])} | {_fmt(r['median_time_cut'])} | {_fmt(r['dependency_hit_rate'])} "
                         f"| {_fmt(r['test_cache_hit_rate'])} ({r['test_cache_eligible']}) | {_fmt(r['action_cache_hit_rate'])} | | |")
    lines += ["", "Goals: " + "; ".join(f"{k} {v}" for k, v in GOALS.items()), ""]
    for repo, rows in rows_by_repo.items():
        lines += [f"## {repo}: per commit", "",
                  "| # | commit | backend | baseline s (clone/install/test) | ciopt s (clone/deps/test) | deps | run/cached/skipped | failed files base/ciopt | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        base_by_commit = {x["commit"]: x["baseline"] for x in rows if x.get("baseline")}
        order = {"serve": 0, "redis": 1, "serve-extra": 2}
        replayed = sorted((x for x in rows if x["phase"] == "replay"),
                          key=lambda x: (order.get(x["backend"], 3), x["index"]))
        for r in replayed:
            i = r["index"]
            b, c = r.get("baseline") or base_by_commit.get(r["commit"]), r["ciopt"]
            t = c["tests"]
            base = (f"{b['total_s']:.1f} ({b['clone_s']:.1f}/{b['install_s']:.1f}/{b['test_s']:.1f})" if b else "")
            dep_s = c["restore_s"] + c["install_s"] + c["save_s"]
            note = []
            if b and c["total_s"] > b["total_s"]:
                note.append("SLOWER")
            if r.get("mutation", {}).get("mutant"):
                m = r["mutation"]
                note.append(f"mutant {m['mutant']}: {len(m['baseline_failed'])} failing, missed {len(m['missed'])}")
            elif r.get("mutation"):
                note.append("no failing mutant: " + r["mutation"].get("why", ""))
            hidden, not_reproduced = failure_check(b, c)
            if hidden:
                note.append("HIDDEN FAILURE " + ", ".join(hidden))
            if not_reproduced:
                note.append("failed at baseline, ran and passed under ciopt (flaky): " + ", ".join(not_reproduced))
            if b:
                extra = [f for f in c["failed_files"] if b["files"].get(f) != "failed"]
                if extra:
                    note.append("failed only under ciopt: " + ", ".join(extra))
            if c.get("errors"):
                note.append("errors: " + "; ".join(c["errors"])[:200])
            lines.append(f"| {i} | {r['commit'][:10]} | {r['backend']} | {base} "
                         f"| {c['total_s']:.1f} ({c['clone_s']:.1f}/{dep_s:.1f}/{c['test_s']:.1f}) | {c['dependencies']} "
                         f"| {t.get('executed', 0) + t.get('failed', 0)}/{t.get('cached', 0)}/{t.get('skipped_unaffected', 0)} "
                         f"| {len(b['failed_files']) if b else ''}/{len(c['failed_files'])} | {'; '.join(note)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(rows_by_repo: Mapping[str, list[dict[str, Any]]], out: Path) -> str | None:
    """Per-commit wall time, baseline vs ciopt, with the action cache hit rate; None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no PNG"
    repos = [r for r in rows_by_repo if any(x["phase"] == "replay" for x in rows_by_repo[r])]
    if not repos:
        return "no rows"
    fig, axes = plt.subplots(len(repos), 1, figsize=(11, 3.6 * len(repos)), squeeze=False)
    for ax, repo in zip(axes[:, 0], repos):
        serve = [x for x in rows_by_repo[repo] if x["phase"] == "replay" and x["backend"] == "serve"]
        xs = list(range(len(serve)))
        ax.plot(xs, [x["baseline"]["total_s"] if x.get("baseline") else None for x in serve],
                label="baseline (clone + venv + pip + pytest)", color="#888888", marker=".")
        ax.plot(xs, [x["ciopt"]["total_s"] for x in serve], label="ciopt (cache serve)", color="#1f77b4", marker=".")
        redis = {x["commit"]: x for x in rows_by_repo[repo] if x["phase"] == "replay" and x["backend"] == "redis"}
        if redis:
            ax.plot(xs, [redis[x["commit"]]["ciopt"]["total_s"] if x["commit"] in redis else None for x in serve],
                    label="ciopt (Redis)", color="#2ca02c", marker=".", alpha=0.7)
        ax.set_ylabel("wall time per commit (s)")
        ax.set_title(f"{repo}: CI replay, {len(serve)} commits")
        ax2 = ax.twinx()
        rates = []
        for x in serve:
            t = x["ciopt"]["tests"]
            ran = t.get("executed", 0) + t.get("failed", 0) + t.get("cached", 0)
            rates.append(t.get("cached", 0) / ran if ran else None)
        ax2.bar(xs, [r if r is not None else 0 for r in rates], alpha=0.15, color="#ff7f0e",
                label="action cache hit rate (tests not skipped)")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("cache hit rate")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
        ax.set_xlabel("commit (oldest first)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return None


def write_json(path: Path, summaries: Iterable[dict[str, Any]], machine: Mapping[str, Any]) -> None:
    path.write_text(json.dumps({"machine": dict(machine), "goals": GOALS, "repos": list(summaries)}, indent=2) + "\n")
