"""`ciopt test` runs the project's own interpreter with its source roots first on the path
(issue 9): never ciopt's own site-packages, and a dependency upgrade re-runs the tests.

The project venv is real: `python -m venv --system-site-packages` over the base interpreter
(for pytest), with real distributions pip-installed into it from local source directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import CliRunner
from ciopt.exec.python_env import InterpreterError, choose_interpreter, resolve_python_env


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


def dist_source(where: Path, name: str, version: str, module: str, body: str) -> Path:
    """A real wheel of one package, built by hand (no `wheel` or build backend needed offline)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": body,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: ciopt-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    where.mkdir(parents=True, exist_ok=True)
    wheel = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in {**files, f"{dist_info}/RECORD": record}.items():
            z.writestr(path, text)
    return wheel


def pip_install(venv: Path, source: Path) -> None:
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--force-reinstall", str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def project_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's venv: pytest from the base interpreter, plus `click` at a version that is
    not the checkout's and `depx` 1.0."""
    where = tmp_path_factory.mktemp("project-venv")
    venv = where / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    if subprocess.run([py, "-c", "import pytest"], capture_output=True).returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", "pytest"], check=True, timeout=600)
    pip_install(venv, dist_source(where, "click", "0.0.1", "click", 'VERSION = "installed-0.0.1"\n'))
    pip_install(venv, dist_source(where, "depx", "1.0", "depx", 'V = "1.0"\n'))
    return venv


