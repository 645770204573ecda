"""Batched pytest with per-file results and caching, and selection in `ciopt test` (issue 9).

Every test file appends `<pid>` to runs/<its name> when it runs, so the tests below can see
how many pytest processes ran and which files really ran, whatever ciopt reports."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from buildws import run_json
from conftest import CliRunner

RECORDING = """
import os
import mod_{name}

def _record():
    with open({runs!r} + "/{name}", "a") as f:
        f.write(f"{{os.getpid()}}\\n")

_record()

def test_{name}():
    assert mod_{name}.value() == 1
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


def make_repo(tmp_path: Path, names: list[str], extra: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A plain src-layout repository (no BUILD files) with one module and one test file per name."""
    repo, runs = tmp_path / "repo", tmp_path / "runs"
    runs.mkdir(parents=True)
    files = {"pyproject.toml": "[tool.pytest.ini_options]\nmarkers = ['slow: slow tests']\n"}
    for n in names:
        files[f"src/mod_{n}.py"] = "def value():\n    return 1\n"
        files[f"tests/test_{n}.py"] = RECORDING.format(name=n, runs=str(runs))
    files.update(extra or {})
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    return repo, runs


def pids(runs: Path) -> dict[str, list[str]]:
    return {p.name: p.read_text().split() for p in sorted(runs.iterdir())}


def by_file(doc: dict) -> dict[str, dict]:
    return {f: t for t in doc["tests"] for f in t["files"]}


NAMES = ["a", "b", "c", "d", "e", "f"]


def test_files_share_few_processes_but_are_cached_per_file(cli: CliRunner, tmp_path: Path) -> None:
    repo, runs = make_repo(tmp_path, NAMES)
    doc = run_json(cli, repo, "test", "//...", "-j", "2")
    assert {f: t["status"] for f, t in by_file(doc).items()} == {f"tests/test_{n}.py": "executed" for n in NAMES}
    ran = pids(runs)
    assert sorted(ran) == NAMES and all(len(v) == 1 for v in ran.values())
    assert len({p for v in ran.values() for p in v}) == 2  # one pytest process per -j slot
    # Per-file results and per-test cases.
    t = by_file(doc)["tests/test_a.py"]
    assert t["file"] == "tests/test_a.py"
    assert [(c["nodeid"], c["outcome"]) for c in t["cases"]] == [("tests/test_a.py::test_a", "passed")]

    # Nothing changed: nothing runs. One file changed: only it runs.
    doc = run_json(cli, repo, "test", "//...", "-j", "2")
    assert {t["status"] for t in doc["tests"]} == {"cached_local"}
    assert by_file(doc)["tests/test_a.py"]["cases"][0]["outcome"] == "passed"  # cases come back from the cache
    with open(repo / "tests/test_c.py", "a") as f:
        f.write("\n# edited\n")
    doc = run_json(cli, repo, "test", "//...", "-j", "2")
    assert {f for f, t in by_file(doc).items() if t["status"] == "executed"} == {"tests/test_c.py"}
    assert len(pids(runs)["c"]) == 2 and len(pids(runs)["a"]) == 1


def test_no_batch_and_exclusive_run_each_file_alone(cli: CliRunner, tmp_path: Path) -> None:
    repo, runs = make_repo(tmp_path, ["a", "b", "c"])
    run_json(cli, repo, "test", "//...", "-j", "1", "--no-batch")
    assert len({p for v in pids(runs).values() for p in v}) == 3

    # tags = ["exclusive"] on a BUILD target: its own process, the others batched together.
    repo2, runs2 = make_repo(tmp_path / "two", ["a", "b", "c"], {
        "BUILD": """
            py_library(name = "lib", srcs = glob(["src/*.py"]))
            py_test(name = "a", srcs = ["tests/test_a.py"], deps = [":lib"], tags = ["exclusive"])
            py_test(name = "b", srcs = ["tests/test_b.py"], deps = [":lib"])
            py_test(name = "c", srcs = ["tests/test_c.py"], deps = [":lib"])
        """,
        "config/ci-optimization.yaml": "selection:\n  source_roots: [src]\n",
    })
    run_json(cli, repo2, "test", "//...", "-j", "1")
    ran = pids(runs2)
    assert ran["b"] == ran["c"] and ran["a"] != ran["b"]


def test_a_failing_file_never_fails_its_neighbours(cli: CliRunner, tmp_path: Path) -> None:
    repo, runs = make_repo(tmp_path, ["a", "b", "c"])
    (repo / "tests/test_b.py").write_text(
        (repo / "tests/test_b.py").read_text() + "\ndef test_broken():\n    assert 'needle' == 'hay'\n")
    junit = tmp_path / "junit.xml"
    doc = run_json(cli, repo, "test", "//...", "-j", "1", "--junit", str(junit), expect=1)
    files = by_file(doc)
    assert {f: t["outcome"] for f, t in files.items()} == {
        "tests/test_a.py": "passed", "tests/test_b.py": "failed", "tests/test_c.py": "passed"}
    assert len({p for v in pids(runs).values() for p in v}) == 1  # all in one process
    assert {c["nodeid"]: c["outcome"] for c in files["tests/test_b.py"]["cases"]} == {
        "tests/test_b.py::test_b": "passed", "tests/test_b.py::test_broken": "failed"}
    log = Path(files["tests/test_b.py"]["log"]).read_text()
    assert "needle" in log and "test_a" not in log.split("whole output")[-1].split("\n", 1)[-1]
    suite = {s.get("name"): s for s in ET.parse(junit).getroot().findall("testsuite")}["//tests:test_b"]
    assert suite.get("failures") == "1" and suite.get("tests") == "2"
    # The failure is not cached; the passes are.
    doc = run_json(cli, repo, "test", "//...", "-j", "1", expect=1)
    assert {f: t["status"] for f, t in by_file(doc).items()} == {
        "tests/test_a.py": "cached_local", "tests/test_b.py": "failed", "tests/test_c.py": "cached_local"}


@pytest.mark.parametrize("how", ["os_exit_in_test", "segfault_at_import"])
def test_a_dying_batch_reruns_unreported_files_alone(cli: CliRunner, tmp_path: Path, how: str) -> None:
    repo, runs = make_repo(tmp_path, ["a", "b", "c", "d"])
    killer = ("\ndef test_dies():\n    os._exit(3)\n" if how == "os_exit_in_test" else None)
    path = repo / "tests/test_b.py"
    if killer:
        path.write_text(path.read_text() + killer)
    else:
        path.write_text("import ctypes\nctypes.string_at(0)\n" + path.read_text())
    doc = run_json(cli, repo, "test", "//...", "-j", "1", expect=1)
    files = by_file(doc)
    assert files["tests/test_b.py"]["outcome"] == "failed"
    assert "before reporting tests/test_b.py" in files["tests/test_b.py"]["message"]
    for n in ("a", "c", "d"):
        assert files[f"tests/test_{n}.py"]["outcome"] == "passed", files[f"tests/test_{n}.py"]
    ran = pids(runs)
    # Every file reported passed really ran to the end in some process, and the culprit ran
    # alone in the end (a process of its own, not shared with any other file).
    culprit_last = ran.get("b", ["?"])[-1]
    assert all(culprit_last not in ran[n] for n in ("a", "c", "d")) or how == "segfault_at_import"


def test_flaky_attempts_rerun_only_the_failed_files(cli: CliRunner, tmp_path: Path) -> None:
    repo, runs = make_repo(tmp_path, ["a", "b"])
    flag = tmp_path / "flag"
    (repo / "tests/test_b.py").write_text((repo / "tests/test_b.py").read_text() + textwrap.dedent(f"""
        def test_flaky():
            import os
            first = not os.path.exists({str(flag)!r})
            open({str(flag)!r}, "a").close()
            assert not first
    """))
    doc = run_json(cli, repo, "test", "//...", "-j", "1", "--flaky-attempts", "2")
    files = by_file(doc)
    assert (files["tests/test_b.py"]["outcome"], files["tests/test_b.py"]["attempts"]) == ("flaky", 2)
    assert files["tests/test_a.py"]["outcome"] == "passed"
    assert len(pids(runs)["a"]) == 1 and len(pids(runs)["b"]) == 2


def test_no_tests_collected_is_a_pass_with_a_note(cli: CliRunner, tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, ["a"], {"tests/test_empty.py": "# nothing here yet\n"})
    for mode in ("--batch", "--no-batch"):
        doc = run_json(cli, repo, "test", "//...", mode, env={"CIOPT_DISABLE": "1"})
        t = by_file(doc)["tests/test_empty.py"]
        assert t["outcome"] == "passed", (mode, t)
        assert any("no tests collected" in n for n in t["notes"]), (mode, t)


def test_pytest_args_pass_through_and_join_the_key(cli: CliRunner, tmp_path: Path) -> None:
    repo, runs = make_repo(tmp_path, ["a", "b"])
    (repo / "tests/test_a.py").write_text((repo / "tests/test_a.py").read_text()
                                          + "\nimport pytest\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n")
    def with_args() -> dict:
        proc = cli("test", "//...", "-o", "json", "--", "-m", "not slow", cwd=repo)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    doc = with_args()
    assert [c["nodeid"] for c in by_file(doc)["tests/test_a.py"]["cases"]] == ["tests/test_a.py::test_a"]
    again = with_args()
    assert {t["status"] for t in again["tests"]} == {"cached_local"}
    plain = run_json(cli, repo, "test", "//...")
    assert {t["status"] for t in plain["tests"]} == {"executed"}  # other arguments, other key
    assert len(by_file(plain)["tests/test_a.py"]["cases"]) == 2


def test_pytest_semantics_markers_addopts_and_conftest(cli: CliRunner, tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, ["a", "b"], {
        "pyproject.toml": "[tool.pytest.ini_options]\naddopts = '--strict-markers'\nmarkers = ['slow']\n",
        "tests/conftest.py": "import pytest\n\n@pytest.fixture\ndef answer():\n    return 42\n",
        "tests/test_fixture.py": "def test_uses_conftest(answer):\n    assert answer == 42\n",
        "tests/test_strict.py": "import pytest\n\n@pytest.mark.undeclared\ndef test_x():\n    pass\n",
    })
    doc = run_json(cli, repo, "test", "//...", "-j", "1", expect=1)
    outcomes = {f: t["outcome"] for f, t in by_file(doc).items()}
    assert outcomes["tests/test_fixture.py"] == "passed"
    # --strict-markers from addopts: an unknown marker is a collection error, as with plain pytest.
    assert outcomes["tests/test_strict.py"] == "failed"
    assert outcomes["tests/test_a.py"] == outcomes["tests/test_b.py"] == "passed"


def test_affected_since_runs_only_what_a_change_can_affect(cli: CliRunner, tmp_path: Path) -> None:
    repo, runs = make_repo(tmp_path, ["a", "b", "c"])
    with open(repo / "src/mod_b.py", "a") as f:
        f.write("# one-line edit\n")
    junit = tmp_path / "junit.xml"
    doc = run_json(cli, repo, "test", "//...", "--affected-since", "HEAD", "--junit", str(junit))
    files = by_file(doc)
    assert files["tests/test_b.py"]["status"] == "executed"
    for n in ("a", "c"):
        t = files[f"tests/test_{n}.py"]
        assert (t["status"], t["outcome"]) == ("skipped_unaffected", "skipped_unaffected")
        assert "not affected by the changes since HEAD" in t["message"]
    assert sorted(pids(runs)) == ["b"]
    assert doc["summary"]["tests"]["skipped_unaffected"] == 2 and doc["summary"]["exit_code"] == 0
    skipped = [c for c in ET.parse(junit).getroot().iter("testcase") if c.find("skipped") is not None]
    assert len(skipped) == 2 and "not affected" in skipped[0].find("skipped").get("message")

    # A global input (pyproject.toml) changed: everything runs. So does the bypass.
    with open(repo / "pyproject.toml", "a") as f:
        f.write("# changed\n")
    doc = run_json(cli, repo, "test", "//...", "--affected-since", "HEAD")
    assert not any(t["status"] == "skipped_unaffected" for t in doc["tests"])
    assert doc["summary"]["selection"]["all"] is True
    git(repo, "checkout", "pyproject.toml")
    doc = run_json(cli, repo, "test", "//...", "--affected-since", "HEAD", env={"CIOPT_DISABLE": "1"})
    assert {t["status"] for t in doc["tests"]} == {"executed"}


def test_selection_enabled_takes_its_base_from_the_config(cli: CliRunner, tmp_path: Path) -> None:
    repo, runs = make_repo(tmp_path, ["a", "b"], {
        "config/ci-optimization.yaml": "enabled: true\nselection:\n  enabled: true\n  base: HEAD\n"})
    with open(repo / "src/mod_a.py", "a") as f:
        f.write("# edit\n")
    doc = run_json(cli, repo, "test", "//...")
    assert {f: t["status"] for f, t in by_file(doc).items()} == {
        "tests/test_a.py": "executed", "tests/test_b.py": "skipped_unaffected"}
    assert doc["summary"]["selection"]["source"] == "selection.base = HEAD"

    # Under GitHub Actions with no usable base (a shallow clone): everything runs, with a note.
    (repo / "config/ci-optimization.yaml").write_text("enabled: true\nselection:\n  enabled: true\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "config")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"before": "1" * 40}))
    doc = run_json(cli, repo, "test", "//...", env={"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": "push",
                                                     "GITHUB_EVENT_PATH": str(event)})
    assert not any(t["status"] == "skipped_unaffected" for t in doc["tests"])
    assert any("fetch-depth" in n for n in doc["summary"]["notes"])


def test_python_files_no_one_imports_are_data_of_the_tests_beside_them(cli: CliRunner, tmp_path: Path) -> None:
    """Jinja's tests put tests/res on sys.path and import a module from it at run time: no
    import statement shows it, so it is data. It must be in the sandbox, and a change to it must
    select those tests."""
    repo, _ = make_repo(tmp_path, ["a"], {
        "tests/res/fixturepkg.py": "VALUE = 7\n",
        "tests/test_res.py": """
            import importlib, pathlib, sys

            def test_fixture_package(monkeypatch):
                monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent / "res"))
                assert importlib.import_module("fixturepkg").VALUE == 7
        """,
    })
    doc = run_json(cli, repo, "test", "//...")
    assert by_file(doc)["tests/test_res.py"]["outcome"] == "passed", by_file(doc)["tests/test_res.py"]
    (repo / "tests/res/fixturepkg.py").write_text("VALUE = 7  # edited\n")
    affected = json.loads(cli("affected", "--base", "HEAD", "-o", "json", cwd=repo, check=True).stdout)
    assert "tests/test_res.py" in affected["test_files"]
    doc = run_json(cli, repo, "test", "//...")
    assert by_file(doc)["tests/test_res.py"]["status"] == "executed"  # its key changed too


def test_only_what_plain_pytest_collects_is_a_test(cli: CliRunner, tmp_path: Path) -> None:
    """`testpaths` decides what plain `pytest` collects; a test_*.py outside it is not a test."""
    repo, _ = make_repo(tmp_path, ["a"], {
        "pyproject.toml": "[tool.pytest.ini_options]\ntestpaths = ['tests']\n",
        "examples/test_example.py": "def test_example():\n    assert False, 'pytest never runs this'\n",
    })
    doc = run_json(cli, repo, "test", "//...")
    assert set(by_file(doc)) == {"tests/test_a.py"}
    graph = json.loads(cli("graph", "-o", "json", cwd=repo, check=True).stdout)
    assert graph["test_files"] == ["tests/test_a.py"]
