"""`ciopt ci base|summary|annotate|config|mark-green` (issue 12), on real git repositories (clones,
shallow clones, pull-request merge-bases) with real `ciopt test` runs, real pytest JUnit and a
real redis-server for the shared last-green commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import CliRunner, assert_one_line_error
from ciopt.ci.annotate import Annotation, escape_data, escape_property

ADD_TEST = """
from calc.add import add

def test_add():
    assert add(2, 2) == 4

class TestMore:
    def test_negative(self):
        assert add(-1, -1) == -2
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))


def commit(repo: Path, message: str, files: dict[str, str] | None = None) -> str:
    write(repo, files or {})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A src-layout project on main (two commits), pushed to a bare `origin.git`."""
    work = tmp_path / "upstream"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    commit(work, "initial", {
        "pyproject.toml": "[tool.pytest.ini_options]\ntestpaths = ['tests']\n",
        "src/calc/__init__.py": "",
        "src/calc/add.py": "def add(a, b):\n    return a + b\n",
        "src/calc/mul.py": "def mul(a, b):\n    return a * b\n",
        "tests/test_add.py": ADD_TEST,
        "tests/test_mul.py": "from calc.mul import mul\n\ndef test_mul():\n    assert mul(2, 3) == 6\n",
    })
    commit(work, "second", {"src/calc/mul.py": "def mul(a, b):\n    return a * b  # product\n"})
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "--initial-branch=main", str(bare))
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "-q", "origin", "main")
    return bare


def clone(upstream: Path, where: Path, *args: str) -> Path:
    git(upstream.parent, "clone", "-q", *args, f"file://{upstream}", str(where))
    return where


def ci_json(cli: CliRunner, repo: Path, *args: str, env: dict[str, str] | None = None, code: int = 0) -> dict:
    proc = cli("ci", *args, "-o", "json", cwd=repo, env=env)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)


GITHUB = {"GITHUB_ACTIONS": "true", "CI": "true"}


def event_file(tmp_path: Path, payload: dict) -> str:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(payload))
    return str(path)


# -- ciopt ci base --------------------------------------------------------------------------------------


def test_base_of_a_github_pull_request_is_the_merge_base_with_its_target(cli: CliRunner, tmp_path: Path,
                                                                          upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "pr")
    main = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, "feature work", {"src/calc/add.py": "def add(a, b):\n    return b + a\n"})
    env = {**GITHUB, "GITHUB_EVENT_NAME": "pull_request", "GITHUB_BASE_REF": "main", "GITHUB_HEAD_REF": "feature"}
    doc = ci_json(cli, repo, "base", env=env)
    assert (doc["base"], doc["kind"], doc["provider"]) == (main, "pull_request", "github-actions")
    assert "origin/main" in doc["reason"]

    # Plain text: the commit alone on stdout, so `$(ciopt ci base)` works; the reason on stderr.
    proc = cli("ci", "base", cwd=repo, env=env)
    assert proc.returncode == 0 and proc.stdout == main + "\n"
    assert "target branch" in proc.stderr

    # The same through `ciopt test`: selection picks only what the change can affect.
    run = cli("test", "//...", "--affected-since", proc.stdout.strip(), "-o", "json", cwd=repo)
    statuses = {t["file"]: t["status"] for t in json.loads(run.stdout)["tests"]}
    assert statuses == {"tests/test_add.py": "executed", "tests/test_mul.py": "skipped_unaffected"}


def test_base_of_a_github_push_is_its_before_commit(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "push")
    before = git(repo, "rev-parse", "HEAD~1")
    env = {**GITHUB, "GITHUB_EVENT_NAME": "push", "GITHUB_REF_NAME": "main",
           "GITHUB_EVENT_PATH": event_file(tmp_path, {"before": before, "after": git(repo, "rev-parse", "HEAD")})}
    assert ci_json(cli, repo, "base", env=env)["base"] == before

    # A branch's first push has no `before` (all zeros) and HEAD is origin/HEAD's tip: no base,
    # rather than the base HEAD itself, which would select nothing.
    env["GITHUB_EVENT_PATH"] = event_file(tmp_path, {"before": "0" * 40})
    doc = ci_json(cli, repo, "base", env=env, code=2)
    assert doc["base"] is None and "HEAD is the tip of origin/HEAD" in doc["reason"]


def test_gitlab_merge_request_and_push(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "mr")
    main = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "topic")
    commit(repo, "topic", {"src/calc/mul.py": "def mul(a, b):\n    return b * a\n"})
    mr = {"GITLAB_CI": "true", "CI": "true", "CI_PIPELINE_SOURCE": "merge_request_event",
          "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main", "CI_COMMIT_BEFORE_SHA": "0" * 40}
    doc = ci_json(cli, repo, "base", env=mr)
    assert (doc["base"], doc["kind"], doc["provider"]) == (main, "pull_request", "gitlab")
    # GitLab's own diff base wins when it is in the clone.
    first = git(repo, "rev-parse", "HEAD~2")
    assert ci_json(cli, repo, "base", env={**mr, "CI_MERGE_REQUEST_DIFF_BASE_SHA": first})["base"] == first

    push = {"GITLAB_CI": "true", "CI": "true", "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BEFORE_SHA": main,
            "CI_COMMIT_BRANCH": "topic"}
    doc = ci_json(cli, repo, "base", env=push)
    assert (doc["base"], doc["kind"]) == (main, "push")


def test_a_shallow_clone_says_to_fetch_more_history(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "shallow", "--depth", "1")
    before = git(upstream, "rev-parse", "main~1")
    env = {**GITHUB, "GITHUB_EVENT_NAME": "push", "GITHUB_EVENT_PATH": event_file(tmp_path, {"before": before})}
    proc = cli("ci", "base", cwd=repo, env=env)
    assert_one_line_error(proc, 2, "fetch-depth: 0")
    assert "shallow" in proc.stderr and proc.stdout == ""
    doc = ci_json(cli, repo, "base", env=env, code=2)
    assert doc["base"] is None and doc["shallow"] is True

    # A pull request whose target cannot be reached, on GitLab: GitLab's own knob is named.
    env = {"GITLAB_CI": "true", "CI_PIPELINE_SOURCE": "merge_request_event",
           "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "release"}
    assert_one_line_error(cli("ci", "base", cwd=repo, env=env), 2, "GIT_DEPTH: 0")


def test_options_serve_a_ci_ciopt_does_not_know(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "generic")
    first = git(repo, "rev-parse", "HEAD~1")
    env = {"CI": "true"}
    assert ci_json(cli, repo, "base", "--before", first, env=env)["kind"] == "push"
    doc = ci_json(cli, repo, "base", "--target-branch", "main", env=env)
    assert doc["base"] == git(repo, "rev-parse", "HEAD") and doc["provider"] == "ci"


def test_last_green_commit_from_the_build_records(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "dev")
    git(repo, "remote", "remove", "origin")  # no origin/HEAD: only the records can answer
    green = git(repo, "rev-parse", "HEAD")
    assert cli("test", "//...", cwd=repo).returncode == 0
    commit(repo, "break a test", {"tests/test_mul.py": "def test_mul():\n    assert False\n"})
    assert cli("test", "//...", cwd=repo).returncode == 1  # a red run at HEAD is not a base
    commit(repo, "more", {"src/calc/add.py": "def add(a, b):\n    return a + b  # sum\n"})
    doc = ci_json(cli, repo, "base")
    assert (doc["base"], doc["kind"]) == (green, "last_green")
    assert "BuildRecords" in doc["reason"]


def test_last_green_commit_through_the_shared_cache(cli: CliRunner, tmp_path: Path, upstream: Path,
                                                    redis_server) -> None:
    config = tmp_path / "ci.yaml"
    # Runner 1 (a push to main went green): remember it.
    one = clone(upstream, tmp_path / "runner1")
    made = cli("ci", "config", "--out", config, "--set", "enabled=true", "--set",
               f"cache.remote.url={redis_server.url}", cwd=one)
    assert made.returncode == 0, made.stderr
    env = {**GITHUB, "CIOPT_CONFIG": str(config), "GITHUB_REF_NAME": "main"}
    green = git(one, "rev-parse", "HEAD")
    marked = cli("ci", "mark-green", "-o", "json", cwd=one, env=env)
    assert marked.returncode == 0, marked.stderr
    assert json.loads(marked.stdout) == {"branch": "main", "commit": green, "cache": redis_server.url}

    # Runner 2, fresh (no records, another store), a manual run of a later commit on main.
    upstream_work = tmp_path / "upstream"
    commit(upstream_work, "later", {"src/calc/add.py": "def add(a, b):\n    return a + b  # later\n"})
    git(upstream_work, "push", "-q", "origin", "main")
    two = clone(upstream, tmp_path / "runner2")
    git(two, "remote", "set-head", "origin", "-d")  # like actions/checkout: no origin/HEAD
    env2 = {**env, "GITHUB_EVENT_NAME": "workflow_dispatch", "CIOPT_CACHE_DIR": str(tmp_path / "store2")}
    doc = ci_json(cli, two, "base", env=env2)
    assert (doc["base"], doc["kind"]) == (green, "last_green")
    assert "shared cache, branch main" in doc["reason"]

    # Read-only (a fork) cannot write one.
    ro = tmp_path / "ro.yaml"
    assert cli("ci", "config", "--out", ro, "--set", "enabled=true", "--set", f"cache.remote.url={redis_server.url}",
               "--set", "cache.remote.read_only=true", cwd=one).returncode == 0
    assert_one_line_error(cli("ci", "mark-green", cwd=one, env={**env, "CIOPT_CONFIG": str(ro)}), 2, "read_only")


def test_mark_green_needs_a_shared_cache(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "plain")
    assert_one_line_error(cli("ci", "mark-green", cwd=repo), 2, "cache.remote.url")


# -- ciopt ci config -------------------------------------------------------------------------------------


def test_config_merges_onto_the_projects_own_and_validates(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "cfg")
    write(repo, {"config/ci-optimization.yaml": "# team settings\nexecution:\n  batch_max_files: 50\n"})
    out = tmp_path / "run.yaml"
    doc = ci_json(cli, repo, "config", "--out", str(out), "--set", "enabled=true", "--set",
                  "cache.remote.url=redis://cache:6379/0", "--set", "cache.remote.read_only=true")
    assert doc["set"] == {"enabled": True, "cache.remote.url": "redis://cache:6379/0", "cache.remote.read_only": True}
    shown = cli("config", "show", "-o", "json", cwd=repo, env={"CIOPT_CONFIG": str(out)})
    values = json.loads(shown.stdout)["values"]
    assert values["execution.batch_max_files"]["value"] == 50 and values["cache.remote.read_only"]["value"] is True

    assert_one_line_error(cli("ci", "config", "--out", out, "--set", "cache.remote.readonly=true", cwd=repo), 2,
                          "--set cache.remote.readonly: not a configuration key")
    assert_one_line_error(cli("ci", "config", "--out", out, "--set", "cache.remote.read_only=maybe", cwd=repo), 2,
                          "cache.remote.read_only: expected true or false")
    assert_one_line_error(cli("ci", "config", "--out", out, "--set", "enabled", cwd=repo), 2, "KEY=VALUE")


# -- ciopt ci summary ------------------------------------------------------------------------------------


FLAKY_TEST = """
from pathlib import Path
from calc.mul import mul

