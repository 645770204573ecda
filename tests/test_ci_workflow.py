""".github/workflows/ci-unified.yml (issue 12), checked three ways: GitHub's workflow schema
(check-jsonschema), the zizmor security linter (no high-severity finding), and played step by
step on this machine (tests/workflow_player.py) against a git copy of examples/srcproj with a
real redis-server as the shared cache, for push and pull_request events, the three bypasses, a
broken ciopt and a real test failure.

The simulated runners are ephemeral like GitHub's: each job starts with an empty workspace and
an empty RUNNER_TEMP (where the workflow puts the local store), at the same checkout path, so
whatever a second run gets from a first one came through Redis. pip installs offline from a
wheelhouse repackaged from installed distributions (the runner's package mirror).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from workflow_player import (Event, JobRun, Runner, checkout, condition, load_workflow, play_job, setup_python,
                             upload_artifact)

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github/workflows/ci-unified.yml"
SRCPROJ = REPO / "examples/srcproj"
BIN = Path(sys.executable).parent


def _tool(name: str) -> Path:
    exe = BIN / name
    if exe.is_file():
        return exe
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (make test installs it: `pip install {name}`)")
    return Path(found)


# -- static checks ---------------------------------------------------------------------------------


def test_workflow_matches_githubs_schema() -> None:
    proc = subprocess.run([str(_tool("check-jsonschema")), "--builtin-schema", "vendor.github-workflows",
                           str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing_of_high_severity() -> None:
    proc = subprocess.run([str(_tool("zizmor")), "--offline", "--min-severity", "high", "--format", "json",
                           str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == [], proc.stdout


def test_actions_are_pinned_and_checkouts_keep_no_credentials() -> None:
    wf = load_workflow(WORKFLOW)
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                ref = step["uses"].partition("@")[2]
                assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), step["uses"]
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    assert wf["permissions"] == {"contents": "read"}
    assert WORKFLOW.read_text().count("# v") >= 5  # a version comment beside every pinned SHA


# -- the project, its history, its package mirror ------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


@dataclass(frozen=True)
class Origin:
    """The GitHub side: a bare repository with main (C0 -> C1), a pull request (feature C2 and
    its merge commit), a `[ciopt skip]` commit and a commit that breaks a test."""

    path: Path
    c0: str
    c1: str
    feature: str
    merge: str
    skip: str
    broken: str


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Origin:
    root = tmp_path_factory.mktemp("github")
    dev = root / "dev"
    shutil.copytree(SRCPROJ, dev, ignore=shutil.ignore_patterns(".venv", "ciopt-out", "__pycache__"))
    # Plain pytest must find the src/ layout's package without an install, as ciopt does.
    pyproject = dev / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('testpaths = ["tests"]', 'testpaths = ["tests"]\npythonpath = ["src"]'))
    assert 'pythonpath = ["src"]' in pyproject.read_text()
    _git(dev, "init", "-q", "-b", "main")
    _git(dev, "add", "-A")
    _git(dev, "commit", "-qm", "initial")
    c0 = _git(dev, "rev-parse", "HEAD")
    _append(dev / "src/inventory/stock.py", "\n# stock is kept per SKU\n")  # every test imports stock
    _git(dev, "commit", "-qam", "Document stock keeping")
    c1 = _git(dev, "rev-parse", "HEAD")
    bare = root / "origin.git"
    _git(root, "init", "-q", "--bare", str(bare))
    _git(bare, "config", "uploadpack.allowAnySHA1InWant", "true")  # fetch by SHA, as GitHub allows
    _git(dev, "remote", "add", "origin", str(bare))
    _git(dev, "push", "-q", "origin", "main")
    _git(bare, "symbolic-ref", "HEAD", "refs/heads/main")

    _git(dev, "checkout", "-q", "-b", "feature")
    _append(dev / "src/inventory/report.py", "\n# the report is plain text\n")  # only test_report sees it
    _git(dev, "commit", "-qam", "Report tweak")
    feature = _git(dev, "rev-parse", "HEAD")
    _git(dev, "push", "-q", "origin", "feature")
    _git(dev, "checkout", "-q", "--detach", c1)
    _git(dev, "merge", "-q", "--no-ff", "feature", "-m", "Merge feature into main")
    merge = _git(dev, "rev-parse", "HEAD")
    _git(dev, "push", "-q", "origin", f"{merge}:refs/pull/1/merge", f"{feature}:refs/pull/1/head")

    _git(dev, "checkout", "-q", "-b", "hotfix", c1)
    _append(dev / "src/inventory/pricing.py", "\n# VAT is 20%\n")
    _git(dev, "commit", "-qam", "Pricing note\n\nThe cache is suspected.\n\n[ciopt skip]")
    skip = _git(dev, "rev-parse", "HEAD")
    _git(dev, "push", "-q", "origin", "hotfix")

    _git(dev, "checkout", "-q", "-b", "broken", c1)
    _append(dev / "tests/test_stock.py", "\n\ndef test_restock(stock):\n    assert stock.items['pear'].quantity == 5\n")
    _git(dev, "commit", "-qam", "A test that fails")
    broken = _git(dev, "rev-parse", "HEAD")
    _git(dev, "push", "-q", "origin", "broken")
    return Origin(bare, c0, c1, feature, merge, skip, broken)


def _distribution(name: str, paths: list[str]) -> metadata.Distribution | None:
    found = list(metadata.distributions(name=name, path=paths))
    return found[0] if found else None


def _repackage(dist: metadata.Distribution, dest: Path) -> Path | None:
    """A wheel of an installed pure-Python distribution, rebuilt from the files its RECORD
    lists (scripts are left out: pip writes them again from entry_points.txt)."""
    files = [f for f in dist.files or () if not str(f).startswith("..") and "__pycache__" not in f.parts]
    dist_info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if dist_info is None or "Root-Is-Purelib: true" not in (dist.read_text("WHEEL") or ""):
        return None
    name = dist.metadata["Name"].replace("-", "_")
    wheel = dest / f"{name}-{dist.version}-py3-none-any.whl"
    skip = {f"{dist_info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    kept = [f for f in files if str(f) not in skip]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in kept:
            z.write(dist.locate_file(f), str(f))
        z.writestr(f"{dist_info}/RECORD", "".join(f"{f},,\n" for f in kept) + f"{dist_info}/RECORD,,\n")
    return wheel


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of examples/srcproj's requirements-dev.txt and their dependencies, offline when
    they are installed here (this venv, or srcproj's own from `make demo`), else downloaded."""
    from packaging.requirements import Requirement

    dest = tmp_path_factory.mktemp("wheelhouse")
    paths = [p for p in sys.path if p] + [str(p) for p in SRCPROJ.glob(".venv/lib/python*/site-packages")]
    wanted = [l.strip() for l in (SRCPROJ / "requirements-dev.txt").read_text().splitlines() if l.strip()]
    seen: set[str] = set()
    while wanted:
        req = Requirement(wanted.pop())
        key = req.name.lower().replace("_", "-")
        if key in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        dist = _distribution(req.name, paths)
        if dist is None or not req.specifier.contains(dist.version, prereleases=True) or not _repackage(dist, dest):
            break
        wanted.extend(dist.requires or ())
    else:
        return dest
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(dest),
                           "-r", str(SRCPROJ / "requirements-dev.txt")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"no wheels for examples/srcproj's requirements (not installed here, no index): {proc.stderr[-300:]}")
    return dest


