"""`ciopt build` through the real command line, in temporary workspaces.

Each test writes a small workspace (config/ci-optimization.yaml, BUILD files, sources),
runs `python -m ciopt build ... -o json` as a subprocess and checks the JSON report and the
files under ciopt-out/. Genrule commands append a line to a log file outside the workspace
(an absolute path, constant across runs, so it does not disturb caching): that log tells
which actions really ran, independently of what the report claims.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from buildws import (action, cli_store, lines, make_workspace, pid_alive, run_json, spawn_ciopt, statuses,
                     wait_for)
from conftest import CliRunner, assert_one_line_error


# ----------------------------------------------------------------------------
# A genrule chain: //a:upper -> //b:twice -> //b:final, and an independent //c:other.


def logged_genrule(name: str, srcs: list[str], out: str, cmd: str, runlog: Path) -> str:
    """A genrule whose command first appends its name to `runlog`, then runs `cmd`."""
    return f"""
        genrule(
            name = "{name}",
            srcs = {json.dumps(srcs)},
            outs = ["{out}"],
            cmd = "echo {name} >> {runlog}; {cmd}",
        )
    """


def chain_files(runlog: Path) -> dict[str, str]:
    return {
        "a/BUILD": logged_genrule("upper", ["in.txt"], "upper.txt", "tr a-z A-Z < $< > $@", runlog),
        "a/in.txt": "hello\n",
        "b/BUILD": logged_genrule("twice", ["//a:upper"], "twice.txt", "cat $< $< > $@", runlog)
        + logged_genrule("final", [":twice", "suffix.txt"], "final.txt", "cat $(SRCS) > $@", runlog),
        "b/suffix.txt": "end\n",
        "c/BUILD": logged_genrule("other", ["c.txt"], "other.txt", "rev < $< > $@", runlog),
        "c/c.txt": "abc\n",
        "notes.txt": "nobody depends on this file\n",
    }


CHAIN = ["//a:upper", "//b:final", "//b:twice", "//c:other"]


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path]:
    runlog = tmp_path / "runs.log"
    return make_workspace(tmp_path, chain_files(runlog)), runlog


def test_genrule_chain_builds_and_materializes_outputs(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, runlog = chain
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {l: "executed" for l in CHAIN}
    assert sorted(lines(runlog)) == ["final", "other", "twice", "upper"]
    out = ws / "ciopt-out"
    assert (out / "a/upper.txt").read_text() == "HELLO\n"
    assert (out / "b/twice.txt").read_text() == "HELLO\nHELLO\n"
    assert (out / "b/final.txt").read_text() == "HELLO\nHELLO\nend\n"
    assert (out / "c/other.txt").read_text() == "cba\n"
    for a in doc["actions"]:
        assert re.fullmatch(r"[0-9a-f]{64}", a["key"]), a
        assert a["executor"], a
        assert a["duration_s"] >= 0
    assert action(doc, "//b:final")["outputs"] == ["b/final.txt"]
    s = doc["summary"]
    assert (s["actions"], s["executed"], s["cached_local"], s["failed"], s["skipped"]) == (4, 4, 0, 0, 0)
    assert s["exit_code"] == 0 and s["bypass"] is False
    # Order: a dependency finished before its dependent started.
    assert lines(runlog).index("upper") < lines(runlog).index("twice") < lines(runlog).index("final")


def test_no_change_rebuild_is_all_cache_hits(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, runlog = chain
    first = run_json(cli, ws, "build", "//...")
    second = run_json(cli, ws, "build", "//...")
    assert statuses(second) == {l: "cached_local" for l in CHAIN}
    assert {a["label"]: a["key"] for a in second["actions"]} == {a["label"]: a["key"] for a in first["actions"]}
    assert second["summary"]["executed"] == 0 and second["summary"]["cached_local"] == 4
    assert len(lines(runlog)) == 4, "a cache hit ran the command again"
    assert (ws / "ciopt-out/b/final.txt").read_text() == "HELLO\nHELLO\nend\n"


def test_deleted_outputs_are_restored_from_the_cache(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    before = {p.relative_to(ws / "ciopt-out"): p.read_bytes() for p in (ws / "ciopt-out").rglob("*.txt")}
    shutil.rmtree(ws / "ciopt-out")
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {l: "cached_local" for l in CHAIN}
    assert len(lines(runlog)) == 4, "restoring outputs ran a command"
    after = {p.relative_to(ws / "ciopt-out"): p.read_bytes() for p in (ws / "ciopt-out").rglob("*.txt")}
    assert after == before and len(after) == 4


def test_tampered_output_is_restored_from_the_cache(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    (ws / "ciopt-out/b/twice.txt").write_text("garbage\n")
    doc = run_json(cli, ws, "build", "//b:twice")
    assert statuses(doc) == {"//a:upper": "cached_local", "//b:twice": "cached_local"}
    assert (ws / "ciopt-out/b/twice.txt").read_text() == "HELLO\nHELLO\n"
    assert len(lines(runlog)) == 4


def test_editing_a_source_reruns_only_its_dependents(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    (ws / "a/in.txt").write_text("bye\n")
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {"//a:upper": "executed", "//b:twice": "executed", "//b:final": "executed",
                             "//c:other": "cached_local"}
    assert lines(runlog)[4:] == ["upper", "twice", "final"]
    assert (ws / "ciopt-out/b/final.txt").read_text() == "BYE\nBYE\nend\n"

    (ws / "b/suffix.txt").write_text("fin\n")
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {"//a:upper": "cached_local", "//b:twice": "cached_local", "//b:final": "executed",
                             "//c:other": "cached_local"}
    assert lines(runlog)[7:] == ["final"]
    assert (ws / "ciopt-out/b/final.txt").read_text() == "BYE\nBYE\nfin\n"


def test_unchanged_intermediate_output_stops_the_rebuild(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    """Early cutoff: //a:upper reruns but makes the same bytes, so its dependents stay cached."""
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    (ws / "a/in.txt").write_text("HeLLo\n")
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {"//a:upper": "executed", "//b:twice": "cached_local", "//b:final": "cached_local",
                             "//c:other": "cached_local"}
    assert lines(runlog)[4:] == ["upper"]


