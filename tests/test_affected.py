"""`ciopt affected` against a fixture repository with git history, checked by a dynamic oracle:
each test file is run under pytest recording which project files Python actually imported;
for every single-file change, every test whose recorded set holds the changed file must be
selected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import CliRunner, assert_one_line_error

FILES: dict[str, str] = {
    "config/ci-optimization.yaml": "enabled: true\n",
    "pyproject.toml": '[tool.pytest.ini_options]\npythonpath = ["src"]\n',
    "requirements.txt": "pytest\n",
    "docs/index.md": "# docs\n",
    "src/pkg/__init__.py": "VERSION = 1\n",
    "src/pkg/core.py": "from pkg import util\n\ndef answer():\n    return util.double(21)\n",
    "src/pkg/util.py": "def double(x):\n    return 2 * x\n",
    "src/pkg/sub/__init__.py": "from .. import core\n",
    "src/pkg/sub/mod.py": "from . import helpers\n\ndef value():\n    return helpers.X\n",
    "src/pkg/sub/helpers.py": "X = 3\n",
    "src/pkg/lazy.py": "def load():\n    import pkg.heavy\n    return pkg.heavy.N\n",
    "src/pkg/heavy.py": "N = 5\n",
    "src/pkg/optional.py": "try:\n    import pkg.fast as impl\nexcept ImportError:\n    impl = None\n",
    "src/pkg/fast.py": "SPEED = 9\n",
    "src/pkg/typed.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.types_only import T\n\nY = 1\n"
    ),
    "src/pkg/types_only.py": "T = int\n",
    "src/pkg/dyn.py": "import importlib\nplugin = importlib.import_module('pkg.plugin')\n",
    "src/pkg/plugin.py": "NAME = 'plugin'\n",
    "src/pkg/suppressed.py": "import contextlib\nwith contextlib.suppress(ImportError):\n    import pkg.extra\n",
    "src/pkg/extra.py": "E = 1\n",
    "src/pkg/dunder.py": "mod = __import__('pkg.dunder_target')\n",
    "src/pkg/dunder_target.py": "D = 1\n",
    "src/pkg/star.py": "from pkg.util import *\n",
    "src/pkg/fixtures_helper.py": "FIX = 7\n",
    "tests/conftest.py": "import pkg.fixtures_helper\n",
    "tests/test_core.py": "import pkg.core\n\ndef test_core():\n    assert pkg.core.answer() == 42\n",
    "tests/test_sub.py": "from pkg.sub import mod\n\ndef test_sub():\n    assert mod.value() == 3\n",
    "tests/test_lazy.py": "from pkg import lazy\n\ndef test_lazy():\n    assert lazy.load() == 5\n",
    "tests/test_optional.py": "import pkg.optional\n\ndef test_opt():\n    assert pkg.optional.impl.SPEED == 9\n",
    "tests/test_typed.py": "import pkg.typed\n\ndef test_typed():\n    assert pkg.typed.Y == 1\n",
    "tests/test_dyn.py": "import pkg.dyn\n\ndef test_dyn():\n    assert pkg.dyn.plugin.NAME == 'plugin'\n",
    "tests/test_suppressed.py": "import pkg.suppressed\n\ndef test_s():\n    assert pkg.suppressed\n",
    "tests/test_star.py": "from pkg.star import double\n\ndef test_star():\n    assert double(1) == 2\n",
    "tests/test_dunder.py": "import pkg.dunder\n\ndef test_dunder():\n    assert pkg.dunder.mod\n",
    "tests/test_data.py": (
        "import json, pathlib\n\ndef test_data():\n"
        "    assert json.loads((pathlib.Path(__file__).parent / 'data' / 'input.json').read_text())['ok']\n"
    ),
    "tests/data/input.json": '{"ok": true}\n',
    "tests/test_isolated.py": "import json\n\ndef test_iso():\n    assert json.dumps(1) == '1'\n",
    "tests/helpers/__init__.py": "",
    "tests/helpers/shared.py": "S = 1\n",
    "tests/test_uses_helpers.py": "from helpers import shared\n\ndef test_h():\n    assert shared.S == 1\n",
}

ORACLE_PLUGIN = '''
import json, os, sys
def pytest_sessionfinish(session):
    root = os.environ["ORACLE_ROOT"]
    files = sorted({os.path.relpath(m.__file__, root) for m in list(sys.modules.values())
                    if getattr(m, "__file__", None) and os.path.abspath(m.__file__).startswith(root + os.sep)})
    with open(os.environ["ORACLE_OUT"], "w") as f:
        json.dump(files, f)
'''


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


def write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("affected") / "repo"
    r.mkdir()
    write(r, FILES)
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "initial")
    return r


@pytest.fixture(scope="module")
def oracle(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """test file -> project files Python imported while running it."""
    plugin_dir = tmp_path_factory.mktemp("oracle")
    (plugin_dir / "oracle_plugin.py").write_text(ORACLE_PLUGIN)
    recorded: dict[str, set[str]] = {}
    for test in sorted(p for p in FILES if p.startswith("tests/test_")):
        out = plugin_dir / (test.replace("/", "_") + ".json")
        env = {**os.environ, "ORACLE_ROOT": str(repo.resolve()), "ORACLE_OUT": str(out),
               "PYTHONPATH": str(plugin_dir), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "oracle_plugin", "-p", "no:cacheprovider",
                               test], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        recorded[test] = set(json.loads(out.read_text()))
    return recorded


def affected_json(cli: CliRunner, repo: Path, *args: str) -> dict:
    proc = cli("affected", *args, "-o", "json", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def commit_change(repo: Path, rel: str) -> None:
    with open(repo / rel, "a") as f:
        # Whitespace keeps data files (JSON) valid; a comment for code.
        f.write("\n# changed\n" if rel.endswith((".py", ".txt", ".toml")) else "\n")
    git(repo, "commit", "-qam", f"change {rel}")


def test_oracle_recorded_something(oracle: dict[str, set[str]]) -> None:
    # The oracle itself must see real imports, or the next test proves nothing.
    assert "src/pkg/util.py" in oracle["tests/test_core.py"]
    assert "src/pkg/plugin.py" in oracle["tests/test_dyn.py"]
    assert "src/pkg/heavy.py" in oracle["tests/test_lazy.py"]


def test_every_single_file_change_selects_every_test_that_imported_it(
        cli: CliRunner, repo: Path, oracle: dict[str, set[str]]) -> None:
    misses = []
    for rel in sorted(p for p in FILES if p.endswith(".py")):
        commit_change(repo, rel)
        doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
        selected = set(doc["test_files"])
        must = {t for t, files in oracle.items() if rel in files}
        if rel.startswith("tests/test_"):
            must.add(rel)
        if not must <= selected:
            misses.append((rel, sorted(must - selected)))
        assert doc["changed_files"] == [rel]
    assert misses == []


def test_selection_is_not_everything(cli: CliRunner, repo: Path) -> None:
    commit_change(repo, "src/pkg/heavy.py")
    doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
    assert doc["all"] is False
    assert doc["test_files"] == ["tests/test_lazy.py"]
    assert doc["reason"]["tests/test_lazy.py"] == ["tests/test_lazy.py", "src/pkg/lazy.py", "src/pkg/heavy.py"]
    assert "//tests:test_lazy" in doc["test_targets"]


def test_weak_typechecking_dynamic_and_star_imports_count(cli: CliRunner, repo: Path) -> None:
    for changed, test in [("src/pkg/fast.py", "tests/test_optional.py"), ("src/pkg/types_only.py", "tests/test_typed.py"),
                          ("src/pkg/extra.py", "tests/test_suppressed.py"), ("src/pkg/plugin.py", "tests/test_dyn.py"),
                          ("src/pkg/dunder_target.py", "tests/test_dunder.py"), ("src/pkg/util.py", "tests/test_star.py"),
                          ("src/pkg/fixtures_helper.py", "tests/test_isolated.py"),
                          ("tests/helpers/shared.py", "tests/test_uses_helpers.py")]:
        commit_change(repo, changed)
        doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
        assert test in doc["test_files"], (changed, doc["test_files"])


def test_data_file_selects_tests_of_its_directory(cli: CliRunner, repo: Path) -> None:
    commit_change(repo, "tests/data/input.json")
    doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "tests/test_data.py" in doc["test_files"]


def test_global_input_selects_everything_and_names_it(cli: CliRunner, repo: Path) -> None:
    commit_change(repo, "requirements.txt")
    doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
    assert doc["all"] is True
    assert doc["global_inputs_changed"] == ["requirements.txt"]
    assert len(doc["test_files"]) == len([p for p in FILES if p.startswith("tests/test_")])
    assert "requirements.txt (global input)" in doc["reason"]["*"]


def test_docs_change_selects_nothing(cli: CliRunner, repo: Path) -> None:
    commit_change(repo, "docs/index.md")
    doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
    assert doc["test_files"] == [] and doc["all"] is False


def test_deleted_module_selects_its_importers(cli: CliRunner, repo: Path) -> None:
    git(repo, "rm", "-q", "src/pkg/heavy.py")
    git(repo, "commit", "-qm", "delete heavy")
    doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "tests/test_lazy.py" in doc["test_files"]
    git(repo, "revert", "--no-edit", "HEAD")


def test_renamed_module_selects_importers_of_the_old_name(cli: CliRunner, repo: Path) -> None:
    git(repo, "mv", "src/pkg/sub/helpers.py", "src/pkg/sub/helpers2.py")
    git(repo, "commit", "-qm", "rename")
    doc = affected_json(cli, repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "src/pkg/sub/helpers.py" in doc["changed_files"] and "src/pkg/sub/helpers2.py" in doc["changed_files"]
    assert "tests/test_sub.py" in doc["test_files"]
    git(repo, "revert", "--no-edit", "HEAD")


def test_uncommitted_and_untracked_changes_count_without_head(cli: CliRunner, repo: Path) -> None:
    (repo / "src/pkg/util.py").write_text((repo / "src/pkg/util.py").read_text() + "\n# dirty\n")
    (repo / "tests/test_new.py").write_text("import pkg.heavy\n\ndef test_new():\n    pass\n")
    try:
        doc = affected_json(cli, repo, "--base", "HEAD")
        assert set(doc["changed_files"]) == {"src/pkg/util.py", "tests/test_new.py"}
        assert {"tests/test_core.py", "tests/test_star.py", "tests/test_new.py"} <= set(doc["test_files"])
        assert doc["head"] is None
    finally:
        git(repo, "checkout", "--", "src/pkg/util.py")
        (repo / "tests/test_new.py").unlink()


def test_head_not_checked_out_uses_that_commits_tree(cli: CliRunner, repo: Path) -> None:
    commit_change(repo, "src/pkg/plugin.py")
    target = git(repo, "rev-parse", "HEAD").strip()
    commit_change(repo, "src/pkg/fast.py")  # HEAD moves on: --head names an older commit
    doc = affected_json(cli, repo, "--base", f"{target}~1", "--head", target)
    assert doc["changed_files"] == ["src/pkg/plugin.py"]
    assert doc["test_files"] == ["tests/test_dyn.py"]


def test_unresolved_dynamic_imports_are_listed(cli: CliRunner, repo: Path) -> None:
    (repo / "src/pkg/dynamic_name.py").write_text("import importlib\nname = 'pkg.' + 'x'\nm = importlib.import_module(name)\n")
    try:
        doc = affected_json(cli, repo, "--base", "HEAD")
        assert {"file": "src/pkg/dynamic_name.py", "line": 3, "expression": "importlib.import_module(name)"} \
            in doc["unresolved_imports"]
    finally:
        (repo / "src/pkg/dynamic_name.py").unlink()


def test_bad_revision_is_a_one_line_error(cli: CliRunner, repo: Path) -> None:
    assert_one_line_error(cli("affected", "--base", "no-such-branch", cwd=repo), 2, "unknown revision 'no-such-branch'")


def test_bypass_selects_everything(cli: CliRunner, repo: Path) -> None:
    proc = cli("affected", "--base", "HEAD", "-o", "json", cwd=repo, env={"CIOPT_DISABLE": "1"})
    doc = json.loads(proc.stdout)
    assert doc["all"] is True and "emergency bypass" in doc["reason"]["*"][0]


def test_graph_json_and_dot(cli: CliRunner, repo: Path) -> None:
    doc = json.loads(cli("graph", "-o", "json", cwd=repo, check=True).stdout)
    files = doc["files"]
    assert "src/pkg/util.py" in files["src/pkg/core.py"]
    assert "src/pkg/__init__.py" in files["src/pkg/core.py"]  # the package's __init__ runs first
    assert "tests/conftest.py" in files["tests/test_core.py"]
    assert "src/pkg/__init__.py" in files["src/pkg/sub/__init__.py"]
    assert "src" in doc["source_roots"]
    dot = cli("graph", "-o", "dot", cwd=repo, check=True).stdout
    assert '"src/pkg/core.py" -> "src/pkg/util.py";' in dot


def test_zero_config_targets_query_and_test(cli: CliRunner, repo: Path) -> None:
    """No BUILD files: every test file is a py_test, every module a py_library, deps inferred."""
    tests = cli("query", "tests(//...)", cwd=repo, check=True).stdout.split()
    assert "//tests:test_lazy" in tests and "//src/pkg:heavy" not in tests
    rdeps = cli("query", "rdeps(//..., //src/pkg:heavy)", cwd=repo, check=True).stdout.split()
    assert {"//src/pkg:heavy", "//src/pkg:lazy", "//tests:test_lazy"} <= set(rdeps)
    assert "//tests:test_core" not in rdeps
    proc = cli("test", "//tests:test_lazy", "//tests:test_data", "-o", "json", cwd=repo)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert {t["label"]: t["outcome"] for t in doc["tests"]} == {"//tests:test_lazy": "passed",
                                                                "//tests:test_data": "passed"}


def test_inferred_deps_fill_in_build_file_targets(cli: CliRunner, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws, {
        "config/ci-optimization.yaml": "enabled: true\n",
        "lib/BUILD": 'py_library(name = "lib", srcs = ["util.py"])\n',
        "lib/util.py": "def f():\n    return 1\n",
        # The test declares no deps: its import of lib.util is inferred.
        "app/BUILD": 'py_test(name = "test_app", srcs = ["test_app.py"])\n',
        "app/test_app.py": "from lib.util import f\n\ndef test_f():\n    assert f() == 1\n",
    })
    assert cli("query", "deps(//app:test_app)", cwd=ws, check=True).stdout.split() == ["//app:test_app", "//lib:lib"]
    proc = cli("test", "//app:test_app", cwd=ws)
    assert proc.returncode == 0, proc.stderr


def test_tailor_writes_loadable_build_files_even_with_import_cycles(cli: CliRunner, tmp_path: Path) -> None:
    ws = tmp_path / "cyc"
    write(ws, {
        "config/ci-optimization.yaml": "enabled: true\n",
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",  # a and b import each other
        "pkg/b.py": "from pkg import a\n",
        "pkg/c.py": "from pkg import a\n",
        "pkg/test_c.py": "from pkg import c\n\ndef test_c():\n    pass\n",
    })
    assert cli("tailor", "--check", cwd=ws).returncode == 1
    cli("tailor", cwd=ws, check=True)
    build = (ws / "pkg/BUILD").read_text()
    assert 'name = "test_c"' in build and '":c"' in build
    assert cli("tailor", "--check", cwd=ws).returncode == 0  # idempotent
    # The declared graph is acyclic (the a<->b edge is left to inference) and loads.
    deps = cli("query", "deps(//pkg:c)", cwd=ws, check=True).stdout.split()
    assert {"//pkg:a", "//pkg:b", "//pkg:c"} <= set(deps)
    assert cli("test", "//pkg:test_c", cwd=ws).returncode == 0


def test_a_git_repository_nested_in_a_workspace_is_its_own_workspace(cli: CliRunner, tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    write(outer, {"config/ci-optimization.yaml": "enabled: true\n", "outer.py": ""})
    git(outer, "init", "-q", "-b", "main")
    inner = outer / "vendor" / "inner"
    write(inner, {"a.py": "X = 1\n", "test_a.py": "import a\n\ndef test_a():\n    assert a.X\n"})
    git(inner, "init", "-q", "-b", "main")
    git(inner, "add", "-A")
    git(inner, "commit", "-qm", "inner")
    (inner / "a.py").write_text("X = 2\n")
    doc = affected_json(cli, inner, "--base", "HEAD")
    assert doc["changed_files"] == ["a.py"] and doc["test_files"] == ["test_a.py"]