def test_mul_flaky():
    marker = Path({marker!r})
    first = not marker.exists()
    marker.write_text("ran")
    assert not first, "fails on the first attempt only"
    assert mul(2, 3) == 6
"""


def test_summary_of_a_failed_build_with_a_flaky_test(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "red")
    write(repo, {"tests/test_add.py": ADD_TEST.replace("== -2", "== -3"),
                 "tests/test_mul.py": FLAKY_TEST.format(marker=str(tmp_path / "flaky-marker"))})
    run = cli("test", "//...", "--flaky-attempts", "2", "-o", "json", cwd=repo)
    assert run.returncode == 1
    (tmp_path / "build.json").write_text(run.stdout)

    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    proc = cli("ci", "summary", cwd=repo, env={"GITHUB_STEP_SUMMARY": str(step_summary)})
    assert proc.returncode == 0, proc.stderr
    text = step_summary.read_text()
    assert text.startswith("earlier step\n")  # appended, as GitHub expects
    assert "### ciopt test: FAILED" in text
    assert "**Failures (1)**" in text and "//tests:test_add" in text and "assert -2 == -3" in text
    assert "**Flaky tests (1)**" in text and "`//tests:test_mul`: passed on attempt 2" in text
    assert "| `//tests:test_" in text  # the slowest targets

    from_json = cli("ci", "summary", "--from-json", tmp_path / "build.json", "-o", "json", cwd=repo)
    doc = json.loads(from_json.stdout)
    assert [f["label"] for f in doc["failures"]] == ["//tests:test_add"]
    assert "assert -2 == -3" in doc["failures"][0]["log_tail"]
    assert doc["flaky"] == [{"label": "//tests:test_mul", "attempts": 2}]
    assert doc["exit_code"] == 1 and doc["counts"]["failed"] == 1


def test_summary_counts_time_saved_by_cache_and_by_selection(cli: CliRunner, tmp_path: Path,
                                                             upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "saved")
    assert cli("test", "//...", cwd=repo).returncode == 0
    assert cli("test", "//...", cwd=repo).returncode == 0  # everything from the local cache
    doc = ci_json(cli, repo, "summary")
    assert doc["counts"] == {"cached_local": 2}
    assert doc["saved_by_cache"]["known"] == doc["saved_by_cache"]["total"] == 2
    assert doc["saved_by_cache"]["seconds"] > 0
    assert doc["hit_rates"]["local"] == {"hits": 2, "lookups": 2, "rate": 1.0}

    write(repo, {"src/calc/add.py": "def add(a, b):\n    return a + b  # edited\n"})
    run = cli("test", "//...", "--affected-since", "HEAD", "-o", "json", cwd=repo)
    (tmp_path / "sel.json").write_text(run.stdout)
    doc = ci_json(cli, repo, "summary", "--from-json", str(tmp_path / "sel.json"))
    assert doc["counts"] == {"executed": 1, "skipped_unaffected": 1}
    assert doc["saved_by_selection"]["known"] == doc["saved_by_selection"]["total"] == 1
    assert doc["selection"]["base"] == "HEAD"
    text = cli("ci", "summary", cwd=repo).stdout  # the same build, from the records, as Markdown
    assert "| saved by selection |" in text and "1 tests not affected" in text


def test_summary_errors_name_what_is_missing(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "none")
    assert_one_line_error(cli("ci", "summary", cwd=repo), 2, "run `ciopt test` first")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert_one_line_error(cli("ci", "summary", "--from-json", bad, cwd=repo), 2, f"--from-json {bad}")
    assert_one_line_error(cli("ci", "summary", "--from-json", tmp_path / "nope.json", cwd=repo), 2, "nope.json")


# -- ciopt ci annotate -----------------------------------------------------------------------------------

TWO_FAILURES = """
from calc.add import add

