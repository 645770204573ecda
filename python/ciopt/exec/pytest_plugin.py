"""pytest plugin loaded into batched test processes: reports each test file's outcome.

It runs inside the *project's* interpreter, where ciopt is not installed, so it imports
nothing but the standard library and pytest; the executor copies this file into the
sandbox and loads it with `-p _ciopt_report`.

One JSON line per test file is appended to `$CIOPT_REPORT` as soon as the file's last test
has finished (its teardown included), and flushed: when the process dies mid-batch, every
file reported so far keeps its result and the others are known not to have run.

    {"file": "tests/test_a.py", "outcome": "passed" | "failed" | "no_tests",
     "duration_s": 1.2 (sum of the tests' phases), "started_at": epoch s, "wall_s": 1.3, "cases": [{"nodeid", "outcome", "duration_s"}], "log": "..."}

Case outcomes: passed, failed, error (setup/teardown or collection), skipped, xfailed, xpassed.
"""

from __future__ import annotations

import json
import os
import time

REPORT_ENV = "CIOPT_REPORT"
# A file listing the batch's test files, one per line, relative to the rootdir. pytest is then
# given their directories, not the files: collecting N explicit file arguments costs pytest
# ~30 ms each (it resolves every argument from the rootdir), a directory walk ~3 ms per file.
# Files outside the list are ignored here, so exactly the batch's files are collected.
FILES_ENV = "CIOPT_BATCH_FILES"
_MAX_LOG = 256 * 1024  # per file: enough for every traceback, bounded when a test floods stdout


class _Reporter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.remaining: dict[str, int] = {}  # file -> items not finished yet
        self.cases: dict[str, dict[str, dict]] = {}  # file -> nodeid -> case
        self.logs: dict[str, list[str]] = {}
        self.started: dict[str, float] = {}
        self.collect_errors: dict[str, str] = {}
        self.args: list[str] = []
        self.done: set[str] = set()
        self.out = None

    @staticmethod
    def file_of(nodeid: str) -> str:
        return nodeid.split("::", 1)[0]

    def emit(self, file: str, outcome: str | None = None) -> None:
        if file in self.done:
            return
        self.done.add(file)
        cases = list(self.cases.get(file, {}).values())
        if outcome is None:
            bad = any(c["outcome"] in ("failed", "error") for c in cases)
            outcome = "failed" if bad or file in self.collect_errors else ("passed" if cases else "no_tests")
        log = "".join(self.logs.get(file, []))
        if file in self.collect_errors:
            log = f"ERROR collecting {file}\n{self.collect_errors[file]}\n" + log
        started = self.started.get(file)
        record = {"file": file, "outcome": outcome,
                  "duration_s": round(sum(c["duration_s"] for c in cases), 6),
                  "started_at": started or 0.0,
                  "wall_s": round(time.time() - started, 6) if started else 0.0,
                  "cases": cases, "log": log[-_MAX_LOG:]}
        # Flushed, not fsynced: a dying process keeps what it wrote (the page cache has it);
        # only an OS crash could lose it, and then the whole batch is gone anyway.
        if self.out is None:
            self.out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the session
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    # -- hooks ------------------------------------------------------------------------------

    def pytest_collectreport(self, report) -> None:  # noqa: ANN001 - pytest's own types
        if report.failed:
            file = self.file_of(report.nodeid) if report.nodeid else ""
            if file:
                self.collect_errors[file] = str(report.longrepr)

    def pytest_collection_finish(self, session) -> None:  # noqa: ANN001
        for item in session.items:
            file = self.file_of(item.nodeid)
            self.remaining[file] = self.remaining.get(file, 0) + 1
        self.args = [a.split("::", 1)[0] for a in session.config.args]

    def pytest_runtest_logstart(self, nodeid: str, location) -> None:  # noqa: ANN001
        self.started.setdefault(self.file_of(nodeid), time.time())

    def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001
        file = self.file_of(report.nodeid)
        cases = self.cases.setdefault(file, {})
        case = cases.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed", "duration_s": 0.0})
        case["duration_s"] = round(case["duration_s"] + getattr(report, "duration", 0.0), 6)
        outcome = _case_outcome(report)
        # The worst phase wins: an error in teardown after a passing call is an error.
        if outcome is not None and _RANK[outcome] > _RANK[case["outcome"]]:
            case["outcome"] = outcome
        if report.when == "call" or outcome in ("failed", "error") or (report.when == "setup" and report.skipped):
            shown = case["outcome"] if report.when == "call" else outcome or case["outcome"]
            line = f"{report.nodeid} {shown.upper()} ({report.when}, {getattr(report, 'duration', 0.0):.3f}s)\n"
            self.logs.setdefault(file, []).append(line)
        if report.failed:
            text = [report.longreprtext or ""]
            for name, content in getattr(report, "sections", []):
                text.append(f"----- {name} -----\n{content}")
            self.logs.setdefault(file, []).append("\n".join(text) + "\n")
        if report.when == "teardown" and file in self.remaining:
            self.remaining[file] -= 1
            if self.remaining[file] <= 0:
                self.emit(file)

    def pytest_sessionfinish(self, session) -> None:  # noqa: ANN001
        # Files named on the command line that collected nothing (or failed to collect).
        for file in list(self.collect_errors):
            self.emit(file, "failed")
        for file in list(self.cases):  # tests run elsewhere (xdist) or interrupted mid-file
            if self.remaining.get(file, 0) <= 0:
                self.emit(file)
        for arg in self.args:
            if arg.endswith(".py") and arg not in self.done and self.remaining.get(arg, 0) <= 0:
                rel = os.path.relpath(arg, str(session.config.rootpath)) if os.path.isabs(arg) else arg
                self.emit(rel.replace(os.sep, "/"))


_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "xpassed": 2, "failed": 3, "error": 4}


def _case_outcome(report) -> str | None:  # noqa: ANN001
    wasxfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if wasxfail:
            return "xfailed" if report.skipped else "xpassed"
        return "passed" if report.passed else ("skipped" if report.skipped else "failed")
    if report.failed:
        return "error"
    if report.skipped:
        return "xfailed" if wasxfail else "skipped"
    return None


class _OnlyTheseFiles:
    def __init__(self, root: str, files: set[str]) -> None:
        self.root = root
        self.files = files
        self.dirs = {f.rpartition("/")[0] for f in files}
        for d in list(self.dirs):  # every ancestor leads to a wanted file
            while d:
                d = d.rpartition("/")[0]
                self.dirs.add(d)

    def pytest_ignore_collect(self, collection_path, config):  # noqa: ANN001, ANN201
        rel = os.path.relpath(str(collection_path), self.root).replace(os.sep, "/")
        if rel.startswith(".."):
            return None
        if collection_path.is_dir():
            return None if rel in self.dirs or rel == "." else True
        name = rel.rpartition("/")[2]
        if rel.endswith(".py") and rel not in self.files and name not in ("conftest.py", "__init__.py"):
            return True
        return None


def pytest_configure(config) -> None:  # noqa: ANN001
    path = os.environ.get(REPORT_ENV)
    if path and not hasattr(config, "workerinput"):  # not inside an xdist worker
        config.pluginmanager.register(_Reporter(path), "ciopt-report")
    listing = os.environ.get(FILES_ENV)
    if listing:
        with open(listing, encoding="utf-8") as f:
            files = {line.strip() for line in f if line.strip()}
        config.pluginmanager.register(_OnlyTheseFiles(str(config.rootpath), files), "ciopt-only-these-files")
