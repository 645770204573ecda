"""CI replay: real repository history, run the way CI runs it, plain pytest against ciopt.

Run:  .venv/bin/python benches/ci_replay.py [--repo click,more-itertools] [--commits 50]
          [--mutations 20] [--backends serve,redis] [--concurrent 8 --runners 4] [--report-only]
      make bench-replay

For each repository (REPOS, pinned) the last --commits first-parent commits ending at the pin are
replayed oldest first. At every commit two simulated ephemeral runners start from empty
directories, one after the other (the order flips every commit so that drift hits both alike):

  baseline  fresh clone at the commit; `python -m venv`; `pip install` the project (editable) and
            its test requirements from a local wheelhouse; `pytest` (the whole suite)
  ciopt     fresh clone; an empty $CIOPT_CACHE_DIR; `ciopt cache restore` of .venv keyed by the
            dependency files (on a miss or partial hit: the same pip install, then `ciopt cache
            save`); `ciopt test //... --affected-since <previous commit>`

The ciopt runner's only memory is one shared cache that lives across commits: a `ciopt cache
serve` process (backend "serve") and, as a second run of the ciopt side over the same commits, a
real redis-server (backend "redis"; the baseline figures are reused). The Redis run leaves
selection off (`--redis-selection` turns it on): every test file then runs or comes from the
cache, which is where the test cache hit rate is measured; with selection, a test whose inputs
did not change is skipped before the cache is asked. Both runners clone from the
local mirror of the repository and install from the same wheelhouse (`pip download`, built once),
so installs are repeatable and equal for both sides.

Per commit: wall time of each phase on each side; test files run / cached / skipped as unaffected;
the dependency cache result (hit / partial / miss); pass/fail per test file on each side; and
`unsafe`: test files that failed at baseline but that ciopt did not run and fail.

Test cache hit rate: among the test files ciopt did not skip whose ActionKey had already passed at
an earlier commit of the run (their inputs did not change since then), the share served from the
cache.

Missed-failure check (--mutations N): the first N commits that change non-test Python source get,
after their normal runs, a deterministic bug in a function the commit changed
(benches/replay_mutation.py), the first mutant that makes the baseline suite fail. The mutant is
committed in the ciopt runner's clone, which runs `ciopt test //... --affected-since <previous>`
with a fresh local store against the shared cache: every file that failed at baseline must run and
fail (a miss otherwise). The next commit's normal run then shows whether the mutated run poisoned
the cache (`unsafe` there).

Concurrency (--concurrent K --runners 4): the last K commits again, ciopt side only, on 4 runners in
parallel against a fresh `ciopt cache serve`: errors (a ciopt exit other than 0/1, a crash, a
warning from the cache, a per-file outcome that differs from the replay's baseline) and hit rate.
The runners live at different paths, so each keeps its own venv snapshot (a venv is not
relocatable); test results are shared.

The committed results (benches/results/, 2-core machine, about 2.5 hours, phases in parallel
processes; `make bench-replay` runs the same phases one after another, with more mutants):
  ci_replay.py --repo click --mutations 0 --backends serve --concurrent 0
  ci_replay.py --repo click --backends redis --redis-commits 10 --concurrent 8 --concurrent-start 0 \
      --keep-rows --rows-part redis --scratch /tmp/ciopt-replay-click2
  ci_replay.py --repo jinja --redis-commits 20 --backends serve --concurrent 0
  ci_replay.py --repo jinja --backends redis --redis-commits 20 --concurrent 8 --keep-rows --rows-part redis \
      --scratch /tmp/ciopt-replay-jinja2
  ci_replay.py --repo jinja --backends '' --concurrent 0 --extra-mutations 6 --keep-rows --rows-part mutations \
      --scratch /tmp/ciopt-replay-jinja3
(click's mutants fail all 2,000 of its tests and cost minutes each under load, so the final click
run had none; jinja's range gave 15 and the commits before it 5 more.)

Outputs: benches/results/ci_replay.{md,json,png}; raw rows in benches/results/ci_replay-rows-<repo>.jsonl
(`--report-only` rebuilds the outputs from them). Timings are side by side on the same machine;
the baseline includes the venv creation and pip install a fresh runner pays.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cache_bench
import harness
import replay_mutation
import replay_report

REPO = harness.REPO
CIOPT = str(harness.CIOPT_CLI)
RESULTS = REPO / "benches" / "results"
MIRROR = Path("/work/.mirror")
CORPUS = REPO / "benches" / ".corpus"
WHEELHOUSE = CORPUS / "replay-wheelhouse"
PYTEST = "pytest==9.2.0"
JOBS = "2"
TIMEOUT_S = 1200.0
MUTANT_ATTEMPTS = 2  # mutants tried per commit; each costs one whole baseline suite


@dataclass(frozen=True)
class ReplayRepo:
    name: str
    github: str
    pin: str  # the newest replayed commit
    install: tuple[str, ...]  # pip install arguments (both sides)
    key_files: tuple[str, ...]  # what the dependency snapshot is keyed by (those that exist)
    shape: str

    def source(self) -> str:
        local = MIRROR / self.github.replace("/", "+") / "repo"
        return str(local) if local.exists() else f"https://github.com/{self.github}.git"


REPOS: dict[str, ReplayRepo] = {r.name: r for r in (
    # CI: tox, the wheel + dependency group `tests` (pytest). 34 test files; `import click` loads
    # every module, so a source change affects every test: the hard case for selection.
    # pytest as uv.lock pins it over the whole range: pytest 9.2 refuses the non-Collection
    # parametrize arguments of the older commits at collection, so the suite would not even run.
    ReplayRepo("click", "pallets/click", "2c8cd3ac958a7eb316d67f2d316c27086c4c0369",
               ("-e", ".", "pytest==9.0.2"), ("pyproject.toml",), "src-layout, 34 test files, ~2,000 tests"),
    # CI: `pip install --editable .`, then unittest; pytest collects the same classes. Two big test
    # files (~30 s), one module holding most of the code.
    # CI: tox, the wheel + dependency group `tests` (pytest, pytest-timeout, trio). 22 test files
    # and a fixture-heavy conftest; main moves slowly, so 50 commits reach back to the setuptools
    # era (setup.cfg, requirements/tests.txt).
    ReplayRepo("jinja", "pallets/jinja", "5ef70112a1ff19c05324ff889dd30405b1002044",
               ("-e", ".", PYTEST, "pytest-timeout==2.4.0", "trio==0.35.0", "MarkupSafe==3.0.3"),
               ("pyproject.toml", "setup.cfg", "setup.py", "requirements/tests.txt"),
               "src-layout, 22 test files, ~900 tests"),
    ReplayRepo("more-itertools", "more-itertools/more-itertools", "2fe1b2eeb9d75f994113fe3ac76d14b6bcd6fb10",
               ("-e", ".", PYTEST), ("pyproject.toml",), "flat layout, 2 big test files, ~21,000 subtests"),
)}


# --- running things ------------------------------------------------------------------------------

@dataclass
class Ran:
    seconds: float
    rc: int
    out: str
    err: str


def execute(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> Ran:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return Ran(time.perf_counter() - t0, p.returncode, p.stdout, p.stderr)
    except subprocess.TimeoutExpired as e:
        return Ran(time.perf_counter() - t0, 124, "", f"timed out after {timeout} s: {e}")


def must(r: Ran, what: str) -> Ran:
    if r.rc != 0:
        raise RuntimeError(f"{what} exited {r.rc}: {r.err.strip()[-1200:]}")
    return r


def clean_env() -> dict[str, str]:
    """This process's environment minus ciopt's own venv and anything ciopt or pip would read."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CIOPT_", "PIP_", "PYTEST_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH",
                                                                           "PYTHONDONTWRITEBYTECODE")}
    own_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != own_bin)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def runner_env(src: Path) -> dict[str, str]:
    env = clean_env()
    env["VIRTUAL_ENV"] = str(src / ".venv")
    env["PATH"] = f"{src / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def base_python() -> str:
    return getattr(sys, "_base_executable", sys.executable)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def cache_server(backend: str, workdir: Path) -> cache_bench.Server:
    """The shared cache every ciopt runner of one replay talks to, in an empty `workdir`: cache
    bench's `ciopt cache serve` (run with the replay's --ciopt) or redis-server."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if backend == "serve":
        return cache_bench.ServeServer(workdir, ciopt=CIOPT)
    if backend == "redis":
        return cache_bench.RedisServer(workdir)
    raise ValueError(backend)


# --- one runner ----------------------------------------------------------------------------------

def fresh_clone(repo: ReplayRepo, dest: Path, commit: str) -> float:
    shutil.rmtree(dest.parent, ignore_errors=True)
    dest.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    must(execute(["git", "clone", "-q", "--no-checkout", repo.source(), str(dest)], dest.parent), "git clone")
    must(execute(["git", "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit], dest), "git checkout")
    return time.perf_counter() - t0


def pip_install(repo: ReplayRepo, src: Path, create: bool) -> Ran:
    t0 = time.perf_counter()
    if create:
        must(execute([base_python(), "-m", "venv", str(src / ".venv")], src, clean_env()), "python -m venv")
    r = must(execute([str(src / ".venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                      "--find-links", str(WHEELHOUSE), *repo.install], src, runner_env(src)), "pip install")
    return Ran(time.perf_counter() - t0, r.rc, r.out, r.err)


def junit_files(path: Path) -> dict[str, str]:
    """pytest's JUnit XML (xunit1) -> {test file: passed | failed}."""
    files: dict[str, str] = {}
    if not path.exists():
        return files
    for case in ET.parse(path).getroot().iter("testcase"):
        f = case.get("file") or (case.get("classname", "").split(".")[0] + ".py")
        failed = case.find("failure") is not None or case.find("error") is not None
        files[f] = "failed" if failed or files.get(f) == "failed" else "passed"
    return files