def test_ok():
    assert add(1, 1) == 2

def test_first_bad():
    assert add(1, 1) == 3

class TestBad:
    def test_second_bad(self):
        value = add(2, 2)
        assert value == 5, "two and two"
"""


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_annotations_from_ciopt_and_from_plain_pytest_junit(cli: CliRunner, tmp_path: Path, upstream: Path) -> None:
    repo = clone(upstream, tmp_path / "ann")
    write(repo, {"tests/test_add.py": TWO_FAILURES})
    test_file = repo / "tests/test_add.py"
    first, second = _line_of(test_file, "== 3"), _line_of(test_file, "== 5")
    assert cli("test", "//...", "--junit", tmp_path / "ciopt.xml", cwd=repo).returncode == 1
    plain = subprocess.run([sys.executable, "-m", "pytest", "-q", f"--junitxml={tmp_path / 'pytest.xml'}"],
                           cwd=repo, env={**os.environ, "PYTHONPATH": str(repo / "src")}, capture_output=True)
    assert plain.returncode == 1

    for report in ("ciopt.xml", "pytest.xml"):
        doc = ci_json(cli, repo, "annotate", "--junit", str(tmp_path / report))
        found = {(a["file"], a["line"]) for a in doc["annotations"]}
        assert found == {("tests/test_add.py", first), ("tests/test_add.py", second)}, (report, doc)
        by_line = {a["line"]: a for a in doc["annotations"]}
        assert "assert 4 == 5" in by_line[second]["message"] and "two and two" in by_line[second]["message"]
        assert "test_first_bad" in by_line[first]["title"]

    proc = cli("ci", "annotate", "--junit", tmp_path / "ciopt.xml", cwd=repo)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(l.startswith("::error file=tests/test_add.py,line=") for l in lines)
    assert "%0A" in proc.stdout and "\n" not in proc.stdout.rstrip("\n").split("\n")[0]
    assert "2 failed test(s)" in proc.stderr


def test_annotation_paths_are_relative_to_the_repository_root(cli: CliRunner, tmp_path: Path) -> None:
    mono = tmp_path / "mono"
    write(mono, {"services/calc/config/ci-optimization.yaml": "",
                 "services/calc/src/calc/__init__.py": "",
                 "services/calc/tests/test_it.py": "def test_it():\n    assert 1 == 2\n"})
    git(mono, "init", "-q")
    ws = mono / "services/calc"
    assert cli("test", "//...", "--junit", tmp_path / "j.xml", cwd=ws).returncode == 1
    doc = ci_json(cli, ws, "annotate", "--junit", str(tmp_path / "j.xml"))
    assert [(a["file"], a["line"]) for a in doc["annotations"]] == [("services/calc/tests/test_it.py", 2)]


def test_annotate_rejects_what_is_not_junit(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "junit.xml"
    bad.write_text("<testsuites><testsuite>")
    assert_one_line_error(cli("ci", "annotate", "--junit", bad, cwd=tmp_path), 2, "not JUnit XML")
    assert_one_line_error(cli("ci", "annotate", "--junit", tmp_path / "missing.xml", cwd=tmp_path), 2, "missing.xml")


def test_workflow_command_escaping() -> None:
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a,b:c%\n") == "a%2Cb%3Ac%25%0A"
    a = Annotation("error", "t::x, y", "line 1\nline 2: 100%", "dir,1/f:x.py", 7)
    assert a.command() == "::error file=dir%2C1/f%3Ax.py,line=7,title=t%3A%3Ax%2C y::line 1%0Aline 2: 100%25"