def edit_unused_files(ws: Path) -> None:
    (ws / "notes.txt").write_text("changed\n")
    (ws / "a/unused.txt").write_text("a new file in a package changes its listing, not its actions\n")


def rewrite_same_content(ws: Path) -> None:
    for rel in ("a/in.txt", "b/suffix.txt", "c/c.txt", "b/BUILD"):
        p = ws / rel
        p.write_bytes(p.read_bytes())
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns + 5_000_000_000, st.st_mtime_ns + 5_000_000_000))


@pytest.mark.parametrize("edit", [edit_unused_files, rewrite_same_content],
                         ids=["editing-an-unused-file", "same-content-rewrite"])
def test_edit_that_changes_no_input_reruns_nothing(cli: CliRunner, chain: tuple[Path, Path],
                                                   edit: Callable[[Path], None]) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    edit(ws)
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {l: "cached_local" for l in CHAIN}
    assert len(lines(runlog)) == 4


def test_editing_a_command_reruns_that_action(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    build = (ws / "c/BUILD").read_text().replace("rev <", "cat <")
    (ws / "c/BUILD").write_text(build)
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc)["//c:other"] == "executed"
    assert [s for l, s in statuses(doc).items() if l != "//c:other"] == ["cached_local"] * 3
    assert (ws / "ciopt-out/c/other.txt").read_text() == "abc\n"


def test_building_one_target_builds_only_what_it_needs(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, runlog = chain
    doc = run_json(cli, ws, "build", "//b:twice")
    assert doc["targets"] == ["//b:twice"]
    assert statuses(doc) == {"//a:upper": "executed", "//b:twice": "executed"}
    assert not (ws / "ciopt-out/c").exists()


def test_output_file_label_as_a_source(cli: CliRunner, tmp_path: Path) -> None:
    """A genrule's output can be named by its file label (`//a:upper.txt`), as in Bazel."""
    ws = make_workspace(tmp_path, {
        "a/BUILD": 'genrule(name = "gen", srcs = ["in.txt"], outs = ["gen.txt"], cmd = "cp $< $@")\n',
        "a/in.txt": "x\n",
        "b/BUILD": 'genrule(name = "use", srcs = ["//a:gen.txt"], outs = ["use.txt"], cmd = "cat $< $< > $@")\n',
    })
    doc = run_json(cli, ws, "build", "//b:use")
    assert statuses(doc) == {"//a:gen": "executed", "//b:use": "executed"}
    assert (ws / "ciopt-out/b/use.txt").read_text() == "x\nx\n"


# ----------------------------------------------------------------------------
# Hermeticity and output checks.


def test_reading_an_undeclared_input_fails(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "p/BUILD": """
            genrule(name = "sneaky", srcs = ["declared.txt"], outs = ["s.txt"], cmd = "cat p/other.txt > $@")
            genrule(name = "honest", srcs = ["other.txt"], outs = ["h.txt"], cmd = "cat p/other.txt > $@")
        """,
        "p/declared.txt": "declared\n",
        "p/other.txt": "present in the workspace\n",
    })
    doc = run_json(cli, ws, "build", "//p:sneaky", expect=1)
    a = action(doc, "//p:sneaky")
    assert a["status"] == "failed" and a["exit_code"] != 0
    assert not (ws / "ciopt-out/p/s.txt").exists()
    assert doc["summary"]["failed"] == 1 and doc["summary"]["exit_code"] == 1
    assert "other.txt" in doc["_stderr"]  # the failure log tail: cat's complaint
    # The same command with the file declared works: the failure was the undeclared read.
    ok = run_json(cli, ws, "build", "//p:honest")
    assert action(ok, "//p:honest")["status"] == "executed"
    assert (ws / "ciopt-out/p/h.txt").read_text() == "present in the workspace\n"


