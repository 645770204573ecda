"""`ciopt query` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildws import make_workspace
from conftest import CliRunner, assert_one_line_error


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, {
        "lib/BUILD": """
            py_library(name = "base", srcs = ["base.py"])
            py_library(name = "mid", srcs = ["mid.py"], deps = [":base"])
            py_library(name = "loner", srcs = ["loner.py"])
        """,
        "lib/base.py": "", "lib/mid.py": "", "lib/loner.py": "",
        "app/BUILD": """
            genrule(name = "gen", srcs = ["//lib:mid"], outs = ["gen.txt"], cmd = "cat $(SRCS) > $@")
            py_library(name = "app", srcs = ["app.py"], deps = ["//lib:mid"], data = [":gen"])
            py_test(name = "app_test", srcs = ["app_test.py"], deps = [":app"])
            sh_test(name = "smoke", srcs = ["smoke.sh"])
            test_suite(name = "suite", tests = [":app_test"])
            test_suite(name = "everything")
        """,
        "app/app.py": "", "app/app_test.py": "", "app/smoke.sh": "",
        "other/BUILD": 'py_test(name = "other_test", srcs = ["other_test.py"])\n',
        "other/other_test.py": "",
    })


def query(cli: CliRunner, ws: Path, expr: str, cwd: Path | None = None) -> list[str]:
    proc = cli("query", expr, cwd=cwd or ws)
    assert proc.returncode == 0, proc.stderr
    as_text = proc.stdout.splitlines()
    proc = cli("query", expr, "-o", "json", cwd=cwd or ws)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["labels"] == as_text, "text and JSON output disagree"
    return as_text


def test_deps(cli: CliRunner, ws: Path) -> None:
    assert query(cli, ws, "deps(//lib:mid)") == ["//lib:base", "//lib:mid"]
    assert query(cli, ws, "deps(//app:app)") == ["//app:app", "//app:gen", "//lib:base", "//lib:mid"]
    assert query(cli, ws, "deps(//lib:loner)") == ["//lib:loner"]


def test_rdeps(cli: CliRunner, ws: Path) -> None:
    assert query(cli, ws, "rdeps(//..., //lib:base)") == [
        "//app:app", "//app:app_test", "//app:gen", "//app:suite", "//lib:base", "//lib:mid"]
    # The universe bounds the answer.
    assert query(cli, ws, "rdeps(//lib/..., //lib:base)") == ["//lib:base", "//lib:mid"]
    assert query(cli, ws, "rdeps(//..., //lib:loner)") == ["//lib:loner"]


def test_kind(cli: CliRunner, ws: Path) -> None:
    assert query(cli, ws, "kind(py_test, //...)") == ["//app:app_test", "//other:other_test"]
    assert query(cli, ws, "kind(genrule, //...)") == ["//app:gen"]
    assert query(cli, ws, "kind('_test$', //app:all)") == ["//app:app_test", "//app:smoke"]
    assert query(cli, ws, "kind(py_library, deps(//app:app_test))") == ["//app:app", "//lib:base", "//lib:mid"]


def test_tests_expands_test_suites(cli: CliRunner, ws: Path) -> None:
    assert query(cli, ws, "tests(//...)") == ["//app:app_test", "//app:smoke", "//other:other_test"]
    assert query(cli, ws, "tests(//app:suite)") == ["//app:app_test"]
    # An empty test_suite means every test of its package.
    assert query(cli, ws, "tests(//app:everything)") == ["//app:app_test", "//app:smoke"]
    assert query(cli, ws, "tests(//lib/...)") == []


def test_set_operations_and_patterns(cli: CliRunner, ws: Path) -> None:
    assert query(cli, ws, "//lib:all") == ["//lib:base", "//lib:loner", "//lib:mid"]
    assert query(cli, ws, "deps(//app:app) - //lib/...") == ["//app:app", "//app:gen"]
    assert query(cli, ws, "//lib:base + //other:other_test") == ["//lib:base", "//other:other_test"]


def test_relative_query_from_a_package(cli: CliRunner, ws: Path) -> None:
    assert query(cli, ws, "deps(:mid)", cwd=ws / "lib") == ["//lib:base", "//lib:mid"]
    assert query(cli, ws, "tests(...)", cwd=ws / "app") == ["//app:app_test", "//app:smoke"]


def test_query_errors(cli: CliRunner, ws: Path) -> None:
    assert_one_line_error(cli("query", "deps(//lib:bsae)", cwd=ws), 2, "did you mean '//lib:base'")
    assert_one_line_error(cli("query", "deps(//lib:base", cwd=ws), 2, "query")
    assert_one_line_error(cli("query", "kind([, //...)", cwd=ws), 2, "")
