"""`ciopt test` on real pytest suites against plain pytest, side by side.

Run:  .venv/bin/python benches/pytest_bench.py [--setup] [--repos click,boltons] [--repeat N]
                                              [--quick] [--commits 20] [--only NAME] [--json FILE]

Timed results read `name: ours X s, peer Y s, ratio Z (goal ...)` with ratio = ours / peer (lower is
better), X and Y the median of the repetitions, ours and peer alternating so that drift hits both
alike. Goals are printed, never asserted (see harness.py for why). `--quick` is one repetition and
3 replayed commits; `--setup` only creates what is missing (clones, venvs), checks that plain
pytest passes at every pinned commit, and exits.

The repositories (REPOS below), each cloned at a pinned commit into benches/.corpus/pytest-<name>/
with its own venv benches/.corpus/pytest-<name>-venv (made with `python -m venv` from the
interpreter running the bench; the project installed editable, plus its test requirements and
pytest-xdist, all pinned):

  click            src-layout, 34 test files in tests/ and tests/test_utils/, a small conftest,
                   2,016 tests (31,000 more deselected by its addopts); the repo where ciopt's own
                   site-packages click used to shadow the checkout
  more-itertools   flat layout, 2 big unittest-style test files: 736 tests, 21,039 subtests
                   (pytest 9 reports each; the suite takes ~30 s, the slowest here)
  boltons          flat layout, 29 small test files in tests/, a conftest hook, data files
  jinja            src-layout, 22 test files, a fixture-heavy conftest (async via trio/asyncio),
                   templates and a module imported by path from tests/res/

Rows, for each repository R (the first three from the same repetitions: ciopt cold, ciopt warm,
pytest, pytest -n 2, the order flipped every other repetition):

  cold_vs_pytest[R]     `ciopt test //... -j 2 -o json`, empty CIOPT_CACHE_DIR and no ciopt-out/
                        each repetition, against `pytest` (one process)            goal <= 0.75
  cold_vs_xdist[R]      the same cold runs against `pytest -n 2` (pytest-xdist)    goal <= 1.05
  warm_vs_pytest[R]     a second `ciopt test //... -j 2` on the store the cold run just filled,
                        nothing changed, against `pytest`                          goal <= 0.05
  outcomes[R]           per-test outcomes of `ciopt test //... -j 2 -o json` (its tests[].cases)
                        against `pytest -p no:cacheprovider --junitxml=F -o junit_family=xunit1`
                        from the repo root; every test whose outcome differs, or that only one
                        side ran, is listed                                       goal: none
  replay[R]             the last --commits first-parent commits ending at the pin, each commit C
                        checked out in turn; the store is warm from the run at C^ (the run before,
                        starting with a full run at the oldest C^). Ours: `ciopt test //... -j 2
                        --affected-since C^ -o json`; peer: `pytest`, the whole suite. Per commit:
                        the share of test files ciopt ran (tests[].status executed or failed, of
                        all tests) and whether ours <= (share + 0.1) x pytest. A commit where
                        pytest fails is reported as a baseline failure, not left out.
  per_file_200          a generated git repository of 200 files `def test_x(): assert 1`:
                        `ciopt test //... -j 2` cold against `pytest`              goal <= 1.2

How ciopt is run: this checkout's .venv/bin/ciopt with cwd = the repo root, VIRTUAL_ENV = the repo's
venv and its bin/ first on PATH, CIOPT_CACHE_DIR a store the bench owns (benches/.corpus/pytest_tmp,
removed after each use). pytest is the venv's bin/pytest from the same directory with the same
environment. PYTHONDONTWRITEBYTECODE is removed from both sides' environment (CI runners and
developer machines write bytecode), so Python's bytecode caches of the checkout and of the venv are
warm for both: "cold" means ciopt's store and ciopt-out/ are empty.

Each clone gets what git must not see, listed in its .git/info/exclude: the workspace marker
(corpus.mark_workspace explains why), ciopt-out/ and .pytest_cache/, and, for a repository with no
pytest configuration at its root (more-itertools), an empty `pytest.ini`. Without it pytest would
climb past the clone to this repository's pyproject.toml ([tool.pytest.ini_options]) and take it
as the clone's configuration and rootdir; alone, such a clone gets its root as rootdir and no
options, which is exactly what the empty pytest.ini gives.

The fields of ciopt's JSON this bench reads (tests[].file, .status, .outcome, .cases[].nodeid and
.outcome, summary.python.executable) and the options (--affected-since) are checked on every run;
whatever is missing is named in the notes and the bench falls back (file names from tests[].files
or the label, per-file outcomes, a warm run without --affected-since) instead of failing. A test
run by an interpreter outside the repo's venv is flagged WRONG INTERPRETER. Every test ciopt did
not pass is listed with its failing cases, and its log is copied to benches/.corpus/pytest-logs/
(ciopt-out/ is rewritten by the next run).

Timings on 2 cores: setup from the local mirrors about 2 minutes (a no-op rerun: the pytest
checks only, 1-2 minutes); a --quick run 16 minutes on a shared machine, 6.5 of them
more-itertools; a full run (--repeat 5, 20 commits) is estimated at 45-60 minutes, two thirds of
it more-itertools (`--repos click,boltons,jinja` leaves it out).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import corpus
import harness
from harness import CIOPT_CLI, Result, emit, fill, fmt_samples

SCRATCH = corpus.CORPUS / "pytest_tmp"  # stores and reports: same filesystem as the corpora
LOGS = corpus.CORPUS / "pytest-logs"  # logs of tests ciopt failed, kept after the run
CMD_TIMEOUT_S = 900
JOBS = "2"

# Test requirements every venv gets, pinned so that a rerun a year later measures the same thing.
PYTEST = "pytest==9.2.0"
XDIST = "pytest-xdist==3.8.0"

GITHUB = "https://github.com/{}.git"
MIRROR = Path("/work/.mirror")  # where the `fetch` tool puts snapshots: owner+name/repo


@dataclass(frozen=True)
class Repo:
    name: str
    github: str  # owner/name
    commit: str  # the pin: the replay ends here, every row but replay runs here
    # pip install arguments, run in the clone at the pin (as each project's CI does, except that
    # the install is editable: the replay checks out other commits and tests must import those).
    install: tuple[str, ...]
    shape: str

    @property
    def root(self) -> Path:
        return corpus.CORPUS / f"pytest-{self.name}"

    @property
    def venv(self) -> Path:
        return corpus.CORPUS / f"pytest-{self.name}-venv"

    def sources(self) -> list[str]:
        local = MIRROR / self.github.replace("/", "+") / "repo"
        return [str(local)] if local.exists() else [GITHUB.format(self.github)]


REPOS: dict[str, Repo] = {r.name: r for r in (
    # 2026-08-20 "Add FAQ entry about UnicodeEncodeError on Windows (#3778)". CI: tox, wheel +
    # dependency group `tests` (pytest).
    Repo("click", "pallets/click", "2c8cd3ac958a7eb316d67f2d316c27086c4c0369",
         ("-e", ".", PYTEST, XDIST), "src-layout, 34 test files, small conftest"),
    # 2026-08-12 "Merge pull request #1238 from more-itertools/flit-no-setup-py". CI: `pip install
    # --editable .` then unittest; pytest collects the same TestCase classes.
    Repo("more-itertools", "more-itertools/more-itertools", "2fe1b2eeb9d75f994113fe3ac76d14b6bcd6fb10",
         ("-e", ".", PYTEST, XDIST), "flat layout, 2 big test files"),
    # 2026-08-19 "statsutils: add mode() ... (#453)". CI: tox, dependency group `dev` (pytest>=8).
    Repo("boltons", "mahmoud/boltons", "967864f89791509f9eb36b22b4579d36b72a6df2",
         ("-e", ".", PYTEST, XDIST), "flat layout, 29 small test files, conftest hook"),
    # 2025-06-14 "Merge branch 'stable'" (main moves slowly: 20 first-parent commits reach 2024-08).
    # CI: tox, wheel + dependency group `tests` (pytest, pytest-timeout, trio).
    Repo("jinja", "pallets/jinja", "5ef70112a1ff19c05324ff889dd30405b1002044",
         ("-e", ".", PYTEST, XDIST, "pytest-timeout==2.4.0", "trio==0.35.0"),
         "src-layout, 22 test files, fixture-heavy conftest, data files"),
)}

PER_FILE_COUNT = 200
PER_FILE_ROOT = corpus.CORPUS / f"pytest-perfile{PER_FILE_COUNT}"
PER_FILE_VENV = corpus.CORPUS / f"pytest-perfile{PER_FILE_COUNT}-venv"

# Written into a clone's .git/info/exclude (the workspace marker is added by mark_workspace).
EXCLUDES = ("/ciopt-out/", "/.pytest_cache/", "__pycache__/")
# pytest's config files, in its own order of precedence (_pytest/config/findpaths.py).
PYTEST_CONFIG_SECTIONS = (("pytest.ini", None), (".pytest.ini", None),
                          ("pyproject.toml", "[tool.pytest.ini_options]"), ("tox.ini", "[pytest]"),
                          ("setup.cfg", "[tool:pytest]"))

ISOLATING_INI = "# pytest_bench.py: keeps pytest from climbing to ciopt's own pyproject.toml\n[pytest]\n"

# ciopt JSON: a test "ran" when it was executed now (passed or not).
RAN_STATUSES = ("executed", "failed")


# --- running commands ----------------------------------------------------------------------------

@dataclass
class Ran:
    seconds: float
    rc: int
    stdout: bytes
    stderr: bytes

    def err_tail(self, n: int = 600) -> str:
        return self.stderr.decode(errors="replace").strip()[-n:]


def execute(argv: list[str], cwd: Path, env: dict[str, str] | None = None, capture: bool = False,
            timeout: float = CMD_TIMEOUT_S) -> Ran:
    """Run one command and time it; unlike harness.run a non-zero exit is a result, not an error
    (a failing test suite is something the bench reports)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, timeout=timeout,
                              stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired as e:
        raise harness.ChildFailed(f"`{' '.join(argv)}` (cwd {cwd}) timed out after {timeout} s") from e
    return Ran(time.perf_counter() - t0, proc.returncode, proc.stdout or b"", proc.stderr or b"")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout.decode(
        "utf-8", "surrogateescape")