# -- the simulated GitHub --------------------------------------------------------------------------------

REPOSITORY = {"full_name": "acme/inventory", "default_branch": "main"}


def push(sha: str, before: str, branch: str = "main", run: int = 1, attempt: int = 1) -> Event:
    return Event("push", sha, f"refs/heads/{branch}",
                 {"ref": f"refs/heads/{branch}", "before": before, "after": sha, "repository": REPOSITORY,
                  "head_commit": {"id": sha}}, repository="acme/inventory", run_id=str(run), run_attempt=str(attempt))


def pull_request(o: Origin, run: int, attempt: int = 1, fork: bool = False) -> Event:
    head_repo = {"full_name": "someone/inventory-fork" if fork else "acme/inventory"}
    payload = {"number": 1, "repository": REPOSITORY,
               "pull_request": {"number": 1, "head": {"sha": o.feature, "ref": "feature", "repo": head_repo},
                                "base": {"sha": o.c1, "ref": "main", "repo": REPOSITORY}}}
    return Event("pull_request", o.merge, "refs/pull/1/merge", payload, repository="acme/inventory",
                 base_ref="main", head_ref="feature", run_id=str(run), run_attempt=str(attempt))


def dispatch(sha: str, run: int, **inputs: object) -> Event:
    return Event("workflow_dispatch", sha, "refs/heads/main", {"ref": "refs/heads/main", "repository": REPOSITORY,
                                                             "inputs": inputs},
                 repository="acme/inventory", inputs=dict(inputs), run_id=str(run))


