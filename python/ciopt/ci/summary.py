"""The step summary of one build: what a reviewer wants from the job page without opening the log.

Time, time saved by the cache and by selection, hit rates per tier, the slowest targets,
failures with the tail of their logs, flaky tests. The source is a `ciopt test|build -o json`
document, or the newest BuildRecord of the workspace (analytics/records.py); either way the
BuildRecords supply history, because "time saved" is the duration of each action or test that
did not run, from its last real run. On an ephemeral runner there is no history; a cached
test's per-case durations (kept in its cached result) then stand in, and the summary says how
many of the skipped ones had a known duration instead of guessing the rest.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ciopt.exec.engine import log_tail
from ciopt.graph.label import Label

SLOWEST = 5
LOG_TAIL_LINES = 30
_RAN = ("executed", "failed")
_CACHED = ("cached_local", "cached_remote")
_UNAFFECTED_PREFIX = "not affected by the changes since"  # how records keep `skipped_unaffected`


@dataclass
class Item:
    """One action or test of the build, whichever source it came from."""

    label: str
    mnemonic: str | None
    status: str  # executed | cached_local | cached_remote | failed | skipped | skipped_unaffected
    duration_s: float
    test_outcome: str | None = None
    attempts: int = 1
    message: str | None = None
    log: Path | None = None
    cases_s: float | None = None  # sum of per-case durations of the run a cached result came from


@dataclass
class Build:
    command: str
    duration_s: float
    exit_code: int | None
    items: list[Item]
    commit: str | None = None
    bypass: bool = False
    loading_s: float | None = None
    selection: Mapping[str, object] | None = None
    remote_cache: Mapping[str, object] | None = None
    source: str = ""  # where this came from, for the footer


@dataclass
class Saved:
    seconds: float = 0.0
    known: int = 0  # items with a known duration
    total: int = 0

    def to_json(self) -> dict[str, object]:
        return {"seconds": round(self.seconds, 3), "known": self.known, "total": self.total}


@dataclass
class Summary:
    build: Build
    counts: dict[str, int]
    saved_by_cache: Saved
    saved_by_selection: Saved
    hit_rates: dict[str, dict[str, object]]
    slowest: list[Item]
    failures: list[tuple[Item, str]] = field(default_factory=list)  # (item, log tail)
    flaky: list[Item] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        b = self.build
        return {
            "command": b.command, "exit_code": b.exit_code, "duration_s": round(b.duration_s, 3),
            "commit": b.commit, "bypass": b.bypass, "source": b.source, "counts": self.counts,
            "saved_by_cache": self.saved_by_cache.to_json(), "saved_by_selection": self.saved_by_selection.to_json(),
            "hit_rates": self.hit_rates, "selection": dict(b.selection) if b.selection else None,
            "slowest": [{"label": i.label, "duration_s": round(i.duration_s, 3), "status": i.status}
                        for i in self.slowest],
            "failures": [{"label": i.label, "message": i.message, "log_tail": tail} for i, tail in self.failures],
            "flaky": [{"label": i.label, "attempts": i.attempts} for i in self.flaky],
        }


# -- reading ------------------------------------------------------------------------------------


def from_json(doc: Mapping[str, object], source: str) -> Build:
    """A build from `ciopt test|build -o json`. Raises ValueError when it is not one."""
    actions = doc.get("actions")
    summary = doc.get("summary")
    if not isinstance(actions, list) or not isinstance(summary, dict):
        raise ValueError("not a `ciopt test -o json` / `ciopt build -o json` document (no actions or summary)")
    tests = {t.get("label"): t for t in doc.get("tests") or [] if isinstance(t, dict)}  # type: ignore[union-attr]
    items = []
    for a in actions:
        t = tests.get(a.get("label"), {})
        cases = t.get("cases") or []
        items.append(Item(
            label=str(a.get("label")), mnemonic=a.get("mnemonic"), status=str(a.get("status")),
            duration_s=float(a.get("duration_s") or 0.0),
            test_outcome=t.get("outcome") if t.get("outcome") not in (None, "not_run", "skipped_unaffected") else None,
            attempts=int(t.get("attempts") or 1), message=a.get("message") or t.get("message"),
            log=Path(t["log"]) if t.get("log") else None,
            cases_s=sum(float(c.get("duration_s") or 0.0) for c in cases) if cases else None))
    return Build(str(doc.get("command") or "build"), float(summary.get("duration_s") or 0.0),
                 summary.get("exit_code"), items, bypass=bool(summary.get("bypass")),  # type: ignore[arg-type]
                 loading_s=summary.get("loading_s"), selection=summary.get("selection"),  # type: ignore[arg-type]
                 remote_cache=summary.get("remote_cache"), source=source)  # type: ignore[arg-type]


def _test_log(workspace: Path, label: str) -> Path | None:
    # Where the engine writes a test's log (exec/engine.py _log_path): records do not keep it.
    try:
        parsed = Label.parse(label)
    except ValueError:  # a label this version cannot parse: no log, still a summary
        return None
    path = workspace / "ciopt-out" / "testlogs" / (parsed.package or ".") / parsed.name / "test.log"
    return path if path.is_file() else None


def from_records(records: Path, workspace: Path) -> Build | None:
    """The newest recorded build of `workspace` (None when there is none). Raises sqlite3.Error."""
    from ciopt.analytics.records import actions_of, recent_invocations

    for inv in recent_invocations(records, 50):
        if inv.get("workspace") != str(workspace) or inv.get("command") not in ("build", "test"):
            continue
        items = []
        for a in actions_of(records, int(inv["id"])):  # type: ignore[arg-type]
            status = str(a["status"])
            if status == "skipped" and str(a.get("message") or "").startswith(_UNAFFECTED_PREFIX):
                status = "skipped_unaffected"
            items.append(Item(str(a["label"]), a.get("mnemonic"), status, float(a.get("duration_s") or 0.0),
                              a.get("test_outcome"), int(a.get("attempts") or 1), a.get("message"),
                              _test_log(workspace, str(a["label"])) if a.get("test_outcome") else None))
        return Build(str(inv["command"]), float(inv.get("duration_s") or 0.0), inv.get("exit_code"),  # type: ignore[arg-type]
                     items, commit=inv.get("git_commit"), bypass=bool(inv.get("bypass")),  # type: ignore[arg-type]
                     source=f"{records} (invocation {inv['id']})")
    return None


def history(records: Path, mnemonics: set[str]) -> dict[str, float]:
    """label -> seconds of its last real run, from the BuildRecords ({} without them)."""
    from ciopt.analytics.records import last_durations

    out: dict[str, float] = {}
    for mnemonic in mnemonics:
        try:
            out.update(last_durations(records, mnemonic, limit=200))
        except sqlite3.Error:
            return out
    return out


# -- figures ------------------------------------------------------------------------------------


# Not analytics/metrics.py's time_saved / cache_hit_rate: those add up columns stored per
# invocation (saved_cache_s, actions_cached_*) over a window of records, where this summary
# describes one build item by item, often from a `-o json` document that has no record yet,
# counts the items with no known duration, falls back on a cached test's per-case durations,
# and gives the remote tier's rate over the lookups that reached it (metrics: over all). The
# past durations do come from the records' own query (records.last_durations, history() above).


def _saved(items: list[Item], past: Mapping[str, float]) -> Saved:
    saved = Saved(total=len(items))
    for i in items:
        seconds = past.get(i.label, i.cases_s)
        if seconds is not None:
            saved.seconds += seconds
            saved.known += 1
    return saved


def _rate(hits: int, of: int) -> dict[str, object]:
    return {"hits": hits, "lookups": of, "rate": round(hits / of, 4) if of else None}


def summarize(build: Build, past: Mapping[str, float]) -> Summary:
    counts: dict[str, int] = {}
    for i in build.items:
        counts[i.status] = counts.get(i.status, 0) + 1
    looked_up = [i for i in build.items if i.status in _RAN + _CACHED]
    local = sum(1 for i in looked_up if i.status == "cached_local")
    remote = sum(1 for i in looked_up if i.status == "cached_remote")
    rates = {"local": _rate(local, len(looked_up)), "remote": _rate(remote, len(looked_up) - local)}
    cached = [i for i in build.items if i.status in _CACHED]
    unaffected = [i for i in build.items if i.status == "skipped_unaffected"]
    ran = sorted((i for i in build.items if i.status in _RAN), key=lambda i: i.duration_s, reverse=True)
    failures = [(i, log_tail(i.log, LOG_TAIL_LINES)) for i in build.items
                if i.status == "failed" or i.test_outcome in ("failed", "timeout")]
    flaky = [i for i in build.items if i.test_outcome == "flaky"]
    return Summary(build, counts, _saved(cached, past), _saved(unaffected, past), rates, ran[:SLOWEST],
                   failures, flaky)


# -- Markdown -----------------------------------------------------------------------------------


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _pct(rate: Mapping[str, object]) -> str:
    if not rate["lookups"]:
        return "none looked up"
    return f"{rate['hits']} of {rate['lookups']} ({float(rate['rate']) * 100:.0f}%)"  # type: ignore[arg-type]


def _saved_text(saved: Saved, what: str) -> str:
    if not saved.total:
        return "nothing"
    text = f"{_seconds(saved.seconds)}: {saved.total} {what}"
    if saved.known < saved.total:
        text += f" ({saved.total - saved.known} with no recorded run, not counted)"
    return text


def _fence(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}text\n{text}\n{fence}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(s: Summary) -> str:
    b, c = s.build, s.counts
    verdict = "passed" if b.exit_code == 0 else "FAILED" if b.exit_code is not None else "did not finish"
    lines = [f"### ciopt {b.command}: {verdict}", ""]
    if b.bypass:
        lines += ["**Emergency bypass was on**: no cache was read or written, no test was skipped.", ""]
    wall = _seconds(b.duration_s) + (f" (loading {_seconds(b.loading_s)})" if b.loading_s else "")
    cached = c.get("cached_local", 0) + c.get("cached_remote", 0)
    actions = (f"{len(b.items)}: {c.get('executed', 0)} executed, {cached} cached "
               f"({c.get('cached_local', 0)} local, {c.get('cached_remote', 0)} remote), {c.get('failed', 0)} failed")
    if c.get("skipped_unaffected"):
        actions += f", {c['skipped_unaffected']} not affected (skipped)"
    if c.get("skipped"):
        actions += f", {c['skipped']} not run"
    rows = [("wall time", wall), ("actions", actions),
            ("saved by the cache", _saved_text(s.saved_by_cache, "cached")),
            ("saved by selection", _saved_text(s.saved_by_selection, "tests not affected")),
            ("cache hits, local tier", _pct(s.hit_rates["local"]))]
    # Records do not say whether a remote tier was configured; JSON does (summary.remote_cache).
    if b.remote_cache or c.get("cached_remote"):
        rows.append(("cache hits, remote tier", _pct(s.hit_rates["remote"])))
    sel = b.selection
    if sel:
        base = str(sel.get("base") or "")[:12] or "none"
        everything = " (a global input changed: all run)" if sel.get("all") else ""
        rows.append(("selection", f"base {base} ({sel.get('source')}): {sel.get('affected')} affected, "
                                  f"{sel.get('unaffected')} not{everything}"))
    rc = b.remote_cache
    if rc:
        rows.append(("remote cache", f"{rc.get('hits', 0)} hits, {rc.get('misses', 0)} misses, "
                                     f"{rc.get('uploads', 0)} uploaded, {rc.get('errors', 0)} errors"))
    lines += ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows), ""]
    if s.slowest:
        lines += ["**Slowest targets**", "", "| target | time | status |", "|---|---|---|",
                  *(f"| `{i.label}` | {_seconds(i.duration_s)} | {i.status} |" for i in s.slowest), ""]
    if s.failures:
        lines += [f"**Failures ({len(s.failures)})**", ""]
        for item, tail in s.failures:
            summary_line = _cell(f"{item.label}: {item.message or item.test_outcome or 'failed'}")
            lines += ["<details><summary>" + summary_line.replace("<", "&lt;") + "</summary>", ""]
            lines += [_fence(tail) if tail else "(no log)", "", "</details>", ""]
    if s.flaky:
        lines += [f"**Flaky tests ({len(s.flaky)})**: passed only on a retry", "",
                  *(f"- `{i.label}`: passed on attempt {i.attempts}" for i in s.flaky), ""]
    commit = f" at {b.commit[:12]}" if b.commit else ""
    lines += [f"<sub>ciopt ci summary{commit}, from {b.source}</sub>", ""]
    return "\n".join(lines)


__all__ = ["Build", "Item", "Saved", "Summary", "from_json", "from_records", "history", "summarize",
           "to_markdown"]
