"""`ciopt explain LABEL` and `ciopt build --explain`: real builds of small workspaces, one
change at a time, and the explanation must name exactly that change and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from buildws import make_workspace, run_json, statuses
from conftest import CliRunner, assert_one_line_error

GEN = """
    genrule(
        name = "upper",
        srcs = ["in.txt"],
        outs = ["upper.txt"],
        cmd = "tr a-z A-Z < $< > $@",
        env = {"MODE": "fast"},
    )
    genrule(
        name = "twice",
        srcs = [":upper"],
        outs = ["twice.txt"],
        cmd = "cat $< $< > $@",
    )
    filegroup(name = "files", srcs = ["in.txt"])
"""


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, {"a/BUILD": GEN, "a/in.txt": "hello\n", "requirements.txt": "six==1.16\n"})


def explain(cli: CliRunner, ws: Path, target: str, *args: str) -> dict:
    return run_json(cli, ws, "explain", target, *args)


def edit(ws: Path, rel: str, old: str, new: str) -> None:
    path = ws / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new))


def only_change(doc: dict) -> dict:
    assert len(doc["changes"]) == 1, doc["changes"]
    return doc["changes"][0]


def test_never_built_then_hit(cli: CliRunner, ws: Path) -> None:
    before = explain(cli, ws, "//a:upper")
    assert before["status"] == "never_built"
    assert before["previous_key"] is None and before["changes"] == []
    assert len(before["key"]) == 64

    built = run_json(cli, ws, "build", "//...")
    after = explain(cli, ws, "//a:upper")
    assert after["status"] == "hit" and after["tier"] == "local"
    # The key explain computes is the one the build used.
    assert after["key"] == before["key"] == [a for a in built["actions"] if a["label"] == "//a:upper"][0]["key"]
    assert set(after) >= {"label", "key", "previous_key", "status", "changes"}


def test_source_file_change_is_named(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    (ws / "a/in.txt").write_text("hello world\n")
    doc = explain(cli, ws, "//a:upper")
    assert doc["status"] == "changed"
    c = only_change(doc)
    assert (c["part"], c["name"]) == ("input", "a/in.txt")
    assert c["before"].endswith("/6") and c["after"].endswith("/12")
    assert doc["previous_key"] != doc["key"]


def test_env_change_is_named(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    edit(ws, "a/BUILD", '"MODE": "fast"', '"MODE": "slow", "LANG": "C"')
    doc = explain(cli, ws, "//a:upper")
    assert doc["status"] == "changed"
    assert doc["changes"] == [
        {"part": "env", "name": "LANG", "before": None, "after": "C"},
        {"part": "env", "name": "MODE", "before": "fast", "after": "slow"},
    ]


def test_command_change_is_named(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    edit(ws, "a/BUILD", "tr a-z A-Z", "tr a-y A-Y")
    c = only_change(explain(cli, ws, "//a:upper"))
    assert (c["part"], c["name"]) == ("argv", "argv")
    assert "tr a-z A-Z" in c["before"] and "tr a-y A-Y" in c["after"]


def test_toolchain_change_is_named(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    (ws / "requirements.txt").write_text("six==1.17\n")
    c = only_change(explain(cli, ws, "//a:upper"))
    assert (c["part"], c["name"]) == ("toolchain", "lockfiles.requirements.txt")
    assert c["before"] != c["after"]


def test_attribute_change_is_named(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    edit(ws, "a/BUILD", 'outs = ["upper.txt"],', 'outs = ["upper.txt"], requires = {"cpus": 1},')
    c = only_change(explain(cli, ws, "//a:upper"))
    assert (c["part"], c["name"]) == ("attribute", "requires")


def test_build_explain_names_the_change_and_hit_keeps_it(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    (ws / "a/in.txt").write_text("bye\n")
    doc = run_json(cli, ws, "build", "//...", "--explain")
    assert statuses(doc) == {"//a:upper": "executed", "//a:twice": "executed"}
    by_label = {e["label"]: e for e in doc["explain"]}
    assert set(by_label) == {"//a:upper", "//a:twice"}
    assert [c["name"] for c in by_label["//a:upper"]["changes"]] == ["a/in.txt"]
    assert [c["name"] for c in by_label["//a:twice"]["changes"]] == ["a/upper.txt"]  # the generated input
    assert all(e["status"] == "changed" for e in doc["explain"])

    # Afterwards the key is cached, and explain still says what made it run.
    after = explain(cli, ws, "//a:upper")
    assert after["status"] == "hit"
    assert [c["name"] for c in after["changes"]] == ["a/in.txt"]

    # Text mode: one headline per action that ran, then its changes, on stderr.
    (ws / "a/in.txt").write_text("again\n")
    proc = cli("build", "//a:upper", "--explain", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    assert "//a:upper ran: 1 part(s) differ" in proc.stderr
    assert "input      a/in.txt:" in proc.stderr


def test_nothing_ran_nothing_explained(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    doc = run_json(cli, ws, "build", "//...", "--explain")
    assert doc["explain"] == []


def test_revert_is_a_hit_with_the_difference_to_the_latest_run(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//a:upper")
    (ws / "a/in.txt").write_text("other\n")
    run_json(cli, ws, "build", "//a:upper")
    (ws / "a/in.txt").write_text("hello\n")
    doc = explain(cli, ws, "//a:upper")
    assert doc["status"] == "hit"
    assert [c["name"] for c in doc["changes"]] == ["a/in.txt"]


def test_uncached_producer_is_explained_as_the_cause(cli: CliRunner, ws: Path) -> None:
    run_json(cli, ws, "build", "//...")
    (ws / "a/in.txt").write_text("changed\n")
    doc = explain(cli, ws, "//a:twice")
    assert doc["status"] == "changed" and doc["key"] is None
    assert "//a:upper" in doc["note"]
    assert doc["cause"]["label"] == "//a:upper"
    assert [c["name"] for c in doc["cause"]["changes"]] == ["a/in.txt"]
    text = cli("explain", "//a:twice", cwd=ws)
    assert text.returncode == 0
    assert "input      a/in.txt" in text.stdout


def test_failed_run_is_not_cached(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {"BUILD": 'genrule(name = "bad", outs = ["x"], cmd = "exit 3")\n'})
    run_json(cli, ws, "build", "//:bad", expect=1)
    doc = explain(cli, ws, "//:bad")
    assert doc["status"] == "not_cached"
    assert "failed" in doc["note"]
    assert doc["changes"] == []


def test_py_test_argv_and_test_file_target(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "lib/calc.py": "def add(a, b):\n    return a + b\n",
        "tests/test_calc.py": "from lib.calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n",
        "lib/__init__.py": "", "tests/__init__.py": "",
    })
    run_json(cli, ws, "test", "//...")
    assert explain(cli, ws, "tests/test_calc.py")["status"] == "hit"
    # Arguments after -- are part of every py_test's argv, so of its key.
    proc = cli("explain", "tests/test_calc.py", "-o", "json", "--", "-k", "add", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    c = only_change(json.loads(proc.stdout))
    assert c["part"] == "argv" and c["after"].endswith("-k add")
    (ws / "lib/calc.py").write_text("def add(a, b):\n    return b + a\n")
    doc = explain(cli, ws / "tests", "tests/test_calc.py".removeprefix("tests/"))
    assert doc["label"] == "//tests:test_calc"
    assert [(c["part"], c["name"]) for c in doc["changes"]] == [("input", "lib/calc.py")]


def _fake_dist(site: Path, name: str, version: str) -> None:
    for old in site.glob(f"{name}-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_project_venv_hit_then_installed_distribution_change(cli: CliRunner, tmp_path: Path) -> None:
    # The project's own .venv inside the workspace (as `python -m venv .venv` makes it), seeing
    # this suite's pytest through a .pth file; one fake distribution in it gets "upgraded".
    ws = make_workspace(tmp_path, {"tests/test_one.py": "def test_one():\n    assert True\n"})
    venv = ws / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "suite.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _fake_dist(site, "fakedep", "1.0")
    env = {"VIRTUAL_ENV": str(venv)}
    run_json(cli, ws, "test", "//...", env=env)
    # explain computes the key exactly as the build did (interpreter named relative to the workspace).
    assert run_json(cli, ws, "explain", "//tests:test_one", env=env)["status"] == "hit"
    _fake_dist(site, "fakedep", "2.0")
    os.utime(site)  # the interpreter probe is re-run when a site directory's mtime changes
    doc = run_json(cli, ws, "explain", "//tests:test_one", env=env)
    assert doc["status"] == "changed"
    assert doc["changes"] == [{"part": "toolchain", "name": "distribution fakedep",
                               "before": "fakedep==1.0", "after": "fakedep==2.0"}]


def test_usage_errors(cli: CliRunner, ws: Path) -> None:
    assert_one_line_error(cli("explain", "//a:nope", cwd=ws), 2, "//a:nope")
    assert_one_line_error(cli("explain", "//a:files", cwd=ws), 2, "filegroup")
    assert_one_line_error(cli("explain", "//a/...", cwd=ws), 2, "matches")
    assert explain(cli, ws, "a/in.txt")["label"] == "//a:upper"  # the one genrule or test using the file
    (ws / "notes.txt").write_text("nobody uses this\n")
    assert_one_line_error(cli("explain", "notes.txt", cwd=ws), 2, "not the source")
    bypass = cli("explain", "//a:upper", cwd=ws, env={"CIOPT_DISABLE": "1"})
    assert_one_line_error(bypass, 2, "bypass")


def test_help_teaches(cli: CliRunner) -> None:
    proc = cli("explain", "--help")
    assert proc.returncode == 0
    for word in ("never_built", "not_cached", "--explain", "-o json"):
        assert word in proc.stdout
    assert "explain" in cli("--help").stdout