def test_sandbox_holds_only_declared_inputs(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "p/BUILD": 'genrule(name = "ls", srcs = ["one.txt"], outs = ["ls.txt"], '
                   'cmd = "find . -type f | sort > $$TMPDIR/l; mv $$TMPDIR/l $@")\n',
        "p/one.txt": "1\n",
        "p/two.txt": "2\n",
        "q/three.txt": "3\n",
    })
    run_json(cli, ws, "build", "//p:ls")
    assert (ws / "ciopt-out/p/ls.txt").read_text().split() == ["./p/one.txt"]


def test_missing_output_fails_naming_it(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "p/BUILD": 'genrule(name = "lazy", outs = ["made.txt", "forgotten.txt"], cmd = "echo x > p/made.txt")\n',
    })
    doc = run_json(cli, ws, "build", "//p:lazy", expect=1)
    a = action(doc, "//p:lazy")
    assert a["status"] == "failed"
    assert "forgotten.txt" in a["message"], a
    assert "FAILED //p:lazy" in doc["_stderr"]
    # A failed action is not cached: the next build runs it again (and fails again).
    again = run_json(cli, ws, "build", "//p:lazy", expect=1)
    assert action(again, "//p:lazy")["status"] == "failed"


@pytest.mark.parametrize("target", ["/etc/hostname", "../../../../../../../../etc/hostname"])
def test_output_symlink_escaping_the_exec_root_is_rejected(cli: CliRunner, tmp_path: Path, target: str) -> None:
    ws = make_workspace(tmp_path, {
        "p/BUILD": f'genrule(name = "link", outs = ["out.txt"], cmd = "ln -s {target} $@")\n',
    })
    doc = run_json(cli, ws, "build", "//p:link", expect=1)
    a = action(doc, "//p:link")
    assert a["status"] == "failed"
    assert "out.txt" in a["message"] and "escap" in a["message"], a
    out = ws / "ciopt-out/p/out.txt"
    assert not out.exists() and not out.is_symlink()


def test_output_directory_instead_of_file_is_rejected(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {"p/BUILD": 'genrule(name = "d", outs = ["d.txt"], cmd = "mkdir $@")\n'})
    doc = run_json(cli, ws, "build", "//p:d", expect=1)
    assert action(doc, "//p:d")["status"] == "failed"
    assert "d.txt" in action(doc, "//p:d")["message"]


def test_outputs_keep_the_executable_bit(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "p/BUILD": 'genrule(name = "x", outs = ["run.sh"], cmd = "printf \'#!/bin/sh\\\\necho hi\\\\n\' > $@; '
                   'chmod +x $@")\n',
    })
    run_json(cli, ws, "build", "//p:x")
    out = ws / "ciopt-out/p/run.sh"
    assert os.access(out, os.X_OK)
    shutil.rmtree(ws / "ciopt-out")
    doc = run_json(cli, ws, "build", "//p:x")
    assert action(doc, "//p:x")["status"] == "cached_local"
    assert os.access(out, os.X_OK), "an executable output lost its mode when restored from the cache"
    assert subprocess.run([str(out)], capture_output=True, text=True).stdout == "hi\n"


# ----------------------------------------------------------------------------
# Failures, --keep-going, skipped dependents.


@pytest.fixture
def failing(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, {
        "a/BUILD": """
            genrule(name = "bad", outs = ["bad.txt"], cmd = "echo about to fail >&2; exit 3")
            genrule(name = "after_bad", srcs = [":bad"], outs = ["after.txt"], cmd = "cp $< $@")
            genrule(name = "after_after", srcs = [":after_bad"], outs = ["after2.txt"], cmd = "cp $< $@")
        """,
        "b/BUILD": 'genrule(name = "ok", outs = ["ok.txt"], cmd = "echo ok > $@")\n',
    })