@dataclass
class Run:
    plan: JobRun
    test: JobRun
    artifacts: Path

    @property
    def seconds(self) -> float:
        return self.plan.duration_s + self.test.duration_s

    def report(self) -> dict:
        return json.loads((self.artifacts / "reports" / "ciopt-test.json").read_text())

    def statuses(self) -> dict[str, str]:
        return {t["file"]: t["status"] for t in self.report()["tests"]}

    def ran(self, step: str) -> bool:
        return self.test.step(step).outcome != "skipped"


class GitHub:
    """Plays the workflow's plan job, then its test job, each on a fresh runner."""

    def __init__(self, root: Path, origin: Origin, wheelhouse: Path, ciopt: str | None = None) -> None:
        self.workflow = load_workflow(WORKFLOW)
        self.root = root
        self.artifacts = root / "artifacts"
        tool = root / "hostedtoolcache/Python/3.11/x64"
        python = Path(getattr(sys, "_base_executable", sys.executable))
        bin_dir = root / "preinstalled"  # ciopt is on the runner image, so `pipx install` is skipped
        bin_dir.mkdir(parents=True, exist_ok=True)
        script = bin_dir / "ciopt"
        script.write_text(ciopt or f'#!/bin/sh\nexec "{sys.executable}" -m ciopt "$@"\n')
        script.chmod(0o755)
        home = root / "home"
        home.mkdir(exist_ok=True)
        system_path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
                       if p and not p.startswith(sys.prefix) and "pyenv" not in p]
        self.runner = Runner(
            workspace=root / "work/inventory/inventory", temp_root=root / "runner",
            base_env={"PATH": os.pathsep.join([str(bin_dir), *system_path]), "HOME": str(home),
                      "LANG": "C.UTF-8", "XDG_CACHE_HOME": str(home / ".cache"), "PIP_NO_INDEX": "1",
                      "PIP_FIND_LINKS": str(wheelhouse), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                      "PIP_NO_COMPILE": "1"},  # bytecode for pygments alone takes seconds on 2 cores
            uses={"actions/checkout": checkout(origin.path), "actions/setup-python": setup_python(python, tool),
                  "actions/upload-artifact": upload_artifact(self.artifacts)})

    def run(self, event: Event, vars: dict[str, str] | None = None) -> Run:
        plan = play_job(self.workflow, "plan", event, self.runner, vars=vars)
        assert plan.conclusion == "success", plan.log()
        test = play_job(self.workflow, "test", event, self.runner, vars=vars, needs={"plan": plan.outputs})
        name = f"ciopt-reports-{event.run_id}-{event.run_attempt}"
        return Run(plan, test, self.artifacts / name)


