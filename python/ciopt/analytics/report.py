"""`ciopt analytics report`: the dashboard's figures (metrics.summary) as text, Markdown or JSON.

`markdown_report(path, since=...)` is the Markdown form for other commands to embed (the CI
step summary).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ciopt.analytics import metrics

__all__ = ["fmt_pct", "fmt_s", "markdown_report", "render_markdown", "render_text", "report_data"]


def fmt_s(seconds: float | None) -> str:
    """1.23s, 12.3s, 4m 05s, 2h 03m, 3d 04h; '-' for nothing."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def fmt_pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def fmt_cost(x: float) -> str:
    return f"{x:,.2f}"


def report_data(path: Path, f: metrics.Filter, costs: Mapping[str, float] | None = None,
                limit: int = 10) -> dict[str, Any]:
    """metrics.summary for `f`, plus what the window was, JSON-ready."""
    r = metrics.Records.load(path, since=f.since)
    data = metrics.summary(r, f, costs, limit)
    data["records"] = str(path)
    data["branches"] = [{"branch": b, "invocations": n} for b, n in r.branches()]
    return data


def _window(d: Mapping[str, Any]) -> str:
    f = d["filter"]
    since = f"since {metrics.day_of(f['since'])}" if f["since"] is not None else "all recorded"
    until = f" until {metrics.day_of(f['until'])}" if f["until"] is not None else ""
    branch = "all branches" if f["branch"] is None else f"branch {f['branch'] or '(none)'}"
    return f"{since}{until}, {branch}"