def test_failing_genrule_exits_1_and_skips_dependents(cli: CliRunner, failing: Path) -> None:
    doc = run_json(cli, failing, "build", "//a:all", expect=1)
    assert statuses(doc) == {"//a:bad": "failed", "//a:after_bad": "skipped", "//a:after_after": "skipped"}
    bad = action(doc, "//a:bad")
    assert bad["exit_code"] == 3 and "3" in bad["message"]
    assert "//a:bad" in action(doc, "//a:after_bad")["message"]
    assert doc["summary"]["exit_code"] == 1
    assert (doc["summary"]["failed"], doc["summary"]["skipped"]) == (1, 2)
    assert "about to fail" in doc["_stderr"], "the failure log tail is shown"
    # The failure's output is kept in a log under ciopt-out/.
    assert any("about to fail" in p.read_text() for p in (failing / "ciopt-out").rglob("*.log"))


def test_keep_going_builds_independent_targets(cli: CliRunner, failing: Path) -> None:
    doc = run_json(cli, failing, "build", "//...", "--keep-going", "-j", "1", expect=1)
    assert statuses(doc) == {"//a:bad": "failed", "//a:after_bad": "skipped", "//a:after_after": "skipped",
                             "//b:ok": "executed"}
    assert (failing / "ciopt-out/b/ok.txt").read_text() == "ok\n"


def test_without_keep_going_nothing_new_starts_after_a_failure(cli: CliRunner, failing: Path) -> None:
    # -j 1 and the longest chain first: //a:bad runs before //b:ok, which then never starts.
    doc = run_json(cli, failing, "build", "//...", "-j", "1", expect=1)
    assert statuses(doc) == {"//a:bad": "failed", "//a:after_bad": "skipped", "//a:after_after": "skipped",
                             "//b:ok": "skipped"}
    assert not (failing / "ciopt-out/b/ok.txt").exists()


# ----------------------------------------------------------------------------
# Loading errors: exit 2 and one line naming file:line:col.


def test_malformed_build_file(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "pkg/BUILD": 'genrule(\n    name = "x",\n    outs = ["x.txt"]\n    cmd = "true",\n)\n',
    })
    proc = cli("build", "//...", cwd=ws)
    # The parser stops at `cmd` (line 4, column 5): the comma missing after line 3.
    assert_one_line_error(proc, 2, "pkg/BUILD:4:5:")
    assert proc.stdout == ""


def test_starlark_errors_name_their_location(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {"pkg/BUILD": ""})
    cases = {
        'genrule(name = "y", outs = ["y.txt"], cmd = "true")\ngenrul(name = "z")\n':
            ("pkg/BUILD:2:1:", "did you mean 'genrule'"),
        'genrule(name = "y", outs = ["y.txt"], cmd = undefined_var)\n': ("pkg/BUILD:1:45:", "undefined_var"),
        'genrule(name = "y", outs = ["y.txt"], cmd = "true")\n\ngenrule(\n    name = "y", outs = ["q"], cmd = "")\n':
            ("pkg/BUILD:3:1:", "duplicate target name 'y'"),
        'genrule(name = "y", outs = "y.txt", cmd = "true")\n': ("pkg/BUILD:1:1:", "outs"),
        'load("//x:defs.bzl", "m")\n': ("pkg/BUILD:1:", "load"),
    }
    for text, (where, what) in cases.items():
        (ws / "pkg/BUILD").write_text(text)
        proc = cli("build", "//...", cwd=ws)
        assert_one_line_error(proc, 2, where)
        assert what in proc.stderr, (text, proc.stderr)


def test_invalid_config_is_an_error_unless_bypassed(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, _ = chain
    (ws / "config/ci-optimization.yaml").write_text("enabled: true\nno_such_key: 1\n")
    proc = cli("build", "//...", cwd=ws)
    assert_one_line_error(proc, 2, "no_such_key")
    assert "ci-optimization.yaml:2" in proc.stderr
    # The emergency bypass works even when the configuration is what broke.
    doc = run_json(cli, ws, "build", "//...", env={"CIOPT_DISABLE": "1"})
    assert statuses(doc) == {l: "executed" for l in CHAIN}
    assert doc["summary"]["bypass"] is True


def test_glob_skips_gitignored_files(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        ".gitignore": "ignored.txt\n",
        "p/BUILD": 'genrule(name = "cat", srcs = glob(["*.txt"]), outs = ["all.out"], cmd = "cat $(SRCS) > $@")\n',
        "p/a.txt": "a\n",
        "p/ignored.txt": "local junk\n",
    })
    run_json(cli, ws, "build", "//p:cat")
    assert (ws / "ciopt-out/p/all.out").read_text() == "a\n"


