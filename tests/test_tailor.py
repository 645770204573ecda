"""`ciopt tailor`: BUILD files written from inferred targets, hand edits kept, idempotent."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import ciopt.cli.tailor as tailor_cli
import pytest
from buildws import write_files
from ciopt.cli import main
from ciopt.graph.build_file import evaluate_build_file
from ciopt.graph.label import Label
from ciopt.infer.tailor import (
    HEADER,
    TailorError,
    plan_tailor,
    render_target,
    update_build_source,
)
from ciopt.infer.targets import InferredTarget as T
from hypothesis import given, settings
from hypothesis import strategies as st

TARGETS = [
    T("app", "core", "py_library", ["core.py"], ["//lib:util"]),
    T("app", "core_test", "py_test", ["core_test.py"], [":core", "//lib:util"]),
    T("lib", "util", "py_library", ["util.py", "helpers.py"], []),
]

HAND_WRITTEN = '''\
# Team-owned: keep this comment.
load("//tools:defs.bzl", "helper")

py_library(
    name = "core",  # the core module
    srcs = ["core.py"],
    visibility = ["//visibility:public"],
    deps = [
        # vendored, inference cannot see it
        "//third_party:vendored",
    ],
)

genrule(
    name = "gen",
    outs = ["gen.txt"],
    cmd = "echo hi > $@",
)
'''

# What tailor writes for TARGETS[1] (//app:core_test), in a new BUILD file or appended to one.
CORE_TEST_RENDERED = '''\
py_test(
    name = "core_test",
    srcs = ["core_test.py"],
    deps = [
        ":core",
        "//lib:util",
    ],
)
'''


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ws"
    write_files(root, {
        "config/ci-optimization.yaml": "enabled: true\n",
        "app/core.py": "", "app/core_test.py": "", "lib/util.py": "", "lib/helpers.py": "",
    })
    monkeypatch.setenv("CIOPT_CACHE_DIR", str(tmp_path / "store"))
    monkeypatch.chdir(root)
    monkeypatch.setattr(tailor_cli, "infer_targets_for", lambda root, store: list(TARGETS))
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["tailor", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_render_is_buildifier_style() -> None:
    assert render_target(T("p", "x", "py_test", ["x_test.py"], ["//p:lib", "//q/r:r", ":a", "//b:c"])) == textwrap.dedent('''\
        py_test(
            name = "x",
            srcs = ["x_test.py"],
            deps = [
                ":a",
                ":lib",
                "//b:c",
                "//q/r",
            ],
        )''')


def test_creates_build_files(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys)
    assert rc == 0
    assert out.splitlines() == ["created app/BUILD", "created lib/BUILD"]
    app = (ws / "app/BUILD").read_text()
    assert app.startswith(HEADER)
    assert app == HEADER + textwrap.dedent('''
        py_library(
            name = "core",
            srcs = ["core.py"],
            deps = ["//lib:util"],
        )

        ''') + CORE_TEST_RENDERED
    # What tailor writes is a valid BUILD file for ciopt itself.
    decls = evaluate_build_file(ws / "lib/BUILD", "lib")
    assert [(d.kind, d.label.name) for d in decls] == [("py_library", "util")]
    assert [src.name for src in decls[0].attrs["srcs"]] == ["helpers.py", "util.py"]
    decls = evaluate_build_file(ws / "app/BUILD", "app")
    assert [str(x) for x in decls[1].attrs["deps"]] == ["//app:core", "//lib:util"]


def test_second_run_changes_nothing(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 0
    before = {p: p.read_bytes() for p in ws.rglob("BUILD")}
    rc, out, err = run(capsys)
    assert rc == 0 and out == ""
    assert "up to date" in err
    assert {p: p.read_bytes() for p in ws.rglob("BUILD")} == before
    rc, out, _ = run(capsys, "--check")
    assert rc == 0 and out == ""


def test_update_keeps_comments_attributes_and_hand_written_deps(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws / "app/BUILD").write_text(HAND_WRITTEN)
    rc, out, _ = run(capsys)
    assert rc == 0
    assert out.splitlines() == ["updated app/BUILD", "created lib/BUILD"]
    text = (ws / "app/BUILD").read_text()
    # The inferred dep joins the hand-written list ahead of its comment; core_test is appended.
    hand_written_dep = '        # vendored, inference cannot see it\n'
    assert text == HAND_WRITTEN.replace(hand_written_dep, '        "//lib:util",\n' + hand_written_dep) \
        + "\n" + CORE_TEST_RENDERED
    # and the second run leaves the hand-edited file alone
    assert run(capsys)[0] == 0
    assert (ws / "app/BUILD").read_text() == text


def test_never_deletes_entries_and_leaves_non_literal_values(ws: Path) -> None:
    source = textwrap.dedent('''\
        py_library(
            name = "core",
            srcs = glob(["*.py"]),
            deps = ["//old:dep"] + EXTRA,
        )

        py_test(
            name = "core_test",
            srcs = ["core_test.py", "legacy_test.py"],
            deps = [":core", "//x:manual"],
        )
        ''')
    out = update_build_source(source, TARGETS[:2], "app/BUILD")
    # glob() and the concatenation are the user's: untouched
    assert 'srcs = glob(["*.py"]),\n    deps = ["//old:dep"] + EXTRA,' in out
    # the one-line list in a one-arg-per-line call gains //lib:util and keeps both manual entries
    assert out.endswith(textwrap.dedent('''\
        py_test(
            name = "core_test",
            srcs = ["core_test.py", "legacy_test.py"],
            deps = [
                ":core",
                "//lib:util",
                "//x:manual",
            ],
        )
        '''))
    assert update_build_source(out, TARGETS[:2], "app/BUILD") == out


def test_equivalent_label_spellings_are_not_duplicated() -> None:
    source = 'py_test(name = "t", srcs = ["t.py"], deps = ["//pkg:lib", "//other"])\n'
    target = T("pkg", "t", "py_test", ["./t.py"], [":lib", "//other:other"])
    assert update_build_source(source, [target], "pkg/BUILD") == source


def test_unsorted_list_gets_new_entries_at_the_end() -> None:
    source = 'py_test(\n    name = "t",\n    deps = [\n        ":z",\n        ":a",\n    ],\n)\n'
    out = update_build_source(source, [T("pkg", "t", "py_test", [], [":m"])], "pkg/BUILD")
    assert out == 'py_test(\n    name = "t",\n    deps = [\n        ":z",\n        ":a",\n        ":m",\n    ],\n)\n'


def test_missing_attributes_are_added_after_name() -> None:
    source = 'py_test(\n    name = "t",  # keep\n    # why short\n    timeout = "short",\n)\n'
    out = update_build_source(source, [T("pkg", "t", "py_test", ["t.py"], [":a", ":b"])], "pkg/BUILD")
    assert out == textwrap.dedent('''\
        py_test(
            name = "t",  # keep
            srcs = ["t.py"],
            deps = [
                ":a",
                ":b",
            ],
            # why short
            timeout = "short",
        )
        ''')


def test_other_rule_with_the_same_name_is_left_alone() -> None:
    source = 'genrule(name = "core", outs = ["x"], cmd = "true")\n'
    notes: list[str] = []
    out = update_build_source(source, [TARGETS[0]], "app/BUILD", notes)
    assert out == source
    assert notes == ["app/BUILD: 'core' is declared by genrule(), not py_library; left as written"]


def test_crlf_file_stays_crlf() -> None:
    source = 'py_library(\r\n    name = "core",\r\n    srcs = ["core.py"],\r\n)\r\n'
    out = update_build_source(source, [TARGETS[0]], "app/BUILD")
    assert "\n" not in out.replace("\r\n", "")
    assert '    deps = ["//lib:util"],\r\n' in out


def test_check_exits_1_and_writes_nothing(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws / "app/BUILD").write_text(HAND_WRITTEN)
    rc, out, err = run(capsys, "--check")
    assert rc == 1
    assert out.splitlines() == ["would update app/BUILD", "would create lib/BUILD"]
    assert "out of date" in err
    assert (ws / "app/BUILD").read_text() == HAND_WRITTEN
    assert not (ws / "lib/BUILD").exists()


def test_json_output_and_path_filter(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "lib", "--output", "json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["created"] == ["lib/BUILD"] and doc["updated"] == [] and doc["changed"] is True
    assert not (ws / "app/BUILD").exists()
    rc, out, _ = run(capsys, "--check", "--output", "json")
    assert rc == 1
    assert json.loads(out)["created"] == ["app/BUILD"]


def test_existing_build_ciopt_is_the_one_edited(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws / "lib/BUILD.ciopt").write_text('py_library(name = "util", srcs = ["util.py", "helpers.py"])\n')
    plan = plan_tailor(ws, TARGETS, "lib")
    assert plan.changes == []
    (ws / "lib/BUILD.ciopt").write_text('py_library(name = "util", srcs = ["util.py"])\n')
    plan = plan_tailor(ws, TARGETS, "lib")
    assert [c.path for c in plan.changes] == ["lib/BUILD.ciopt"]
    # a sorted list stays sorted
    assert plan.changes[0].after == 'py_library(name = "util", srcs = ["helpers.py", "util.py"])\n'


def test_parse_error_names_file_and_line(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws / "app/BUILD").write_text('py_library(\n    name = "core",\n    srcs = ["core.py"],\n    deps = [,],\n)\n')
    rc, _, err = run(capsys)
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("ciopt: error:")]
    assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    assert errors[0].startswith("ciopt: error: app/BUILD:4:"), errors[0]
    assert "cannot parse BUILD file" in errors[0]
    assert not (ws / "lib/BUILD").exists()  # nothing written when any file is bad
    # an unclosed bracket: libcst's tokenizer says 1:1; the real place is reported
    (ws / "app/BUILD").write_text('py_library(\n    name = "core",\n    srcs = ["core.py"\n)\n')
    rc, _, err = run(capsys)
    assert rc == 2
    assert err.startswith("ciopt: error: app/BUILD:4:1: cannot parse BUILD file: closing parenthesis"), err
    with pytest.raises(TailorError) as e:
        update_build_source("x = (\n", [], "p/BUILD")
    assert e.value.path == "p/BUILD" and (e.value.line, e.value.column) == (1, 5)
    assert "never closed" in str(e.value)


# --------------------------------------------------------------------------- properties

LABELS = [":a", ":b", ":lib", "//x:y", "//x", "//q/r:s", "//z:z"]


def _render_list(values: list[str], style: str, comments: bool) -> str:
    if style == "one-line" or not values:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"
    lines = ["["]
    for k, v in enumerate(values):
        if comments and k % 2 == 0:
            lines.append(f"        # about {v}")
        trail = f"  # c{k}" if comments and k % 3 == 1 else ""
        comma = "," if (k < len(values) - 1 or style == "trailing-comma") else ""
        lines.append(f'        "{v}"{comma}{trail}')
    lines.append("    ]")
    return "\n".join(lines)


@settings(max_examples=150, deadline=None)
@given(
    existing=st.lists(st.sampled_from(LABELS), unique=True, max_size=5),
    wanted=st.lists(st.sampled_from(LABELS), unique=True, max_size=5),
    style=st.sampled_from(["one-line", "multi", "trailing-comma"]),
    comments=st.booleans(),
    has_deps=st.booleans(),
)
def test_update_properties(existing: list[str], wanted: list[str], style: str, comments: bool,
                           has_deps: bool) -> None:
    if not has_deps:
        existing = []
    deps_line = f"    deps = {_render_list(existing, style, comments)},\n" if has_deps else ""
    source = f'# header\npy_test(\n    name = "t",  # name\n    srcs = ["t.py"],\n{deps_line}    tags = ["x"],\n)\n'
    target = T("pkg", "t", "py_test", ["t.py"], wanted)
    out = update_build_source(source, [target], "pkg/BUILD")
    # idempotent
    assert update_build_source(out, [target], "pkg/BUILD") == out
    # every comment and every attribute survives
    for comment in [line.split("#", 1)[1] for line in source.splitlines() if "#" in line]:
        assert comment in out
    assert 'tags = ["x"]' in out
    # the result holds the union of hand-written and inferred deps, each once
    call = ast.parse(out).body[0].value  # type: ignore[attr-defined]
    kw = {k.arg: k.value for k in call.keywords}
    got = [e.value for e in kw["deps"].elts] if "deps" in kw else []
    def canon(v: str) -> str:
        return str(Label.parse(v, "pkg"))

    assert len(got) == len({canon(g) for g in got})
    expected = set(existing) | set(wanted)
    assert {canon(g) for g in got} == {canon(e) for e in expected}
    # hand-written entries keep their order
    assert [g for g in got if g in existing] == existing