def child_env(venv: Path, store: Path | None = None) -> dict[str, str]:
    """The environment both sides run in: the repo's venv active, none of the user's settings."""
    drop = {"CIOPT_CONFIG", "CIOPT_DISABLE", "CIOPT_CACHE_DIR", "PYTHONDONTWRITEBYTECODE",
            "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    ours = str(CIOPT_CLI.parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != ours]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    if store is not None:
        env["CIOPT_CACHE_DIR"] = str(store)
    return env


def fresh_store() -> Path:
    return harness.fresh_store(SCRATCH)


@dataclass
class Suite:
    """One repository ready to run: its root, venv, and the commands of both sides."""

    name: str
    root: Path
    venv: Path

    def pytest(self, *args: str, capture: bool = False) -> Ran:
        return execute([str(self.venv / "bin" / "pytest"), *args], self.root, child_env(self.venv),
                       capture=capture)

    def ciopt(self, store: Path, *args: str) -> Ran:
        return execute([str(CIOPT_CLI), "test", "//...", "-j", JOBS, *args, "-o", "json"], self.root,
                       child_env(self.venv, store), capture=True)

    def freeze(self) -> list[str]:
        """The venv's packages, for the JSON (the pins above are not the whole story)."""
        out = subprocess.run([str(self.venv / "bin" / "python"), "-m", "pip", "freeze"],
                             capture_output=True, text=True, env=child_env(self.venv))
        return out.stdout.split()

    def cold(self, *args: str) -> tuple[Ran, Path]:
        """A ciopt run from nothing: no ciopt-out/, an empty store (returned, for a warm run)."""
        shutil.rmtree(self.root / "ciopt-out", ignore_errors=True)
        store = fresh_store()
        return self.ciopt(store, *args), store


# --- ciopt's JSON --------------------------------------------------------------------------------

def label_file(label: str) -> str:
    """//tests/test_utils:test_echo -> tests/test_utils/test_echo.py (zero-config labels name the
    file's directory and stem: ciopt.infer.graph.inferred_label)."""
    pkg, _, name = label.removeprefix("//").partition(":")
    return f"{pkg}/{name}.py" if pkg else f"{name}.py"


@dataclass
class Report:
    """What one `ciopt test -o json` said, read defensively."""

    rc: int
    doc: dict[str, Any] | None
    problem: str | None = None  # why there is no usable document
    missing: set[str] = field(default_factory=set)  # fields the contract has and the JSON lacked

    @classmethod
    def parse(cls, ran: Ran) -> Report:
        try:
            doc = json.loads(ran.stdout)
        except ValueError:
            return cls(ran.rc, None, f"exit {ran.rc}, no JSON on stdout: {ran.err_tail()}")
        if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
            return cls(ran.rc, None, f"exit {ran.rc}, JSON without tests[]: {ran.err_tail()}")
        r = cls(ran.rc, doc)
        for t in r.tests:
            for key in ("file", "cases", "status", "outcome"):
                if key not in t:
                    r.missing.add(f"tests[].{key}" + (" (it has tests[].files)"
                                                      if key == "file" and "files" in t else ""))
        return r

    @property
    def tests(self) -> list[dict[str, Any]]:
        return self.doc["tests"] if self.doc else []

    @staticmethod
    def files_of(t: dict[str, Any]) -> list[str]:
        """The test files a test target runs: `file`, else a `files` list, else from its label."""
        if t.get("file"):
            return [t["file"]]
        if isinstance(t.get("files"), list) and t["files"]:
            return list(t["files"])
        return [label_file(t.get("label", ""))]

    def ran(self) -> int:
        """Test files run now (a target may batch several files)."""
        return sum(len(self.files_of(t)) for t in self.tests if t.get("status") in RAN_STATUSES)

    def total(self) -> int:
        return sum(len(self.files_of(t)) for t in self.tests)

    def interpreter(self) -> str | None:
        """The Python ciopt ran the tests with (summary.python.executable), when it says."""
        py = (self.doc or {}).get("summary", {}).get("python")
        return py.get("executable") if isinstance(py, dict) else None

    def counts(self) -> str:
        if self.doc is None:
            return self.problem or "no report"
        c = Counter(t.get("status", "?") for t in self.tests)
        o = Counter(t.get("outcome", "?") for t in self.tests)
        return (f"exit {self.rc}, {len(self.tests)} tests: "
                + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + "; outcomes "
                + ", ".join(f"{k} {v}" for k, v in sorted(o.items())))

    def failures(self, keep_as: str | None = None) -> list[str]:
        """One line per test that did not pass: its failing cases and its log. With `keep_as`, each
        log is copied to benches/.corpus/pytest-logs/ (the next run overwrites ciopt-out/)."""
        out = []
        for t in self.tests:
            if t.get("outcome") in ("passed", "skipped_unaffected", "flaky"):
                continue
            bad = [c.get("nodeid", "?").rpartition("::")[2] + f" {c.get('outcome')}"
                   for c in t.get("cases") or [] if c.get("outcome") in ("failed", "error")]
            log = t.get("log")
            if keep_as and log and Path(log).is_file():
                LOGS.mkdir(parents=True, exist_ok=True)
                label = t.get("label", "?").strip("/").replace("/", "_").replace(":", ".")
                kept = LOGS / f"{keep_as}-{label}.log"
                shutil.copyfile(log, kept)
                log = str(kept)
            out.append(f"{t.get('label')}: {t.get('outcome')}"
                       + (f" [{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}]" if bad else "")
                       + f" (log {log})")
        return out


def ciopt_features() -> dict[str, bool]:
    """Which of the contract's options this ciopt accepts (read from its --help)."""
    try:
        text = subprocess.run([str(CIOPT_CLI), "test", "--help"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    return {opt: f"--{opt}" in text for opt in ("affected-since", "no-batch")}


# --- corpora -------------------------------------------------------------------------------------

def _exclude(root: Path, patterns: tuple[str, ...]) -> None:
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    new = [p for p in patterns if p not in lines]
    if new:
        with exclude.open("a") as f:
            f.write("".join(f"{p}\n" for p in new))


def has_pytest_config(root: Path) -> bool:
    for name, section in PYTEST_CONFIG_SECTIONS:
        p = root / name
        if p.is_file() and (section is None or section in p.read_text(errors="replace")):
            return True
    return False


def isolate(root: Path) -> list[str]:
    """Make a clone behave as if it stood alone (see the module docstring); what was added."""
    corpus.mark_workspace(root)
    added = [corpus.WORKSPACE_MARKER]
    ini = root / "pytest.ini"
    tracked_ini = bool(git(root, "ls-files", "pytest.ini").strip())
    if not tracked_ini and (ini.exists() or not has_pytest_config(root)):
        if not ini.exists() or ini.read_text() != ISOLATING_INI:
            ini.write_text(ISOLATING_INI)
        _exclude(root, ("/pytest.ini",))
        added.append("pytest.ini")
    _exclude(root, EXCLUDES)
    return added


def clone(repo: Repo) -> Path:
    """The repository at its pin, cloned once (with the history the replay needs)."""
    dest = repo.root
    if not corpus._done_marker(dest).exists():
        tmp = corpus._fresh(dest)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        for source in repo.sources():
            corpus.log(f"cloning {source} into {dest.name} (one-time)")
            if subprocess.run(["git", "clone", "-q", "--no-checkout", source, str(tmp)]).returncode == 0:
                break
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise RuntimeError(f"could not clone {repo.github}")
        try:
            checkout(tmp, repo.commit)
        except subprocess.CalledProcessError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"{repo.github} has no commit {repo.commit}") from None
        corpus._publish(tmp, dest)
    return dest


def checkout(root: Path, rev: str, *flags: str) -> None:
    corpus._git(root, "-c", "advice.detachedHead=false", "checkout", "-q", *flags, "--detach", rev)


def at_pin(root: Path, commit: str) -> None:
    """Back to the pinned commit with a clean tree (a replay interrupted midway leaves another)."""
    head = git(root, "rev-parse", "HEAD").strip()
    if head != commit or git(root, "status", "--porcelain").strip():
        checkout(root, commit, "-f")
        corpus._git(root, "clean", "-q", "-fd")  # untracked files only; ignored ones stay


def make_venv(venv: Path, install: tuple[str, ...], cwd: Path) -> None:
    """A venv holding `install`, built once; rebuilt when `install` changes (its marker says)."""
    spec = json.dumps([sys.version.split()[0], *install])
    marker = corpus._done_marker(venv)
    if marker.exists() and marker.read_text() == spec and (venv / "bin" / "pytest").exists():
        return
    corpus.log(f"creating {venv.name}: pip install {' '.join(install)}")
    if venv.exists():
        shutil.rmtree(venv)
    marker.unlink(missing_ok=True)
    # Built in place: a venv's scripts name its own path, so it cannot be renamed into place.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV")}
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*pip, *install], check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    marker.write_text(spec)


def prepare(repo: Repo) -> Suite:
    root = clone(repo)
    at_pin(root, repo.commit)
    isolate(root)
    make_venv(repo.venv, repo.install, root)
    return Suite(repo.name, root, repo.venv)


def per_file_suite() -> Suite:
    """200 trivial test files in tests/, committed to their own git repository."""
    root = PER_FILE_ROOT
    if not corpus._done_marker(root).exists():
        corpus.log(f"generating {root.name}")
        tmp = corpus._fresh(root)
        (tmp / "tests").mkdir(parents=True)
        for i in range(PER_FILE_COUNT):
            (tmp / "tests" / f"test_{i:03d}.py").write_text("def test_x():\n    assert 1\n")
        # Its own rootdir: pytest must not climb to ciopt's own pyproject.toml.
        (tmp / "pytest.ini").write_text("[pytest]\n")
        (tmp / ".gitignore").write_text("__pycache__/\n/ciopt-out/\n/.pytest_cache/\n")
        corpus._make_git_repo(tmp)
        corpus._publish(tmp, root)
    corpus.mark_workspace(root)
    make_venv(PER_FILE_VENV, (PYTEST, XDIST), root)
    return Suite(f"perfile{PER_FILE_COUNT}", root, PER_FILE_VENV)


def last_line(ran: Ran) -> str:
    lines = [ln for ln in ran.stdout.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip("= ") if lines else f"(no output) {ran.err_tail(300)}"


def setup(repos: list[Repo]) -> int:
    """Create whatever is missing and check that plain pytest passes at every pin."""
    bad = 0
    for repo in repos:
        t0 = time.perf_counter()
        s = prepare(repo)
        made = time.perf_counter() - t0
        ran = s.pytest("-q", "-p", "no:cacheprovider", capture=True)
        bad += ran.rc != 0
        print(f"{repo.name}: {repo.github}@{repo.commit[:12]} ready in {made:.1f} s; pytest exit "
              f"{ran.rc} in {ran.seconds:.1f} s: {last_line(ran)}", flush=True)
    s = per_file_suite()
    ran = s.pytest("-q", "-p", "no:cacheprovider", capture=True)
    bad += ran.rc != 0
    print(f"{s.name}: pytest exit {ran.rc} in {ran.seconds:.1f} s: {last_line(ran)}", flush=True)
    return 1 if bad else 0


# --- 1, 2, 3: cold and warm against pytest and pytest -n 2 ---------------------------------------

@dataclass
class Seen:
    """The ciopt reports of one row's repetitions, failures read while their logs still exist."""

    reports: list[Report] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, ran: Ran, keep_as: str | None = None) -> Report:
        rep = Report.parse(ran)
        self.reports.append(rep)
        self.failures += [f"repetition {len(self.reports)}: {f}" for f in rep.failures(keep_as)]
        if rep.problem:
            self.failures.append(f"repetition {len(self.reports)}: {rep.problem}")
        return rep

    def note(self, r: Result, key: str, venv: Path | None = None) -> None:
        """Counts of the last report; over all of them: missing fields, the interpreter, failures.
        `venv`: the interpreter ciopt should have run the tests with."""
        if not self.reports:
            return
        r.notes[key] = self.reports[-1].counts() + (" (the last repetition)" if len(self.reports) > 1 else "")
        missing = set().union(*(x.missing for x in self.reports))
        pythons = {x.interpreter() for x in self.reports if x.doc}
        if venv is not None and None in pythons:
            missing.add("summary.python")
        if missing:
            r.notes[f"{key}: missing from ciopt's JSON"] = ", ".join(sorted(missing))
        wrong = sorted(p for p in pythons if p and venv and not p.startswith(str(venv) + os.sep))
        if wrong and venv:
            r.notes[f"{key}: WRONG INTERPRETER (not {venv.name})"] = ", ".join(wrong)
        if self.failures:
            f = self.failures
            r.notes[f"{key}: not passed"] = f[:10] + ([f"... {len(f) - 10} more"] if len(f) > 10 else [])


@dataclass
class Config:
    repeat: int
    commits: int
    repos: list[Repo]
    features: dict[str, bool] = field(default_factory=dict)
    # The first cold report of each repository, reused by outcomes[R] (a cold run costs as much
    # as a pytest run).
    cold_reports: dict[str, Seen] = field(default_factory=dict)


def bench_suite(repo: Repo, cfg: Config, results: list[Result]) -> None:
    s = prepare(repo)
    n = repo.name
    # Warm-up, untimed: the page cache, both sides' bytecode; the cold report feeds outcomes[R].
    base = s.pytest(capture=True)
    first, store = s.cold()
    shutil.rmtree(store, ignore_errors=True)
    cfg.cold_reports[n] = Seen()
    cfg.cold_reports[n].add(first, keep_as=f"{n}-outcomes")

    cold_t: list[float] = []
    warm_t: list[float] = []
    py_t: list[float] = []
    xd_t: list[float] = []
    cold_seen, warm_seen = Seen(), Seen()
    peer_fail: list[str] = []

    def ours() -> None:
        i = len(cold_t) + 1
        ran, store = s.cold()
        try:
            cold_seen.add(ran, keep_as=f"{n}-cold{i}")  # before the warm run rewrites the logs
            warm = s.ciopt(store)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        warm_seen.add(warm, keep_as=f"{n}-warm{i}")
        cold_t.append(ran.seconds)
        warm_t.append(warm.seconds)

    def peers() -> None:
        for argv, into in (((), py_t), (("-n", JOBS), xd_t)):
            ran = s.pytest(*argv, capture=True)
            into.append(ran.seconds)
            if ran.rc:
                peer_fail.append(f"repetition {len(into)}: pytest {' '.join(argv)} exit {ran.rc}: "
                                 f"{last_line(ran)}")

    for i in range(cfg.repeat):
        for step in ((ours, peers) if i % 2 == 0 else (peers, ours)):
            step()

    cold = fill(Result(f"cold_vs_pytest[{n}]", "pytest (one process)", "goal <= 0.75",
                       max_ratio=0.75), cold_t, py_t)
    cold.notes["repo"] = f"{repo.github}@{repo.commit[:12]} ({repo.shape})"
    cold.notes["pytest at the pin"] = f"exit {base.rc}: {last_line(base)}"
    if peer_fail:
        cold.notes["pytest failures while timed"] = peer_fail
    cold.notes["samples ours / peer"] = f"{fmt_samples(cold_t)} / {fmt_samples(py_t)}"
    cold_seen.note(cold, "ciopt cold", s.venv)
    cold.extra["venv"] = s.freeze()
    emit(cold, results)

    xd = fill(Result(f"cold_vs_xdist[{n}]", f"pytest -n {JOBS} (pytest-xdist)", "goal <= 1.05",
                     max_ratio=1.05), cold_t, xd_t)
    xd.notes["samples ours / peer"] = f"{fmt_samples(cold_t)} / {fmt_samples(xd_t)}"
    emit(xd, results)

    warm = fill(Result(f"warm_vs_pytest[{n}]", "pytest (one process)", "goal <= 0.05",
                       max_ratio=0.05), warm_t, py_t)
    warm.notes["samples ours / peer"] = f"{fmt_samples(warm_t)} / {fmt_samples(py_t)}"
    warm.notes["test files ciopt ran again (of all)"] = ", ".join(
        f"{w.ran()}/{w.total()}" if w.doc else "?" for w in warm_seen.reports)
    warm_seen.note(warm, "ciopt warm", s.venv)
    emit(warm, results)


# --- outcomes: ciopt's per-test outcomes against pytest's junit XML ------------------------------

def junit_key(nodeid: str) -> tuple[str, str]:
    """(classname, name) as pytest's junitxml writes them for a nodeid (mangle_test_address)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = names[0].replace("/", ".")
    if names[0].endswith(".py"):
        names[0] = names[0][:-3]
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def read_junit(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """{(classname, name): (outcome, file)} from pytest's xunit1 report."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        kinds = [c.tag for c in tc]
        if "error" in kinds:
            outcome = "error"
        elif "failure" in kinds:
            outcome = "failed"
        elif "skipped" in kinds:
            sk = tc.find("skipped")
            outcome = "xfailed" if sk is not None and sk.get("type") == "pytest.xfail" else "skipped"
        else:
            outcome = "passed"
        out[(tc.get("classname", ""), tc.get("name", ""))] = (outcome, tc.get("file", ""))
    return out


# ciopt's case outcomes as junit can tell them (an xpass that is not strict is a pass there).
CASE_AS_JUNIT = {"xpassed": "passed"}


def bench_outcomes(repo: Repo, cfg: Config, results: list[Result]) -> None:
    s = prepare(repo)
    name = f"outcomes[{repo.name}]"
    seen = cfg.cold_reports.get(repo.name)
    if seen is None:
        ran, store = s.cold()
        shutil.rmtree(store, ignore_errors=True)
        seen = Seen()
        seen.add(ran, keep_as=f"{repo.name}-outcomes")
    rep = seen.reports[-1]
    SCRATCH.mkdir(parents=True, exist_ok=True)
    xml = SCRATCH / f"junit-{repo.name}.xml"
    base = s.pytest("-p", "no:cacheprovider", f"--junitxml={xml}", "-o", "junit_family=xunit1",
                    capture=True)
    r = Result(name, "pytest -p no:cacheprovider --junitxml (xunit1)", "goal: no difference")
    r.notes["pytest"] = f"exit {base.rc}: {last_line(base)}"
    if rep.doc is None or not xml.exists():
        r.error = rep.problem if rep.doc is None else f"pytest wrote no junit XML: {base.err_tail()}"
        emit(r, results)
        return
    junit = read_junit(xml)
    seen.note(r, "ciopt", s.venv)

    diffs: list[str] = []
    junit_files = {f for _, f in junit.values()}
    if all("cases" in t for t in rep.tests):
        ours: dict[tuple[str, str], tuple[str, str]] = {}
        for t in rep.tests:
            for c in t.get("cases") or []:
                outcome = CASE_AS_JUNIT.get(c.get("outcome"), c.get("outcome"))
                ours[junit_key(c.get("nodeid", ""))] = (outcome, c.get("nodeid", ""))
            if not t.get("cases") and t.get("status") != "skipped_unaffected":
                files = Report.files_of(t)
                why = ("pytest does not collect it" if not set(files) & junit_files
                       else "pytest ran cases of it")
                diffs.append(f"{', '.join(files)}: ciopt runs it as a test, with no cases "
                             f"(outcome {t.get('outcome')}); {why}")
        for key in sorted(set(ours) | set(junit)):
            o, p = ours.get(key), junit.get(key)
            if o is None:
                diffs.append(f"{'::'.join(key)}: only pytest ran it ({p[0] if p else '?'})")
            elif p is None:
                diffs.append(f"{o[1]}: only ciopt ran it ({o[0]})")
            elif o[0] != p[0]:
                diffs.append(f"{o[1]}: ciopt {o[0]}, pytest {p[0]}")
        compared = len(set(ours) & set(junit))
        r.summary = (f"{compared} test cases compared, {len(diffs)} differ "
                     f"(ciopt {len(ours)} cases, pytest {len(junit)})")
    else:
        # No per-case results yet: a file passes under pytest when none of its cases failed.
        r.notes["compared"] = "per test file (ciopt's JSON has no tests[].cases)"
        by_file: dict[str, str] = {}
        for outcome, f in junit.values():
            bad = outcome in ("failed", "error")
            by_file[f] = "failed" if bad or by_file.get(f) == "failed" else "passed"
        ours_f = {f: t.get("outcome", "?") for t in rep.tests for f in Report.files_of(t)}
        for f in sorted(set(ours_f) | set(by_file)):
            of, pf = ours_f.get(f), by_file.get(f)
            if of is None:
                diffs.append(f"{f}: only pytest collected it ({pf})")
            elif pf is None:
                diffs.append(f"{f}: only ciopt has it ({of})")
            elif (of == "passed") != (pf == "passed"):
                diffs.append(f"{f}: ciopt {of}, pytest {pf}")
        r.summary = (f"{len(set(ours_f) & set(by_file))} test files compared, {len(diffs)} differ "
                     f"(ciopt {len(ours_f)} files, pytest {len(by_file)})")
    r.extra["differences"] = diffs
    r.extra["met"] = not diffs
    if diffs:
        r.notes["differences"] = diffs[:40] + ([f"... {len(diffs) - 40} more (all in the JSON)"]
                                               if len(diffs) > 40 else [])
    emit(r, results)


# --- replay: --affected-since over real commits --------------------------------------------------

def bench_replay(repo: Repo, cfg: Config, results: list[Result]) -> None:
    s = prepare(repo)
    root = s.root
    chain = git(root, "rev-list", "--first-parent", f"-n{cfg.commits + 1}", repo.commit).split()[::-1]
    affected = cfg.features.get("affected-since", False)
    r = Result(f"replay[{repo.name}]", "pytest, whole suite, at each commit",
               "goal per commit: ours <= (share + 0.1) x pytest")
    store = fresh_store()
    rows: list[dict[str, Any]] = []
    try:
        checkout(root, chain[0])
        warmup = Report.parse(s.ciopt(store))
        r.notes["warm-up at the oldest C^"] = f"{chain[0][:10]}: {warmup.counts()}"
        fails = warmup.failures(keep_as=f"{repo.name}-{chain[0][:10]}")
        if fails:
            r.notes["warm-up: not passed"] = fails
        for i, (parent, commit) in enumerate(zip(chain, chain[1:], strict=False)):
            checkout(root, commit)
            changed = git(root, "diff", "--name-only", parent, commit).split()
            args = ("--affected-since", parent) if affected else ()
            ours = peer = None
            for step in (("ours", "peer") if i % 2 == 0 else ("peer", "ours")):
                if step == "ours":
                    ours = s.ciopt(store, *args)
                else:
                    peer = s.pytest(capture=True)
            assert ours is not None and peer is not None
            rep = Report.parse(ours)
            total = rep.total()
            share = rep.ran() / total if total else float("nan")
            bound = (share + 0.1) * peer.seconds
            rows.append({
                "commit": commit, "parent": parent, "changed_files": len(changed),
                "ran": rep.ran(), "tests": total, "share": share, "ours_s": ours.seconds,
                "pytest_s": peer.seconds, "bound_s": bound, "met": ours.seconds <= bound,
                "ciopt_rc": ours.rc, "pytest_rc": peer.rc, "problem": rep.problem,
                "missing": sorted(rep.missing),
                "ciopt_failures": rep.failures(keep_as=f"{repo.name}-{commit[:10]}"),
                "pytest_summary": last_line(peer) if peer.rc else "",
                "subject": git(root, "log", "-1", "--format=%s", commit).strip()[:60],
            })
    finally:
        shutil.rmtree(store, ignore_errors=True)
        at_pin(root, repo.commit)

    fill(r, [x["ours_s"] for x in rows], [x["pytest_s"] for x in rows])
    met = sum(x["met"] for x in rows)
    baseline = [x for x in rows if x["pytest_rc"] != 0]
    ciopt_only = [x for x in rows if x["ciopt_rc"] != 0 and x["pytest_rc"] == 0]
    shares = [x["share"] for x in rows if x["tests"]]
    r.summary = (f"{len(rows)} commits, met {met}/{len(rows)}; median share "
                 f"{statistics.median(shares) if shares else float('nan'):.2f}, median ours "
                 f"{r.ours_s:.3g} s vs pytest {r.peer_s:.3g} s; {len(baseline)} baseline failures, "
                 f"{len(ciopt_only)} where only ciopt failed")
    if not affected:
        r.notes["fallback"] = ("this ciopt has no --affected-since: each commit is a plain warm "
                               "`ciopt test //... -j 2` (the cache does the selecting)")
    missing = sorted({m for x in rows for m in x["missing"]})
    if missing:
        r.notes["missing from ciopt's JSON"] = ", ".join(missing)
    r.notes["per commit (oldest first)"] = [
        f"{x['commit'][:10]} {x['changed_files']:>3} files changed, ran {x['ran']}/{x['tests']} "
        f"({x['share']:.2f}): ours {x['ours_s']:.2f} s, pytest {x['pytest_s']:.2f} s, bound "
        f"{x['bound_s']:.2f} s {'met' if x['met'] else 'MISSED'}"
        + (f"; ciopt exit {x['ciopt_rc']}" if x["ciopt_rc"] else "")
        + (f" ({'; '.join(x['ciopt_failures'][:3])})" if x["ciopt_failures"] else "")
        + (f"; BASELINE FAILURE: pytest exit {x['pytest_rc']}: {x['pytest_summary']}"
           if x["pytest_rc"] else "")
        + (f"; {x['problem'][:200]}" if x["problem"] else "")
        + f"  [{x['subject']}]"
        for x in rows]
    r.extra["commits"] = rows
    r.extra["met"] = met == len(rows)
    emit(r, results)


# --- per_file_200: the cost of a file --------------------------------------------------------------

def bench_per_file(cfg: Config, results: list[Result]) -> None:
    s = per_file_suite()
    corpus.settle(s.root)
    s.pytest()  # warm-up
    ours_t: list[float] = []
    peer_t: list[float] = []
    seen = Seen()
    for i in range(cfg.repeat):
        for side in (("ours", "peer") if i % 2 == 0 else ("peer", "ours")):
            if side == "ours":
                ran, store = s.cold()
                shutil.rmtree(store, ignore_errors=True)
                ours_t.append(ran.seconds)
                seen.add(ran, keep_as=f"{s.name}-cold{i + 1}")
            else:
                peer_t.append(s.pytest().seconds)
    r = fill(Result(f"per_file_{PER_FILE_COUNT}", "pytest (one process)", "goal <= 1.2",
                    max_ratio=1.2), ours_t, peer_t)
    r.notes["samples ours / peer"] = f"{fmt_samples(ours_t)} / {fmt_samples(peer_t)}"
    r.notes["per file, ours / peer"] = (f"{1e3 * statistics.median(ours_t) / PER_FILE_COUNT:.1f} ms / "
                                        f"{1e3 * statistics.median(peer_t) / PER_FILE_COUNT:.1f} ms")
    seen.note(r, "ciopt cold", s.venv)
    emit(r, results)


# --- the run -------------------------------------------------------------------------------------

def benches(repos: list[Repo]) -> dict[str, Callable[[Config, list[Result]], None]]:
    """Bench keys in run order; "a+b" keys produce several rows from the same repetitions."""
    out: dict[str, Callable[[Config, list[Result]], None]] = {}
    for repo in repos:
        out[f"cold_vs_pytest+cold_vs_xdist+warm_vs_pytest[{repo.name}]"] = functools.partial(
            bench_suite, repo)
        out[f"outcomes[{repo.name}]"] = functools.partial(bench_outcomes, repo)
    for repo in repos:
        out[f"replay[{repo.name}]"] = functools.partial(bench_replay, repo)
    out[f"per_file_{PER_FILE_COUNT}"] = bench_per_file
    return out


def machine_context(cfg: Config) -> dict[str, Any]:
    m = harness.machine_basics()
    m["ciopt"] = harness.dist_version("ciopt")
    m["pytest"] = PYTEST.split("==")[1]
    m["pytest_xdist"] = XDIST.split("==")[1]
    m["git"] = harness.tool_version(["git", "--version"])
    m["ciopt_test_options"] = ", ".join(f"--{k}" for k, v in cfg.features.items() if v) or "none"
    m["repos"] = ", ".join(f"{r.name}@{r.commit[:12]}" for r in cfg.repos)
    m["jobs"] = JOBS
    m["repeat"] = cfg.repeat
    m["replay_commits"] = cfg.commits
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    names = ("cold_vs_pytest", "cold_vs_xdist", "warm_vs_pytest", "outcomes", "replay",
             f"per_file_{PER_FILE_COUNT}")
    harness.add_common_args(ap, names, " (or a repository name: every row of it)",
                            quick_help="1 repetition and 3 replayed commits")
    ap.add_argument("--setup", action="store_true",
                    help="create the clones and venvs that are missing, run plain pytest at each "
                         "pin, and exit (exit 1 when a suite fails)")
    ap.add_argument("--repos", default=",".join(REPOS),
                    help=f"comma-separated, of {', '.join(REPOS)} (default: all)")
    ap.add_argument("--commits", type=int, default=20, help="replay: commits to replay")
    args = ap.parse_args(argv)

    try:
        repos = [REPOS[n] for n in args.repos.split(",") if n]
    except KeyError as e:
        ap.error(f"unknown repository {e}; choose from {', '.join(REPOS)}")
    if not CIOPT_CLI.exists():
        ap.error(f"{CIOPT_CLI} not installed (make develop)")
    if args.setup:
        return setup(repos)

    table = benches(repos)
    selected = harness.select(table, args.only)
    if not selected:
        ap.error("--only matched no bench")
    cfg = Config(repeat=1 if args.quick else max(1, args.repeat),
                 commits=3 if args.quick else max(1, args.commits), repos=repos,
                 features=ciopt_features())
    machine = machine_context(cfg)
    harness.print_machine(machine)
    try:
        results = harness.run_benches(table, selected, cfg)
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    return harness.finish(args.json, machine, results)


if __name__ == "__main__":
    sys.exit(main())