# A workspace whose loading fails, the pattern built, what the one error line says, and what
# stderr must also match (regular expressions) or must not contain.
LOADING_ERRORS = [
    pytest.param({"pkg/BUILD": '# comment\n\ngenrule(name = "x", outs = ["x.txt"], cmdd = "true")\n'},
                 "//...", "pkg/BUILD:3:1", ["did you mean 'cmd'"], [], id="unknown-attribute"),
    pytest.param({
        "lib/BUILD": 'py_library(name = "library", srcs = ["lib.py"])\n',
        "lib/lib.py": "",
        "app/BUILD": '\npy_library(name = "app", srcs = ["app.py"], deps = ["//lib:libary"])\n',
        "app/app.py": "",
    }, "//...", "did you mean '//lib:library'", ["app/BUILD:2:1", "//lib:libary"], [], id="unknown-dep-near-miss"),
    pytest.param({
        "app/BUILD": 'py_library(name = "app", srcs = ["app.py"], deps = ["//nowhere:zzzzzz"])\n',
        "app/app.py": "",
    }, "//...", "//nowhere:zzzzzz", [], ["did you mean"], id="unknown-dep-no-near-miss"),
    pytest.param({
        "a/BUILD": 'py_library(name = "x", srcs = ["x.py"], deps = ["//b:y"])\n',
        "a/x.py": "",
        "b/BUILD": 'py_library(name = "y", srcs = ["y.py"], deps = ["//a:x"])\n',
        "b/y.py": "",
    }, "//...", "//a:x -> //b:y -> //a:x", [r"[ab]/BUILD:1:1"], [], id="dependency-cycle-full-path"),
    pytest.param({
        "p/BUILD": """
            genrule(name = "one", srcs = [":three"], outs = ["1"], cmd = "cp $< $@")
            genrule(name = "two", srcs = [":one"], outs = ["2"], cmd = "cp $< $@")
            genrule(name = "three", srcs = [":two"], outs = ["3"], cmd = "cp $< $@")
        """,
    }, "//p:one", "//p:one -> //p:three -> //p:two -> //p:one", [], [], id="genrule-cycle-through-srcs"),
    pytest.param({
        "p/BUILD": 'genrule(name = "gen", srcs = ["in.txt"], outs = ["data.txt"], cmd = "cp $< $@")\n',
        "p/in.txt": "x\n",
        "p/data.txt": "a source file with the output's name\n",
    }, "//...", "same path as the source file p/data.txt", [], [], id="output-collides-with-a-source-file"),
]


@pytest.mark.parametrize(("files", "pattern", "error", "stderr_matches", "stderr_lacks"), LOADING_ERRORS)
def test_loading_error_is_one_line(cli: CliRunner, tmp_path: Path, files: dict[str, str], pattern: str, error: str,
                                   stderr_matches: list[str], stderr_lacks: list[str]) -> None:
    ws = make_workspace(tmp_path, files)
    proc = cli("build", pattern, cwd=ws)
    assert_one_line_error(proc, 2, error)
    for regex in stderr_matches:
        assert re.search(regex, proc.stderr), (regex, proc.stderr)
    for text in stderr_lacks:
        assert text not in proc.stderr, (text, proc.stderr)