def _lines(d: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(heading, one-line figure) pairs shared by the text and Markdown forms."""
    w, saved, cache, split, sel = d["wall_time"], d["time_saved"], d["cache"], d["time_split"], d["selection"]
    trend = w["trend"]["change_pct"]
    out = [
        ("wall time", f"p50 {fmt_s(w['p50_s'])}, p90 {fmt_s(w['p90_s'])}, mean {fmt_s(w['mean_s'])} over "
                      f"{w['invocations']} invocations"
                      + (f"; trend {fmt_pct(trend, True)} (median of the newer half vs the older half)"
                         if trend is not None else "")),
        ("time saved", f"{fmt_s(saved['total_s'])} (cache {fmt_s(saved['cache_s'])}, selection "
                       f"{fmt_s(saved['selection_s'])}): {fmt_pct(saved['saved_share'])} of what these runs "
                       f"would have taken"
                       + (f"; {saved['unknown']} skipped actions never seen running are not counted"
                          if saved["unknown"] else "")),
        ("cache hits", f"{fmt_pct(cache['hit_rate'])} of {cache['lookups']:,} lookups (local store "
                       f"{fmt_pct(cache['local_rate'])}, shared cache {fmt_pct(cache['remote_rate'])})"),
        ("time split", ", ".join(f"{k.replace('_', ' ')} {fmt_pct(v)}" for k, v in split["share"].items())
         if split["total_s"] else "-"),
        ("selection", f"{sel['tests_run']:,} tests ran, {sel['tests_cached']:,} came from the cache, "
                      f"{sel['tests_skipped']:,} were skipped as unaffected ({fmt_pct(sel['skipped_share'])}); "
                      f"saved {fmt_s(sel['saved_s'])}"),
    ]
    for b in d["baseline"]:
        base, cur = b["baseline"], b["current"]
        against = f"{b['current_source']} runs" if b["like_for_like"] else "ciopt invocations (command only)"
        out.append((f"baseline ({b['kind']})",
                    f"p50 {fmt_s(base['p50_s'])} over {base['n']} runs before, {fmt_s(cur['p50_s'])} over "
                    f"{cur['n']} {against} after: p50 {fmt_pct(b['p50_change_pct'], True)}, "
                    f"p90 {fmt_pct(b['p90_change_pct'], True)}"))
    return out


def render_text(d: Mapping[str, Any]) -> str:
    out = [f"ciopt analytics: {d['wall_time']['invocations']} invocations ({_window(d)})"]
    for head, line in _lines(d):
        out.append(f"  {head + ':':<24}{line}")
    cp = d["critical_path"]["targets"]
    if cp:
        out.append("most often on the critical path:")
        out += [f"  {fmt_pct(t['share']):>7}  {t['label']}  (mean {fmt_s(t['mean_s'])})" for t in cp]
    if d["slowest_targets"]:
        out.append("slowest targets (p50 / p95 of real runs):")
        out += [f"  {fmt_s(t['p50_s']):>8} / {fmt_s(t['p95_s']):<8} {t['label']}  ({t['runs']} runs)"
                for t in d["slowest_targets"]]
    fl = d["flaky_tests"]
    out.append(f"flaky tests: {fl['flaky_tests']} of {fl['tests']} tests, flake rate {fmt_pct(fl['flake_rate'])} "
               f"over {fl['runs']:,} runs")
    out += [f"  {fmt_pct(t['flake_rate']):>7}  {t['label']}  ({t['flaky']} flaky, {t['flips']} flips in "
            f"{t['runs']} runs)" for t in fl["top"]]
    ex = d["executors"]
    if ex["executors"]:
        out.append(f"executors: busy {fmt_s(ex['busy_s'])}, cost {fmt_cost(ex['total_cost'])} "
                   f"(cpu {fmt_cost(ex['by_kind']['cpu']['cost'])}, gpu {fmt_cost(ex['by_kind']['gpu']['cost'])})")
        out += [f"  {e['id']}: busy {fmt_s(e['busy_s'])}, utilization {fmt_pct(e['utilization'])}, "
                f"{e['class']} at {e['cost_per_hour']:g}/h, cost {fmt_cost(e['cost'])}" for e in ex["executors"]]
    return "\n".join(out) + "\n"


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def cell(s: str) -> str:
        return s.replace("|", "\\|")
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(cell(c) for c in r) + " |" for r in rows)]


def render_markdown(d: Mapping[str, Any], heading: str = "###") -> str:
    out = [f"{heading} CI analytics: {d['wall_time']['invocations']} invocations ({_window(d)})", ""]
    out += _md_table(["", ""], [[f"**{h}**", line] for h, line in _lines(d)])
    if d["slowest_targets"]:
        out += ["", f"{heading}# Slowest targets", ""]
        out += _md_table(["target", "p50", "p95", "runs"],
                         [[f"`{t['label']}`", fmt_s(t["p50_s"]), fmt_s(t["p95_s"]), str(t["runs"])]
                          for t in d["slowest_targets"]])
    cp = d["critical_path"]["targets"]
    if cp:
        out += ["", f"{heading}# Most often on the critical path", ""]
        out += _md_table(["target", "share of invocations", "mean"],
                         [[f"`{t['label']}`", fmt_pct(t["share"]), fmt_s(t["mean_s"])] for t in cp])
    fl = d["flaky_tests"]
    if fl["top"]:
        out += ["", f"{heading}# Flaky tests ({fl['flaky_tests']} of {fl['tests']}, flake rate "
                f"{fmt_pct(fl['flake_rate'])})", ""]
        out += _md_table(["test", "flake rate", "flaky", "flips", "runs"],
                         [[f"`{t['label']}`", fmt_pct(t["flake_rate"]), str(t["flaky"]), str(t["flips"]),
                           str(t["runs"])] for t in fl["top"]])
    ex = d["executors"]
    if ex["executors"]:
        out += ["", f"{heading}# Executors (cost {fmt_cost(ex['total_cost'])})", ""]
        out += _md_table(["executor", "class", "busy", "utilization", "cost"],
                         [[f"`{e['id']}`", f"{e['class']} ({e['cost_per_hour']:g}/h)", fmt_s(e["busy_s"]),
                           fmt_pct(e["utilization"]), fmt_cost(e["cost"])] for e in ex["executors"]])
    return "\n".join(out) + "\n"


def markdown_report(path: Path, *, since: float | None = None, branch: str | None = None,
                    costs: Mapping[str, float] | None = None, heading: str = "###") -> str:
    """The report over the records at `path` as Markdown (GitHub flavoured), for step summaries."""
    return render_markdown(report_data(path, metrics.Filter(since=since, branch=branch), costs), heading)