def _redis_keys(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def _ok(run: Run) -> None:
    """The job is green and every step that ran succeeded (none needed continue-on-error)."""
    assert run.test.conclusion == "success", run.test.log()
    failed = [s.name for s in run.test.steps if s.outcome == "failure"]
    assert not failed, f"{failed}\n{run.test.log()}"


# -- played ------------------------------------------------------------------------------------------

# Each job installs the project's requirements with pip at least once; on a loaded 2-core
# machine one job can take a minute.
PLAYED_TIMEOUT_S = 1200


@pytest.mark.timeout(PLAYED_TIMEOUT_S)
def test_push_then_pull_request_with_and_without_ciopt(tmp_path: Path, origin: Origin, wheelhouse: Path,
                                                      redis_server, capsys: pytest.CaptureFixture) -> None:
    gh = GitHub(tmp_path, origin, wheelhouse)
    timings: dict[str, Run] = {}

    # A new team: no variables, plain pytest, ciopt never called.
    for label, event in (("push", push(origin.c1, origin.c0, run=1)), ("pull_request", pull_request(origin, run=2))):
        plain = gh.run(event)
        _ok(plain)
        assert plain.plan.outputs["ciopt"] == "false"
        assert not plain.ran("Install ciopt") and not plain.ran("Test with ciopt") and plain.ran("Test with plain pytest")
        assert "6 passed" in plain.test.step("Test with plain pytest").output
        timings[f"{label}, plain pytest"] = plain

    on = {"CIOPT_CACHE": "true", "CIOPT_SELECTION": "true", "CIOPT_CACHE_URL": redis_server.url}

    # The first push with ciopt: nothing cached yet. The push changed stock.py, which every test imports.
    first = gh.run(push(origin.c1, origin.c0, run=3), on)
    _ok(first)
    assert first.test.step("venv").outputs["result"] == "miss"
    assert first.ran("Install dependencies") and first.ran("Save .venv")
    assert not first.ran("Test with plain pytest")
    assert set(first.statuses().values()) == {"executed"}
    assert first.report()["summary"]["selection"]["base"] == origin.c0
    assert first.test.step("Remember the last green commit").outcome == "success"
    assert "### ciopt test: passed" in first.test.summary
    timings["push, ciopt (cold cache)"] = first
    keys_after_push = _redis_keys(redis_server.url)
    assert keys_after_push > 0

    # The pull request, on another fresh runner: the venv comes from Redis, and only the test
    # that can see report.py runs.
    pr = gh.run(pull_request(origin, run=4), on)
    _ok(pr)
    assert pr.test.step("venv").outputs["result"] == "hit"
    assert not pr.ran("Install dependencies") and not pr.ran("Save .venv")
    assert pr.statuses() == {"tests/test_pricing.py": "skipped_unaffected", "tests/test_report.py": "executed",
                             "tests/test_stock.py": "skipped_unaffected"}
    assert pr.report()["summary"]["selection"]["base"] == origin.c1  # merge-base with origin/main
    assert not pr.ran("Remember the last green commit")  # pushes only
    timings["pull_request, ciopt"] = pr

    # Re-run of the pull request on a third runner: the test result itself comes from Redis.
    again = gh.run(pull_request(origin, run=4, attempt=2), on)
    _ok(again)
    assert again.test.step("venv").outputs["result"] == "hit"
    assert again.statuses()["tests/test_report.py"] == "cached_remote"
    timings["pull_request re-run, ciopt"] = again

    # The same pull request from a fork: reads the cache, writes nothing.
    before = _redis_keys(redis_server.url)
    fork = gh.run(pull_request(origin, run=5, fork=True), on)
    _ok(fork)
    assert fork.plan.outputs["read_only"] == "true"
    assert fork.test.step("venv").outputs["result"] == "hit" and not fork.ran("Save .venv")
    assert fork.statuses()["tests/test_report.py"] == "cached_remote"
    assert _redis_keys(redis_server.url) == before

    with capsys.disabled():
        print("\n\nci-unified.yml played on examples/srcproj (plan + test jobs, fresh runner each, seconds):")
        for what, run in timings.items():
            slow = ", ".join(f"{s.name} {s.duration_s:.1f}" for s in run.test.steps if s.duration_s >= 0.5)
            print(f"  {what:<30} {run.seconds:6.2f}  ({slow})")


@pytest.mark.timeout(PLAYED_TIMEOUT_S)
@pytest.mark.parametrize("how", ["dispatch input", "CIOPT_DISABLE variable", "[ciopt skip] commit"])
def test_each_bypass_is_plain_pytest_with_no_cache_read_or_written(how: str, tmp_path: Path, origin: Origin,
                                                                   wheelhouse: Path, redis_server) -> None:
    gh = GitHub(tmp_path, origin, wheelhouse)
    on = {"CIOPT_CACHE": "true", "CIOPT_SELECTION": "true", "CIOPT_CACHE_URL": redis_server.url}
    if how == "dispatch input":
        event, vars = dispatch(origin.c1, run=1, bypass=True), on
    elif how == "CIOPT_DISABLE variable":
        event, vars = push(origin.c1, origin.c0, run=1), {**on, "CIOPT_DISABLE": "1"}
    else:
        event, vars = push(origin.skip, origin.c1, branch="hotfix", run=1), on
    run = gh.run(event, vars)
    _ok(run)
    assert run.plan.outputs["bypass"] == "true" and run.plan.outputs["ciopt"] == "false"
    assert "emergency bypass" in run.plan.summary
    for step in ("Install ciopt", "Configure ciopt for this run", "venv", "Save .venv", "Test with ciopt",
                 "Summary", "Remember the last green commit"):
        assert not run.ran(step), step
    assert run.ran("Test with plain pytest")
    assert run.test.env.get("CIOPT_DISABLE") == "1"
    assert _redis_keys(redis_server.url) == 0
    assert not (gh.runner.temp_root / "temp" / "ciopt-cache").exists()  # no local store either


@pytest.mark.timeout(PLAYED_TIMEOUT_S)
def test_a_broken_ciopt_falls_back_to_plain_pytest(tmp_path: Path, origin: Origin, wheelhouse: Path,
                                                  redis_server) -> None:
    # A ciopt release whose `ciopt test` crashes: every other command works.
    crashing = (f'#!/bin/sh\nif [ "$1" = test ]; then echo "ciopt: internal error: simulated crash" >&2; exit 1; fi\n'
                f'exec "{sys.executable}" -m ciopt "$@"\n')
    gh = GitHub(tmp_path, origin, wheelhouse, ciopt=crashing)
    run = gh.run(push(origin.c1, origin.c0, run=1),
                 {"CIOPT_CACHE": "true", "CIOPT_SELECTION": "true", "CIOPT_CACHE_URL": redis_server.url})
    assert run.test.conclusion == "success", run.test.log()
    crashed = run.test.step("ciopt_test")
    assert (crashed.outcome, crashed.conclusion) == ("failure", "success")
    assert "simulated crash" in crashed.output
    fallback = run.test.step("Test with plain pytest")
    assert fallback.outcome == "success" and "6 passed" in fallback.output
    assert "ciopt fallback" in fallback.output
    assert not run.ran("Remember the last green commit")

    # ciopt missing altogether (`pipx install` fails): the same.
    gh = GitHub(tmp_path / "missing", origin, wheelhouse, ciopt="#!/bin/sh\nexit 127\n")
    run = gh.run(push(origin.c1, origin.c0, run=2), {"CIOPT_CACHE": "true", "CIOPT_CACHE_URL": redis_server.url})
    assert run.test.conclusion == "success", run.test.log()
    assert run.test.step("install").outcome == "failure" and not run.ran("Test with ciopt")
    assert run.ran("Test with plain pytest")


@pytest.mark.timeout(PLAYED_TIMEOUT_S)
def test_a_real_failure_is_red_and_annotated(tmp_path: Path, origin: Origin, wheelhouse: Path, redis_server) -> None:
    gh = GitHub(tmp_path, origin, wheelhouse)
    run = gh.run(push(origin.broken, origin.c1, branch="broken", run=1),
                 {"CIOPT_CACHE": "true", "CIOPT_SELECTION": "true", "CIOPT_CACHE_URL": redis_server.url})
    assert run.test.conclusion == "failure"
    assert run.test.step("ciopt_test").outcome == "failure"  # reported by ciopt ...
    assert run.test.step("Test with plain pytest").outcome == "failure"  # ... and reproduced by pytest
    annotations = run.test.step("Annotate failed tests").output
    assert "::error file=tests/test_stock.py,line=" in annotations and "test_restock" in annotations
    assert not run.ran("Remember the last green commit")
    assert "### ciopt test: FAILED" in run.test.summary and "test_restock" in run.test.summary


def test_remote_executors_are_off_until_switched_on() -> None:
    wf = load_workflow(WORKFLOW)
    status = {"success": True, "failure": False, "always": True, "cancelled": False}

    def runs(job: str, **outputs: str) -> bool:
        plan = {"remote_execution": "false", "gpu": "false", **outputs}
        return condition(wf["jobs"][job].get("if"), {"needs": {"plan": {"outputs": plan}}}, status)

    assert not runs("executors") and not runs("gpu-executor")
    assert runs("executors", remote_execution="true") and not runs("gpu-executor", remote_execution="true")
    assert runs("gpu-executor", remote_execution="true", gpu="true")
    assert wf["jobs"]["gpu-executor"]["runs-on"] == ["self-hosted", "gpu"]
    assert wf["jobs"]["executors"]["strategy"]["matrix"]["runner"] == [1, 2]


def test_player_expressions_follow_githubs_rules() -> None:
    from workflow_player import evaluate, substitute

    ctx = {"vars": {"CIOPT_CACHE": "TRUE"}, "github": {"event_name": "push", "event": {"before": "abc"}},
           "secrets": {}, "steps": {"venv": {"outputs": {"result": "hit"}}}}
    assert evaluate("vars.CIOPT_CACHE == 'true'", ctx) is True  # strings compare case-insensitively
    assert evaluate("vars.ciopt_cache", ctx) == "TRUE"  # and so do property names
    assert evaluate("vars.MISSING || 'fallback'", ctx) == "fallback"  # || yields an operand
    assert evaluate("secrets.KEY != ''", ctx) is False  # a missing secret is empty
    assert evaluate("!(steps.venv.outputs.result != 'hit') && github['event_name'] == 'push'", ctx) is True
    assert substitute("before=${{ github.event.before }} x=${{ vars.NONE }}", ctx) == "before=abc x="
    assert condition("steps.venv.outputs.result == 'hit'", ctx, {"success": False, "failure": True,
                                                                 "always": True, "cancelled": False}) is False
    assert condition("always() && true", ctx, {"success": False, "failure": True, "always": True,
                                               "cancelled": False}) is True
    with pytest.raises(ValueError):
        evaluate("hashFiles('x')", ctx)