def test_unknown_target_on_the_command_line(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, _ = chain
    proc = cli("build", "//b:twise", cwd=ws)
    assert_one_line_error(proc, 2, "did you mean '//b:twice'")


def test_no_workspace_is_a_usage_error(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = cli("build", "//...", cwd=tmp_path / "empty", env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert_one_line_error(proc, 2, "no workspace")


# ----------------------------------------------------------------------------
# Relative patterns.


def test_relative_patterns_from_a_subdirectory(cli: CliRunner, chain: tuple[Path, Path]) -> None:
    ws, _ = chain
    doc = run_json(cli, ws / "b", "build", ":twice")
    assert doc["targets"] == ["//b:twice"]
    assert statuses(doc) == {"//a:upper": "executed", "//b:twice": "executed"}
    # Outputs land under the workspace root, not the current directory.
    assert (ws / "ciopt-out/b/twice.txt").is_file() and not (ws / "b/ciopt-out").exists()

    doc = run_json(cli, ws / "b", "build", "final")
    assert doc["targets"] == ["//b:final"]
    doc = run_json(cli, ws / "b", "build", ":all")
    assert doc["targets"] == ["//b:final", "//b:twice"]
    doc = run_json(cli, ws / "c", "build", "...")
    assert doc["targets"] == ["//c:other"]
    proc = cli("build", ":upper", cwd=ws / "b")
    assert_one_line_error(proc, 2, ":upper")


# ----------------------------------------------------------------------------
# The emergency bypass.


def _store_counts(cli: CliRunner, tmp_path: Path) -> dict[str, int]:
    import json

    proc = cli("cache", "stats", "--store", cli_store(tmp_path), "-o", "json", check=True)
    s = json.loads(proc.stdout)
    return {k: s[k] for k in ("blobs", "blob_bytes", "action_results", "stat_entries")}


def test_ciopt_disable_runs_everything_and_writes_no_cache(cli: CliRunner, chain: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")  # the cache now holds every action
    before = _store_counts(cli, tmp_path)
    assert before["action_results"] >= 4
    (ws / "a/in.txt").write_text("new content, new keys\n")
    doc = run_json(cli, ws, "build", "//...", env={"CIOPT_DISABLE": "1"})
    assert statuses(doc) == {l: "executed" for l in CHAIN}, "a bypassed build read the cache"
    assert doc["summary"]["bypass"] is True and doc["summary"]["cached_local"] == 0
    assert "CIOPT_DISABLE" in doc["summary"]["bypass_reason"]
    assert "bypass" in doc["_stderr"].lower()
    assert lines(runlog)[4:] and sorted(lines(runlog)[4:]) == ["final", "other", "twice", "upper"]
    assert (ws / "ciopt-out/b/final.txt").read_text() == "NEW CONTENT, NEW KEYS\n" * 2 + "end\n"
    assert _store_counts(cli, tmp_path) == before, "a bypassed build wrote to the store"
    # Bypass off again: the edited chain is not in the cache, so it runs; //c:other still hits.
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {"//a:upper": "executed", "//b:twice": "executed", "//b:final": "executed",
                             "//c:other": "cached_local"}
    assert doc["summary"]["bypass"] is False


def test_emergency_bypass_in_the_config_file(cli: CliRunner, chain: tuple[Path, Path], tmp_path: Path) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    (ws / "config/ci-optimization.yaml").write_text("enabled: true\nemergency_bypass: true\n")
    before = _store_counts(cli, tmp_path)
    for _ in range(2):
        doc = run_json(cli, ws, "build", "//...")
        assert statuses(doc) == {l: "executed" for l in CHAIN}
        assert doc["summary"]["bypass"] is True
        assert "bypass" in doc["_stderr"].lower()
    assert len(lines(runlog)) == 12
    assert _store_counts(cli, tmp_path) == before


def test_bypass_from_a_fresh_store_creates_no_cache_entries(cli: CliRunner, chain: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    ws, runlog = chain
    run_json(cli, ws, "build", "//...", env={"CIOPT_DISABLE": "1"})
    counts = _store_counts(cli, tmp_path)
    assert counts["blobs"] == 0 and counts["action_results"] == 0 and counts["stat_entries"] == 0
    # ...so the first normal build executes everything.
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {l: "executed" for l in CHAIN}


# ----------------------------------------------------------------------------
# Killed and interrupted builds.


def _kill_group(pid_file: Path) -> None:
    if pid_file.exists() and pid_file.read_text().strip():
        try:
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_a_killed_build_leaves_a_usable_store(cli: CliRunner, tmp_path: Path) -> None:
    flag, pid_file = tmp_path / "slow.flag", tmp_path / "slow.pid"
    flag.write_text("be slow\n")
    ws = make_workspace(tmp_path, {
        "p/BUILD": f"""
            genrule(name = "fast", srcs = ["in.txt"], outs = ["fast.txt"], cmd = "cp $< $@")
            genrule(
                name = "slow",
                srcs = [":fast"],
                outs = ["slow.txt"],
                cmd = "echo $$$$ > {pid_file}; if [ -e {flag} ]; then sleep 5; fi; cat $< > $@",
            )
        """,
        "p/in.txt": "data\n",
    })
    proc = spawn_ciopt(ws, cli_store(tmp_path), "build", "//...")
    try:
        # //slow starts only once //fast is finished; its cache entry is written behind, within
        # a fraction of a second, so the kill comes ~1 s into //slow's 5 s.
        assert wait_for(pid_file.exists), "the slow action never started"
        time.sleep(1.0)
        assert proc.poll() is None, "the build ended before it could be killed"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
        _kill_group(pid_file)
    assert proc.returncode == -signal.SIGKILL
    verify = cli("cache", "verify", "--store", cli_store(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    flag.unlink()
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {"//p:fast": "cached_local", "//p:slow": "executed"}
    assert (ws / "ciopt-out/p/slow.txt").read_text() == "data\n"
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {"//p:fast": "cached_local", "//p:slow": "cached_local"}


def interrupt_once_started(proc: subprocess.Popen, pid_file: Path, sig: int) -> tuple[int, str]:
    """Once the action's child has written its pid to `pid_file` (and is alive), send `sig` to the
    build and wait for it. Fails if the child outlives the build by more than 10 s; whatever
    happens, the build and a surviving child are killed after. Returns the child's pid and stderr."""
    child = None
    survived = False
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != ""), "no child started"
        child = int(pid_file.read_text())
        assert pid_alive(child)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        # Checked before the cleanup below, which would otherwise hide a surviving child.
        survived = not wait_for(lambda: not pid_alive(child), 10)
    finally:
        proc.kill()
        if child is not None and pid_alive(child):
            os.kill(child, signal.SIGKILL)
    assert not survived, f"the action's child {child} survived signal {sig}"
    return child, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_build_and_its_children(cli: CliRunner, tmp_path: Path, sig: signal.Signals) -> None:
    pid_file = tmp_path / "child.pid"
    ws = make_workspace(tmp_path, {
        "p/BUILD": f"""
            genrule(name = "long", outs = ["long.txt"], cmd = "sleep 300 & echo $$! > {pid_file}; wait; touch $@")
            genrule(name = "quick", outs = ["quick.txt"], cmd = "echo q > $@")
        """,
    })
    proc = spawn_ciopt(ws, cli_store(tmp_path), "build", "//...", "-j", "2")
    child, stderr = interrupt_once_started(proc, pid_file, sig)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr
    assert wait_for(lambda: not pid_alive(child), 10), "the action's child survived Ctrl-C"
    assert not (ws / "ciopt-out/p/long.txt").exists()
    verify = cli("cache", "verify", "--store", cli_store(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The next build works; the interrupted action was not cached as a success.
    quick = run_json(cli, ws, "build", "//p:quick")
    assert action(quick, "//p:quick")["status"] in ("executed", "cached_local")


# ----------------------------------------------------------------------------
# Build records.


def test_build_records_invocations_and_actions(cli: CliRunner, chain: tuple[Path, Path], tmp_path: Path) -> None:
    from ciopt.analytics.records import actions_of, recent_invocations

    ws, _ = chain
    db = cli_store(tmp_path) / "records.sqlite"
    first = run_json(cli, ws, "build", "//...")
    second = run_json(cli, ws, "build", "//...")
    invocations = recent_invocations(db)
    assert len(invocations) == 2
    newest, oldest = invocations
    assert newest["command"] == "build" and newest["patterns"] == ["//..."]
    assert newest["exit_code"] == 0 and oldest["exit_code"] == 0
    assert Path(str(newest["workspace"])) == ws
    assert (oldest["actions_total"], oldest["actions_executed"], oldest["actions_cached_local"]) == (4, 4, 0)
    assert (newest["actions_total"], newest["actions_executed"], newest["actions_cached_local"]) == (4, 0, 4)
    assert newest["bypass"] is False
    for inv, doc in ((oldest, first), (newest, second)):
        rows = actions_of(db, int(inv["id"]))
        assert {r["label"]: (r["status"], r["key"]) for r in rows} == \
            {a["label"]: (a["status"], a["key"]) for a in doc["actions"]}
    rows = {r["label"]: r for r in actions_of(db, int(oldest["id"]))}
    assert rows["//a:upper"]["exit_code"] == 0
    assert rows["//a:upper"]["executor"] and rows["//a:upper"]["finished_at"] >= rows["//a:upper"]["started_at"]
    assert rows["//a:upper"]["output_bytes"] == len("HELLO\n")


def test_build_records_a_failure(cli: CliRunner, failing: Path, tmp_path: Path) -> None:
    from ciopt.analytics.records import actions_of, recent_invocations

    run_json(cli, failing, "build", "//...", "--keep-going", expect=1)
    db = cli_store(tmp_path) / "records.sqlite"
    [inv] = recent_invocations(db)
    assert inv["exit_code"] == 1
    assert (inv["actions_total"], inv["actions_failed"], inv["actions_skipped"], inv["actions_executed"]) == \
        (4, 1, 2, 1)
    rows = {r["label"]: r for r in actions_of(db, int(inv["id"]))}
    assert rows["//a:bad"]["status"] == "failed" and rows["//a:bad"]["exit_code"] == 3
    assert rows["//a:after_bad"]["status"] == "skipped"


def test_bypassed_build_is_recorded_as_such(cli: CliRunner, chain: tuple[Path, Path], tmp_path: Path) -> None:
    from ciopt.analytics.records import recent_invocations

    ws, _ = chain
    run_json(cli, ws, "build", "//...", env={"CIOPT_DISABLE": "1"})
    [inv] = recent_invocations(cli_store(tmp_path) / "records.sqlite")
    assert inv["bypass"] is True and inv["actions_executed"] == 4


# ----------------------------------------------------------------------------
# More execution details.


def test_action_writing_to_its_input_leaves_the_source_alone(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "p/BUILD": 'genrule(name = "w", srcs = ["in.txt"], outs = ["w.txt"], '
                   'cmd = "echo scribble >> p/in.txt; cp p/in.txt $@")\n',
        "p/in.txt": "original\n",
    })
    run_json(cli, ws, "build", "//p:w")
    assert (ws / "p/in.txt").read_text() == "original\n"
    assert (ws / "ciopt-out/p/w.txt").read_text() == "original\nscribble\n"
    assert action(run_json(cli, ws, "build", "//p:w"), "//p:w")["status"] == "cached_local"


def test_outputs_in_subdirectories_and_location(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, {
        "p/BUILD": """
            genrule(name = "two", srcs = ["in.txt"], outs = ["sub/a.txt", "sub/deeper/b.txt"],
                    cmd = "cp $< $(location sub/a.txt); cat $< $< > $(location sub/deeper/b.txt)")
            genrule(name = "use", srcs = [":two"], outs = ["use.txt"], cmd = "cat $(locations :two) > $@")
        """,
        "p/in.txt": "i\n",
    })
    doc = run_json(cli, ws, "build", "//p:use")
    assert action(doc, "//p:two")["outputs"] == ["p/sub/a.txt", "p/sub/deeper/b.txt"]
    assert (ws / "ciopt-out/p/sub/a.txt").read_text() == "i\n"
    assert (ws / "ciopt-out/p/sub/deeper/b.txt").read_text() == "i\ni\n"
    assert (ws / "ciopt-out/p/use.txt").read_text() == "i\ni\ni\n"


def test_evicted_blobs_are_rebuilt(cli: CliRunner, chain: tuple[Path, Path], tmp_path: Path) -> None:
    """Action results whose outputs were evicted by `cache gc` are misses, not broken hits."""
    ws, runlog = chain
    run_json(cli, ws, "build", "//...")
    gc = cli("cache", "gc", "--max-size", "0", "--store", cli_store(tmp_path))
    assert gc.returncode == 0, gc.stderr
    shutil.rmtree(ws / "ciopt-out")
    doc = run_json(cli, ws, "build", "//...")
    assert set(statuses(doc).values()) <= {"executed", "cached_local"}
    assert (ws / "ciopt-out/b/final.txt").read_text() == "HELLO\nHELLO\nend\n"
    assert (ws / "ciopt-out/c/other.txt").read_text() == "cba\n"
    assert len(lines(runlog)) == 8, "every evicted action runs again"


def test_concurrent_builds_of_one_workspace(cli: CliRunner, chain: tuple[Path, Path], tmp_path: Path) -> None:
    ws, _ = chain
    procs = [spawn_ciopt(ws, cli_store(tmp_path), "build", "//...") for _ in range(3)]
    results = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert (ws / "ciopt-out/b/final.txt").read_text() == "HELLO\nHELLO\nend\n"
    doc = run_json(cli, ws, "build", "//...")
    assert statuses(doc) == {l: "cached_local" for l in CHAIN}
    assert cli("cache", "verify", "--store", cli_store(tmp_path)).returncode == 0


def test_ctrl_c_during_ciopt_test(cli: CliRunner, tmp_path: Path) -> None:
    from ciopt.analytics.records import recent_invocations

    pid_file = tmp_path / "child.pid"
    ws = make_workspace(tmp_path, {
        "t/BUILD": f'sh_test(name = "hang", srcs = ["hang.sh"], env = {{"PIDFILE": "{pid_file}"}})\n',
        "t/hang.sh": 'sleep 300 &\necho $! > "$PIDFILE"\nwait\n',
    })
    proc = spawn_ciopt(ws, cli_store(tmp_path), "test", "//...", "--flaky-attempts", "3")
    child, stderr = interrupt_once_started(proc, pid_file, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert wait_for(lambda: not pid_alive(child), 10), "the test's child survived Ctrl-C"
    # Interrupted, not retried as a flaky failure: the test started once.
    assert int(pid_file.read_text()) == child
    [inv] = recent_invocations(cli_store(tmp_path) / "records.sqlite")
    assert inv["exit_code"] == 130