PROJECT = {
    # The checkout's click: what must be tested, although the venv (and ciopt's own venv) has another.
    "src/click/__init__.py": 'VERSION = "checkout"\n',
    "src/click/core.py": "def answer():\n    return 42\n",
    "tests/test_click.py": """
        import click
        from click.core import answer

        def test_the_checkouts_click_is_imported():
            assert click.VERSION == "checkout", click.__file__
            assert "/src/click/" in click.__file__
            assert answer() == 42
    """,
    "tests/test_dep.py": """
        import os, sys
        import depx

        def test_project_interpreter_and_dependency():
            assert depx.V in ("1.0", "2.0")
            assert sys.prefix == os.environ["VIRTUAL_ENV"] and "project-venv" in sys.prefix
    """,
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    repo = tmp_path / "project"
    write(repo, PROJECT)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    return repo


def run_tests(cli: CliRunner, repo: Path, venv: Path, *args: str, expect: int = 0) -> dict:
    env = {"VIRTUAL_ENV": str(venv)}
    proc = cli("test", "//...", "-o", "json", *args, cwd=repo, env=env)
    assert proc.returncode == expect, proc.stderr
    return json.loads(proc.stdout)


def by_file(doc: dict) -> dict[str, dict]:
    return {f: t for t in doc["tests"] for f in t["files"]}


def test_checkout_is_tested_not_the_installed_click(cli: CliRunner, project: Path, project_venv: Path) -> None:
    import click as ciopts_click  # ciopt's own dependency, at a release from PyPI

    assert not hasattr(ciopts_click, "VERSION")
    doc = run_tests(cli, project, project_venv)
    tests = by_file(doc)
    assert set(tests) == {"tests/test_click.py", "tests/test_dep.py"}
    for t in tests.values():
        assert (t["outcome"], t["status"]) == ("passed", "executed"), Path(t["log"]).read_text()
    assert doc["summary"]["python"]["executable"] == str(project_venv / "bin" / "python")
    assert doc["summary"]["python"]["reason"] == "$VIRTUAL_ENV"
    cases = tests["tests/test_click.py"]["cases"]
    assert [(c["nodeid"], c["outcome"]) for c in cases] == [
        ("tests/test_click.py::test_the_checkouts_click_is_imported", "passed")]


def test_dependency_upgrade_reruns_tests_and_nothing_else(cli: CliRunner, tmp_path: Path,
                                                          project_venv: Path) -> None:
    ws = tmp_path / "ws"
    write(ws, {
        "config/ci-optimization.yaml": "enabled: false\n",
        "BUILD": """
            genrule(name = "gen", srcs = ["in.txt"], outs = ["out.txt"], cmd = "cp $< $@")
            py_test(name = "test_dep", srcs = ["test_dep.py"], data = [":gen"])
        """,
        "in.txt": "x\n",
        "test_dep.py": PROJECT["tests/test_dep.py"],
    })
    status = lambda doc: {a["label"]: a["status"] for a in doc["actions"]}  # noqa: E731
    assert status(run_tests(cli, ws, project_venv)) == {"//:gen": "executed", "//:test_dep": "executed"}
    assert status(run_tests(cli, ws, project_venv)) == {"//:gen": "cached_local", "//:test_dep": "cached_local"}
    # pip install -U depx: no lockfile in this workspace, yet the cached pass must not stand.
    pip_install(project_venv, dist_source(tmp_path, "depx", "2.0", "depx", 'V = "2.0"\n'))
    try:
        assert status(run_tests(cli, ws, project_venv)) == {"//:gen": "cached_local", "//:test_dep": "executed"}
        assert status(run_tests(cli, ws, project_venv)) == {"//:gen": "cached_local", "//:test_dep": "cached_local"}
    finally:
        pip_install(project_venv, dist_source(tmp_path / "back", "depx", "1.0", "depx", 'V = "1.0"\n'))


def test_interpreter_resolution_order(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    for venv in ("venv", ".venv", "active"):
        python = root / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("#!/bin/sh\n")
        python.chmod(0o755)
    configured = root / "custom" / "python3"
    configured.parent.mkdir()
    configured.write_text("#!/bin/sh\n")
    env = {"VIRTUAL_ENV": str(root / "active"), "PATH": os.environ["PATH"]}

    assert choose_interpreter(root, "custom/python3", "config/ci-optimization.yaml:3", env) == (
        str(configured), "python.interpreter in config/ci-optimization.yaml:3")
    assert choose_interpreter(root, None, None, env) == (str(root / "active/bin/python"), "$VIRTUAL_ENV")
    env.pop("VIRTUAL_ENV")
    assert choose_interpreter(root, None, None, env) == (str(root / ".venv/bin/python"),
                                                          ".venv/ at the workspace root")
    (root / ".venv/bin/python").unlink()
    assert choose_interpreter(root, None, None, env)[1] == "venv/ at the workspace root"
    (root / "venv/bin/python").unlink()
    path, reason = choose_interpreter(root, None, None, env)
    assert reason.startswith("python3 on PATH")
    # Never ciopt's own venv, even when it is first on PATH.
    assert not path.startswith(sys.prefix + os.sep) or sys.prefix == sys.base_prefix

    with pytest.raises(InterpreterError, match=r"python.interpreter in cfg.yaml:7: 'nope/python' does not exist"):
        choose_interpreter(root, "nope/python", "cfg.yaml:7", env)


def test_probe_is_cached_until_site_packages_change(tmp_path: Path, project_venv: Path) -> None:
    cache = tmp_path / "cache"
    env = {"VIRTUAL_ENV": str(project_venv), "PATH": os.environ["PATH"]}
    first = resolve_python_env(tmp_path, None, None, cache, env)
    assert "depx==1.0" in first.distributions and "click==0.0.1" in first.distributions
    [record] = list((cache / "python-envs").iterdir())
    data = json.loads(record.read_text())
    data["probe"]["distributions"] = ["from-the-cache==1"]
    record.write_text(json.dumps(data))
    assert resolve_python_env(tmp_path, None, None, cache, env).distributions == ("from-the-cache==1",)
    site = Path(first.site_dirs[0])
    os.utime(site, ns=(site.stat().st_atime_ns, site.stat().st_mtime_ns + 1_000_000_000))
    assert "depx==1.0" in resolve_python_env(tmp_path, None, None, cache, env).distributions


def test_config_show_names_the_interpreter(cli: CliRunner, project: Path, project_venv: Path) -> None:
    proc = cli("config", "show", cwd=project, env={"VIRTUAL_ENV": str(project_venv)})
    assert proc.returncode == 0, proc.stderr
    assert f"{project_venv}/bin/python" in proc.stdout and "$VIRTUAL_ENV" in proc.stdout
    doc = json.loads(cli("config", "show", "-o", "json", cwd=project, env={"VIRTUAL_ENV": str(project_venv)},
                         check=True).stdout)
    assert doc["python"]["executable"] == f"{project_venv}/bin/python"


def test_checkouts_at_different_paths_share_test_results(cli: CliRunner, tmp_path: Path) -> None:
    """Two runners, each with the checkout and its `.venv` at its own path, one store between
    them: the second is served from the cache. The interpreter used to be in the ActionKey by
    absolute path, so no two runners at different paths ever shared a result (found by
    benches/ci_replay.py's concurrent runners)."""
    docs = []
    for runner in ("runner-a", "runner-b"):
        ws = tmp_path / runner / "checkout"
        write(ws, {"config/ci-optimization.yaml": "enabled: false\n",
                   "pkg/__init__.py": "", "pkg/mod.py": "def f():\n    return 1\n",
                   "tests/test_mod.py": "from pkg.mod import f\n\ndef test_f():\n    assert f() == 1\n"})
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--system-site-packages",
                        str(ws / ".venv")], check=True, timeout=300)
        proc = cli("test", "//...", "-o", "json", cwd=ws, env={"VIRTUAL_ENV": ""})
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    for doc, runner in zip(docs, ("runner-a", "runner-b")):
        assert doc["summary"]["python"]["executable"] == str(tmp_path / runner / "checkout/.venv/bin/python")
    assert [t["status"] for t in docs[0]["tests"]] == ["executed"]
    assert [t["status"] for t in docs[1]["tests"]] == ["cached_local"]