def run_pytest(src: Path, junit: Path) -> tuple[Ran, dict[str, str]]:
    r = execute([str(src / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 f"--junitxml={junit}", "-o", "junit_family=xunit1"], src, runner_env(src))
    return r, junit_files(junit)


def baseline_runner(repo: ReplayRepo, work: Path, commit: str) -> dict[str, Any]:
    src = work / "src"
    clone_s = fresh_clone(repo, src, commit)
    install = pip_install(repo, src, create=True)
    test, files = run_pytest(src, work / "junit.xml")
    return {"clone_s": round(clone_s, 3), "install_s": round(install.seconds, 3), "test_s": round(test.seconds, 3),
            "total_s": round(clone_s + install.seconds + test.seconds, 3), "rc": test.rc,
            "tail": test.out.strip().splitlines()[-1:] if test.out.strip() else [],
            "files": files, "failed_files": sorted(f for f, s in files.items() if s == "failed")}


def write_config(path: Path, url: str, read_only: bool = False) -> Path:
    path.write_text(
        "# written by benches/ci_replay.py: the shared cache, nothing else switched on\n"
        "enabled: true\n"
        f"cache:\n  remote:\n    url: {url}\n    read_only: {'true' if read_only else 'false'}\n"
        "    timeout_s: 30\n    flush_timeout_s: 120\n")
    return path


def ciopt_env(src: Path, store: Path, config: Path) -> dict[str, str]:
    env = runner_env(src)
    env["CIOPT_CACHE_DIR"] = str(store)
    env["CIOPT_CONFIG"] = str(config)
    return env


def ciopt_test(src: Path, env: dict[str, str], since: str | None) -> tuple[Ran, dict[str, Any]]:
    select = ["--affected-since", since] if since else []
    r = execute([CIOPT, "test", "//...", "-j", JOBS, *select, "--no-progress", "-o", "json"], src, env)
    try:
        doc = json.loads(r.out) if r.out.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    return r, doc


def test_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """Per-file statuses, counts and keys of one `ciopt test -o json`."""
    keys = {a["label"]: a.get("key") for a in doc.get("actions", [])}
    files: dict[str, str] = {}
    counts = {"executed": 0, "failed": 0, "cached": 0, "skipped_unaffected": 0, "other": 0}
    file_keys: dict[str, str] = {}
    for t in doc.get("tests", []):
        status = t.get("status")
        outcome = t.get("outcome")
        if status in ("cached_local", "cached_remote"):
            state = "cached"
        elif status == "skipped_unaffected":
            state = "skipped_unaffected"
        elif status == "failed" or outcome == "failed":
            state = "failed"
        elif status == "executed":
            state = "executed"
        else:
            state = "other"
        counts[state] += 1
        for f in t.get("files") or []:
            files[f] = state
            if keys.get(t["label"]):
                file_keys[f] = keys[t["label"]]
    return {"tests": counts, "files": files, "file_keys": file_keys,
            "failed_files": sorted(f for f, s in files.items() if s == "failed")}


def ciopt_runner(repo: ReplayRepo, work: Path, commit: str, since: str | None, url: str,
                 snapshot: str) -> dict[str, Any]:
    src, store = work / "src", work / "store"
    clone_s = fresh_clone(repo, src, commit)
    store.mkdir()
    env = ciopt_env(src, store, write_config(work / "ciopt.yaml", url))
    key_files = [f for f in repo.key_files if (src / f).exists()]
    key_args = [a for f in key_files for a in ("--key-file", f)]
    errors: list[str] = []
    restore = execute([CIOPT, "cache", "restore", snapshot, ".venv", *key_args, "-o", "json"], src, env)
    try:
        dep = json.loads(restore.out)["result"] if restore.rc == 0 else "miss"
    except (json.JSONDecodeError, KeyError):
        dep = "miss"
    if restore.rc != 0:
        errors.append(f"cache restore exited {restore.rc}: {restore.err.strip()[-300:]}")
    install_s = save_s = 0.0
    if dep != "hit":
        install_s = pip_install(repo, src, create=dep == "miss" or not (src / ".venv" / "bin" / "python").exists()).seconds
        save = execute([CIOPT, "cache", "save", snapshot, ".venv", *key_args, "-o", "json"], src, env)
        save_s = save.seconds
        if save.rc != 0:
            errors.append(f"cache save exited {save.rc}: {save.err.strip()[-300:]}")
    test, doc = ciopt_test(src, env, since)
    if test.rc not in (0, 1) or not doc:
        errors.append(f"ciopt test exited {test.rc}: {test.err.strip()[-500:]}")
    warnings = [line for line in test.err.splitlines() if line.startswith("warning")]
    figures = test_figures(doc)
    return {"clone_s": round(clone_s, 3), "restore_s": round(restore.seconds, 3), "install_s": round(install_s, 3),
            "save_s": round(save_s, 3), "test_s": round(test.seconds, 3),
            "total_s": round(clone_s + restore.seconds + install_s + save_s + test.seconds, 3),
            "rc": test.rc, "dependencies": dep, "warnings": warnings[:10], "errors": errors,
            "selection": (doc.get("summary") or {}).get("selection"), **figures}


def compare(baseline: dict[str, Any] | None, ours: dict[str, Any]) -> None:
    """Files that failed at baseline but that ciopt did not run and fail."""
    if baseline is None:
        return
    ours["unsafe"] = sorted(f for f in baseline["failed_files"] if ours["files"].get(f) != "failed")
    ours["only_ciopt_failed"] = sorted(f for f in ours["failed_files"] if baseline["files"].get(f) != "failed")


# --- the replay ----------------------------------------------------------------------------------

def commit_range(repo: ReplayRepo, count: int) -> list[tuple[str, str, str]]:
    """(commit, previous first-parent commit, subject), oldest first."""
    mirror = CORPUS / f"replay-{repo.name}.git"
    if not mirror.exists():
        must(execute(["git", "clone", "-q", "--bare", repo.source(), str(mirror)], CORPUS), "git clone --bare")
    lines = git(mirror, "log", "--first-parent", f"-{count + 1}", "--format=%H %s", repo.pin).splitlines()
    shas = [(ln.split(" ", 1) + [""])[:2] for ln in lines]
    shas.reverse()
    return [(shas[i][0], shas[i - 1][0], shas[i][1]) for i in range(1, len(shas))]


ROWS_PART = ""  # --rows-part: a phase run by a second process appends to its own file


def rows_file(repo: str) -> Path:
    return RESULTS / f"ci_replay-rows-{repo}{'-' + ROWS_PART if ROWS_PART else ''}.jsonl"


def emit(row: dict[str, Any]) -> None:
    # One write() on an O_APPEND descriptor: a row is never split, whatever its size.
    fd = os.open(rows_file(row["repo"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def known_keys_update(known: dict[str, str], ours: dict[str, Any]) -> None:
    for f, state in ours["files"].items():
        if state in ("executed", "cached") and f in ours["file_keys"]:
            known[f] = ours["file_keys"][f]


def eligible_hits(known_passed: set[str], ours: dict[str, Any]) -> None:
    """Test files not skipped whose key already passed earlier in the run, and how many were hits."""
    eligible = [f for f, state in ours["files"].items()
                if state in ("executed", "cached", "failed") and ours["file_keys"].get(f) in known_passed]
    ours["eligible"] = len(eligible)
    ours["eligible_hits"] = sum(1 for f in eligible if ours["files"][f] == "cached")
    ours["eligible_misses"] = sorted(f for f in eligible if ours["files"][f] != "cached")


def mutation_check(repo: ReplayRepo, scratch: Path, commit: str, prev: str, url: str,
                   baseline: dict[str, Any]) -> dict[str, Any]:
    """Find a mutant of a changed function that fails the baseline suite; ciopt must fail those files."""
    bsrc = scratch / "baseline" / "src"
    attempts: list[str] = []
    for mutant in replay_mutation.mutants(bsrc, prev, commit):
        if len(attempts) >= MUTANT_ATTEMPTS:
            break
        attempts.append(mutant.describe())
        replay_mutation.apply(bsrc, mutant)
        r, files = run_pytest(bsrc, scratch / "baseline" / "junit-mutant.xml")
        git(bsrc, "checkout", "--", mutant.path)
        failed = sorted(f for f, s in files.items() if s == "failed")
        if not set(failed) - set(baseline["failed_files"]):
            continue
        # The ciopt runner's clone (at `commit`, its venv in place) gets the mutant as a commit, and
        # a fresh local store: only the shared cache could hide the failure.
        work = scratch / "ciopt"
        src = work / "src"
        replay_mutation.apply(src, mutant)
        git(src, "-c", "user.name=replay", "-c", "user.email=replay@localhost", "commit", "-qam",
            f"mutation: {mutant.describe()}")
        shutil.rmtree(work / "store-mutant", ignore_errors=True)
        (work / "store-mutant").mkdir()
        env = ciopt_env(src, work / "store-mutant", write_config(work / "ciopt-mutant.yaml", url))
        t, doc = ciopt_test(src, env, prev)
        ours = test_figures(doc)
        missed = sorted(f for f in failed if ours["files"].get(f) != "failed")
        return {"mutant": mutant.describe(), "attempts": attempts, "baseline_failed": failed,
                "baseline_test_s": round(r.seconds, 3), "ciopt_test_s": round(t.seconds, 3), "ciopt_rc": t.rc,
                "ciopt_failed": ours["failed_files"], "missed": missed,
                "missed_status": {f: ours["files"].get(f, "absent") for f in missed}}
    return {"mutant": None, "attempts": attempts,
            "why": "no changed function" if not attempts else "no mutant failed the baseline suite"}


def replay(repo: ReplayRepo, commits: list[tuple[str, str, str]], scratch: Path, backend: str,
           with_baseline: bool, mutations: int, baselines: dict[str, dict[str, Any]],
           selection: bool = True, until_mutated: bool = False) -> None:
    server = cache_server("serve" if backend.startswith("serve") else backend, scratch / f"server-{backend}")
    known_passed: set[str] = set()
    mutated_left = mutations
    after_mutation = False
    try:
        for i, (commit, prev, subject) in enumerate(commits):
            if until_mutated and mutated_left == 0 and not after_mutation:
                break  # the sample is complete, and the commit after the last mutant has run
            row: dict[str, Any] = {"phase": "replay", "repo": repo.name, "backend": backend, "index": i,
                                   "commit": commit, "prev": prev, "subject": subject, "selection": selection}
            sides = ["baseline", "ciopt"] if i % 2 == 0 else ["ciopt", "baseline"]
            for side in sides:
                if side == "baseline" and with_baseline:
                    row["baseline"] = baseline_runner(repo, scratch / "baseline", commit)
                elif side == "ciopt":
                    row["ciopt"] = ciopt_runner(repo, scratch / "ciopt", commit, prev if selection else None,
                                                server.url, f"venv-{repo.name}")
            base = row.get("baseline") or baselines.get(commit)
            if base is not None:
                row.setdefault("baseline_ref", "reused" if "baseline" not in row else "run")
            compare(base, row["ciopt"])
            eligible_hits(known_passed, row["ciopt"])
            known_passed.update(k for f, k in row["ciopt"]["file_keys"].items()
                                if row["ciopt"]["files"].get(f) in ("executed", "cached"))
            if after_mutation:
                row["after_mutation"] = True
                after_mutation = False
            if (mutated_left > 0 and with_baseline and replay_mutation.changed_source_lines(
                    scratch / "baseline" / "src", prev, commit)):
                row["mutation"] = mutation_check(repo, scratch, commit, prev, server.url, row["baseline"])
                if row["mutation"]["mutant"]:
                    mutated_left -= 1
                    after_mutation = True
            if "baseline" in row:
                baselines[commit] = row["baseline"]
            emit(row)
            c, b = row["ciopt"], base
            log(f"{repo.name} {backend} {i + 1}/{len(commits)} {commit[:10]}: "
                f"baseline {b['total_s'] if b else '-'} s, ciopt {c['total_s']} s "
                f"(deps {c['dependencies']}, tests {c['tests']}, eligible {c['eligible_hits']}/{c['eligible']})"
                + (f", mutation {row['mutation'].get('mutant')} missed {row['mutation'].get('missed')}"
                   if row.get("mutation") else "")
                + (f", UNSAFE {c['unsafe']}" if c.get("unsafe") else "")
                + (f", errors {c['errors']}" if c["errors"] else ""))
    finally:
        server.stop()


def replay_concurrently(repo: ReplayRepo, commits: list[tuple[str, str, str]], scratch: Path, runners: int,
               baselines: dict[str, dict[str, Any]]) -> None:
    server = cache_server("serve", scratch / "server-concurrent")
    slots = list(range(runners))  # free runner directories
    lock = threading.Lock()

    def job(item: tuple[int, tuple[str, str, str]]) -> dict[str, Any]:
        i, (commit, prev, subject) = item
        with lock:
            slot = slots.pop()
        try:
            ours = ciopt_runner(repo, scratch / f"runner-{slot}", commit, prev, server.url,
                                f"venv-{repo.name}-runner{slot}")
        except Exception as e:  # a runner that crashes is an error to count, not the end of the bench
            ours = {"errors": [f"runner crashed: {e}"], "tests": {}, "files": {}, "failed_files": [],
                    "total_s": 0.0, "dependencies": "miss"}
        finally:
            with lock:
                slots.append(slot)
        errors = list(ours.get("errors", [])) + [f"cache warning: {w}" for w in ours.get("warnings", [])]
        base = baselines.get(commit)
        if base is not None and ours.get("files"):
            compare(base, ours)
            errors += [f"{f}: failed at baseline, ciopt {ours['files'].get(f, 'absent')}" for f in ours["unsafe"]]
        row = {"phase": "concurrent", "repo": repo.name, "backend": "serve", "index": i, "runner": slot,
               "commit": commit, "prev": prev, "subject": subject, "ciopt": ours, "errors": errors}
        emit(row)
        log(f"{repo.name} concurrent runner {slot} {commit[:10]}: {ours.get('total_s')} s, "
            f"tests {ours.get('tests')}, errors {errors}")
        return row

    try:
        with concurrent.futures.ThreadPoolExecutor(runners) as pool:
            list(pool.map(job, enumerate(commits)))
    finally:
        server.stop()


# --- setup and main ------------------------------------------------------------------------------

def wheelhouse(repos: list[ReplayRepo]) -> None:
    """Every wheel the installs need, downloaded once (pip's isolated builds included); one pip
    download per repository, since two may pin different versions of the same package."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    marker = WHEELHOUSE / ".done"
    done = set(marker.read_text().splitlines()) if marker.exists() else set()
    for r in repos:
        reqs = sorted({"flit_core>=3.2,<4", "setuptools", "wheel", *(a for a in r.install if a not in ("-e", "."))})
        line = " ".join(reqs)
        if line in done:
            continue
        log(f"wheelhouse {WHEELHOUSE}: pip download {line} (one time)")
        must(execute([sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE), *reqs], REPO),
             "pip download")
        done.add(line)
        marker.write_text("\n".join(sorted(done)) + "\n")


def rows_files(repo: str) -> list[Path]:
    """Every rows file of `repo`, parts included (not those of a repository whose name extends it)."""
    return [p for p in sorted(RESULTS.glob(f"ci_replay-rows-{repo}*.jsonl"))
            if p.name == f"ci_replay-rows-{repo}.jsonl" or p.name.startswith(f"ci_replay-rows-{repo}-")]


def read_rows(repo: str) -> list[dict[str, Any]]:
    return [json.loads(line) for path in rows_files(repo) for line in path.read_text().splitlines() if line.strip()]


def report(repos: list[str], machine: dict[str, Any]) -> None:
    by_repo = {name: read_rows(name) for name in repos}
    by_repo = {k: v for k, v in by_repo.items() if v}
    summaries = []
    for name, rs in by_repo.items():
        r = REPOS[name]
        serve = [x for x in rs if x["phase"] == "replay" and x["backend"] == "serve"]
        rng = f"{serve[0]['prev'][:10]}..{serve[-1]['commit'][:10]}" if serve else ""
        summaries.append(replay_report.summarize(name, rs, {"github": r.github, "range": rng}))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ci_replay.md").write_text(replay_report.markdown(summaries, by_repo, machine))
    replay_report.write_json(RESULTS / "ci_replay.json", summaries, machine)
    why = replay_report.plot(by_repo, RESULTS / "ci_replay.png")
    if why:
        log(why)
    for s in summaries:
        print(f"{s['repo']} ({s['range']}, {s['commits']} commits): baseline {s['baseline_s']} s, ciopt {s['ciopt_s']} s, "
              f"time cut {s['time_cut']} (median {s['median_time_cut']}; goal >= 0.70), "
              f"dependency hits {s['dependency_hit_rate']} (goal >= 0.90), "
              f"test cache hits {s['test_cache_hit_rate']} of {s['test_cache_eligible']} (goal >= 0.99), "
              f"missed failures {s['missed_failures']} in {s['mutations']} mutations (goal 0), "
              f"concurrent errors {s['concurrent_errors']} in {s['concurrent_commits']} runs (goal 0)"
              + (f"; Redis: time cut {s['redis']['time_cut']}, test cache hits {s['redis']['test_cache_hit_rate']}"
                 if "redis" in s else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default="click,jinja",
                    help=f"comma-separated, of {', '.join(REPOS)} (default: the two the README reports)")
    ap.add_argument("--commits", type=int, default=50, help="first-parent commits replayed per repository")
    ap.add_argument("--mutations", type=int, default=20, help="commits given a mutant (missed-failure check)")
    ap.add_argument("--backends", default="serve,redis",
                    help="shared caches replayed, in order: serve (with the baseline runner), redis "
                         "(ciopt side only; baselines from this run or, with --keep-rows, the saved rows); "
                         "'' for none")
    ap.add_argument("--redis-commits", type=int, default=0, help="commits of the Redis run (0: all)")
    ap.add_argument("--redis-selection", action=argparse.BooleanOptionalAction, default=False,
                    help="--affected-since in the Redis run too (default: off, so that every test "
                         "file runs or is a cache hit: the test cache hit rate is measured there)")
    ap.add_argument("--concurrent", type=int, default=8, help="commits replayed by the parallel runners (0: none)")
    ap.add_argument("--concurrent-start", type=int, default=None,
                    help="index of the first commit the parallel runners replay (default: the last --concurrent)")
    ap.add_argument("--runners", type=int, default=4)
    ap.add_argument("--extra-mutations", type=int, default=0,
                    help="mutants from source-changing commits before the range (when the range has "
                         "too few), replayed with their baselines as backend serve-extra")
    ap.add_argument("--extra-mutations-window", type=int, default=60,
                    help="first-parent commits before the range searched for --extra-mutations")
    ap.add_argument("--scratch", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ciopt-replay",
                    help="where runners live (outside this checkout: pytest must not find its pyproject.toml)")
    ap.add_argument("--ciopt", default=str(harness.CIOPT_CLI),
                    help="the ciopt executable the runners use (a frozen copy keeps edits made while a "
                         "long replay runs out of it)")
    ap.add_argument("--rows-part", default="",
                    help="append rows to ci_replay-rows-<repo>-PART.jsonl (a phase run beside another "
                         "process of the same repository); every part is read for the report")
    ap.add_argument("--report-only", action="store_true", help="rebuild the outputs from the saved rows")
    ap.add_argument("--keep-rows", action="store_true", help="append to the saved rows instead of starting over")
    args = ap.parse_args(argv)
    globals()["CIOPT"] = args.ciopt
    globals()["ROWS_PART"] = args.rows_part
    try:
        repos = [REPOS[n] for n in args.repo.split(",") if n]
    except KeyError as e:
        ap.error(f"unknown repository {e}; choose from {', '.join(REPOS)}")
    machine = {**harness.machine_basics(), "ciopt": harness.tool_version([CIOPT, "--version"]),
               "pytest": ", ".join(f"{r.name} {a.split('==')[1]}" for r in REPOS.values() for a in r.install
                                   if a.startswith("pytest==")),
               "jobs": JOBS}
    if args.report_only:
        report([r.name for r in repos], machine)
        return 0
    if not Path(CIOPT).exists():
        ap.error(f"{CIOPT} is missing: run `make develop` first")
    RESULTS.mkdir(parents=True, exist_ok=True)
    CORPUS.mkdir(parents=True, exist_ok=True)
    wheelhouse(repos)
    for repo in repos:
        if not args.keep_rows:
            for path in rows_files(repo.name):
                path.unlink()
        commits = commit_range(repo, args.commits)
        scratch = args.scratch / repo.name
        log(f"{repo.name}: {len(commits)} commits {commits[0][1][:10]}..{commits[-1][0][:10]} ({repo.shape})")
        # With --keep-rows, a later process can run the Redis or concurrent phase against the
        # baselines an earlier (or still running) replay recorded.
        baselines = {r["commit"]: r["baseline"] for r in read_rows(repo.name) if r.get("baseline")}
        backends = [b for b in args.backends.split(",") if b]
        for backend in backends:
            span = commits if backend == "serve" or not args.redis_commits else commits[:args.redis_commits]
            replay(repo, span, scratch, backend, with_baseline=backend == "serve",
                   mutations=args.mutations if backend == "serve" else 0, baselines=baselines,
                   selection=backend == "serve" or args.redis_selection)
        if args.extra_mutations:
            # More mutants than the range has source commits: commits that change Python source
            # from before the range, each after its own parent, over a cache of their own.
            older = commit_range(repo, args.commits + args.extra_mutations_window)[:-len(commits)]
            mirror = CORPUS / f"replay-{repo.name}.git"
            picked = [c for c in older if replay_mutation.changed_source_lines(mirror, c[1], c[0])]
            log(f"{repo.name}: extra mutation sample from {len(picked)} source commits before the range")
            replay(repo, picked[-args.extra_mutations * 2:], scratch, "serve-extra", with_baseline=True,
                   mutations=args.extra_mutations, baselines={}, until_mutated=True)
        if args.concurrent:
            start = len(commits) - args.concurrent if args.concurrent_start is None else args.concurrent_start
            replay_concurrently(repo, commits[start:start + args.concurrent], scratch, args.runners, baselines)
        shutil.rmtree(scratch, ignore_errors=True)
    report([r.name for r in REPOS.values()], machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
