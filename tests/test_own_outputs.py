"""ciopt's own outputs (ciopt-out/, an in-workspace store) are never sources or changes, in a
repository whose .gitignore knows nothing about ciopt (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import CliRunner
from ciopt.own_outputs import OwnOutputs, mark_ignored

FILES = {
    "BUILD": (
        'genrule(name = "gen", srcs = ["lib.py"], outs = ["gen.txt"], cmd = "wc -l $< > $@")\n'
        'py_test(name = "test_lib", srcs = ["test_lib.py"], deps = [":lib"], data = [":gen"])\n'
        'py_library(name = "lib", srcs = ["lib.py"])\n'
    ),
    "lib.py": "def f():\n    return 1\n",
    "test_lib.py": "import lib\n\ndef test_f():\n    assert lib.f() == 1\n",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    for rel, text in FILES.items():
        (r / rel).write_text(text)
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "initial")
    assert not (r / ".gitignore").exists()
    return r


@pytest.mark.parametrize("store_inside", [False, True], ids=["store-outside", "store-inside"])
def test_build_and_test_leave_no_change_behind(cli: CliRunner, repo: Path, store_inside: bool) -> None:
    env = {"CIOPT_CACHE_DIR": str(repo / "my-store")} if store_inside else {}
    cli("build", "//...", cwd=repo, env=env, check=True)
    cli("test", "//...", cwd=repo, env=env, check=True)
    assert (repo / "ciopt-out" / "testlogs").is_dir()
    assert (repo / "ciopt-out" / ".gitignore").read_text().splitlines()[-1] == "*"
    if store_inside:
        assert (repo / "my-store" / ".gitignore").is_file()

    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    proc = cli("affected", "--base", "HEAD", "-o", "json", cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["changed_files"] == [] and doc["test_files"] == [] and doc["test_targets"] == []


def test_outputs_are_not_changes_even_without_the_marker(cli: CliRunner, repo: Path) -> None:
    """An older ciopt-out/ (no .gitignore inside) and a store inside the workspace: still not changes."""
    cli("test", "//...", cwd=repo, env={"CIOPT_CACHE_DIR": str(repo / "store")}, check=True)
    (repo / "ciopt-out" / ".gitignore").unlink()
    (repo / "store" / ".gitignore").unlink()
    assert git(repo, "status", "--porcelain")  # git now sees them ...
    proc = cli("affected", "--base", "HEAD", "-o", "json", cwd=repo, env={"CIOPT_CACHE_DIR": str(repo / "store")})
    doc = json.loads(proc.stdout)
    assert doc["changed_files"] == [] and doc["test_files"] == []  # ... ciopt does not


def test_graph_hash_and_glob_do_not_see_outputs(cli: CliRunner, repo: Path) -> None:
    out = repo / "ciopt-out" / "pkg"
    out.mkdir(parents=True)
    (out / "stray.py").write_text("import lib\n")
    (out / "test_stray.py").write_text("def test_x():\n    pass\n")
    (repo / "BUILD").write_text(FILES["BUILD"] + 'genrule(name = "all", srcs = glob(["**/*.py"]), outs = ["all.txt"], '
                                'cmd = "echo $(SRCS) > $@")\n')

    graph = json.loads(cli("graph", "-o", "json", cwd=repo, check=True).stdout)
    assert not any(f.startswith("ciopt-out/") for f in graph["files"])
    assert not any(f.startswith("ciopt-out/") for f in graph["test_files"])

    hashed = cli("hash", ".", cwd=repo, check=True).stdout
    assert "ciopt-out" not in hashed and "lib.py" in hashed

    cli("build", "//:all", cwd=repo, check=True)
    assert (repo / "ciopt-out" / "all.txt").read_text().split() == ["lib.py", "test_lib.py"]


def test_own_outputs_paths(tmp_path: Path) -> None:
    own = OwnOutputs.of(tmp_path, tmp_path / "cache" / "store")
    assert own.dirs == ("ciopt-out", "cache/store")
    assert own.contains("ciopt-out/testlogs/a/test.log") and own.contains("cache/store/data.mdb")
    assert own.contains(".ciopt-demo/x")
    assert not own.contains("ciopt-outside.py") and not own.contains("cache/other.py")
    assert OwnOutputs.of(tmp_path, tmp_path.parent / "elsewhere").dirs == ("ciopt-out",)
    mark_ignored(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir" / ".gitignore").read_text().endswith("*\n")


def test_a_virtualenv_in_the_checkout_is_neither_source_nor_change(cli: CliRunner, repo: Path) -> None:
    """A runner restores `.venv/` into a checkout whose .gitignore does not list it: pip's vendored
    test files are not tests, and its files are not changes (found by benches/ci_replay.py)."""
    venv = repo / "env-any-name"
    (venv / "lib" / "site-packages" / "pip" / "tests").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "site-packages" / "pip" / "tests" / "test_vendored.py").write_text("def test_x():\n    pass\n")
    graph = json.loads(cli("graph", "-o", "json", cwd=repo, check=True).stdout)
    assert not any(f.startswith("env-any-name/") for f in [*graph["files"], *graph["test_files"]])
    doc = json.loads(cli("affected", "--base", "HEAD", "-o", "json", cwd=repo, check=True).stdout)
    assert doc["changed_files"] == [] and doc["test_files"] == []
    assert "env-any-name" not in cli("hash", ".", cwd=repo, check=True).stdout
