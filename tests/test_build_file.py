import textwrap
from pathlib import Path

import pytest

from ciopt.graph.build_file import (
    BuildFileError,
    Location,
    TargetDecl,
    evaluate_build_file,
    find_build_file,
    glob_files,
)
from ciopt.graph.label import Label


def build(root: Path, package: str, text: str, name: str = "BUILD") -> list[TargetDecl]:
    directory = root / package
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    display = f"{package}/{name}" if package else name
    return evaluate_build_file(path, package, display_path=display)


def error(root: Path, package: str, text: str, **kw: float) -> BuildFileError:
    directory = root / package
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "BUILD"
    path.write_text(text)  # verbatim: line numbers are what is tested
    with pytest.raises(BuildFileError) as info:
        evaluate_build_file(path, package, display_path=f"{package}/BUILD", **kw)
    return info.value


def touch(root: Path, *paths: str) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text(p)


# --- rules ----------------------------------------------------------------------


def test_genrule(tmp_path: Path) -> None:
    [decl] = build(
        tmp_path,
        "gen",
        """
        genrule(
            name = "proto",
            srcs = ["schema.txt", "//tools:gen"],
            outs = ["out/a.py", "b.py"],
            cmd = "tool $(SRCS) > $(OUTS)",
            requires = {"gpu": 1, "tags": ["cuda12"]},
        )
        """,
    )
    assert decl.kind == "genrule"
    assert decl.label == Label("gen", "proto")
    assert decl.attrs["srcs"] == (Label("gen", "schema.txt"), Label("tools", "gen"))
    assert decl.attrs["outs"] == ("out/a.py", "b.py")
    assert decl.attrs["cmd"] == "tool $(SRCS) > $(OUTS)"
    assert decl.attrs["requires"] == {"gpu": 1, "tags": ("cuda12",)}
    assert decl.attrs["tools"] == () and decl.attrs["env"] == {}
    assert decl.location == Location("gen/BUILD", 1, 1)


def test_filegroup_and_py_library(tmp_path: Path) -> None:
    decls = build(
        tmp_path,
        "lib",
        """
        filegroup(name = "data", srcs = ["a.json"])
        py_library(
            name = "lib",
            srcs = ["lib.py"],
            deps = [":util", "//other/pkg"],
            data = [":data"],
        )
        """,
    )
    assert [(d.kind, str(d.label)) for d in decls] == [("filegroup", "//lib:data"), ("py_library", "//lib:lib")]
    lib = decls[1]
    assert lib.attrs["deps"] == (Label("lib", "util"), Label("other/pkg", "pkg"))
    assert lib.attrs["data"] == (Label("lib", "data"),)
    assert lib.location == Location("lib/BUILD", 2, 1)


def test_py_test_attributes(tmp_path: Path) -> None:
    [t] = build(
        tmp_path,
        "t",
        """
        py_test(
            name = "test_x",
            srcs = ["test_x.py"],
            deps = [":lib"],
            timeout = "short",
            flaky = True,
            requires = {"gpu": 1, "gpu_memory_gb": 40, "os": "linux"},
            tags = ["slow"],
            env = {"MODE": "ci"},
            args = ["-k", "fast"],
        )
        """,
    )
    assert t.kind == "py_test"
    assert t.attrs["timeout"] == 60
    assert t.attrs["flaky"] is True
    assert t.attrs["requires"] == {"gpu": 1, "gpu_memory_gb": 40, "os": "linux"}
    assert t.attrs["tags"] == ("slow",)
    assert t.attrs["env"] == {"MODE": "ci"}
    assert t.attrs["args"] == ("-k", "fast")


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    [t] = build(tmp_path, "d", 'py_test(name = "t", srcs = ["t.py"])\n')
    assert t.attrs == {
        "name": "t",
        "srcs": (Label("d", "t.py"),),
        "deps": (),
        "data": (),
        "tags": (),
        "timeout": None,
        "flaky": False,
        "requires": {},
        "env": {},
        "args": (),
    }


def test_sh_test_and_test_suite(tmp_path: Path) -> None:
    decls = build(
        tmp_path,
        "s",
        """
        sh_test(name = "smoke", srcs = ["smoke.sh"], data = [":fixtures"], timeout = 30)
        test_suite(name = "all_tests", tests = [":smoke", "//t:test_x"], tags = ["ci"])
        """,
    )
    smoke, suite = decls
    assert smoke.kind == "sh_test" and smoke.attrs["srcs"] == (Label("s", "smoke.sh"),)
    assert smoke.attrs["timeout"] == 30
    assert suite.kind == "test_suite"
    assert suite.attrs["tests"] == (Label("s", "smoke"), Label("t", "test_x"))
    assert suite.location == Location("s/BUILD", 2, 1)


def test_root_package(tmp_path: Path) -> None:
    [decl] = build(tmp_path, "", 'filegroup(name = "top", srcs = ["README.md"])\n')
    assert str(decl.label) == "//:top"
    assert decl.attrs["srcs"] == (Label("", "README.md"),)
    assert decl.location == Location("BUILD", 1, 1)


def test_build_ciopt_is_preferred(tmp_path: Path) -> None:
    touch(tmp_path, "a/BUILD", "a/BUILD.ciopt", "b/BUILD")
    assert find_build_file(tmp_path / "a") == tmp_path / "a" / "BUILD.ciopt"
    assert find_build_file(tmp_path / "b") == tmp_path / "b" / "BUILD"
    assert find_build_file(tmp_path) is None


# --- call-site locations ------------------------------------------------------------


def test_locations_of_calls_in_expressions_macros_and_comprehensions(tmp_path: Path) -> None:
    decls = build(
        tmp_path,
        "m",
        """
        def two_tests(prefix):
            py_test(name = prefix + "_a", srcs = ["a.py"])
            py_test(name = prefix + "_b", srcs = ["b.py"])

        x = filegroup(name = "fg")
        two_tests("unit")
        two_tests("integ")
        [filegroup(name = "n%d" % i) for i in range(2)]
        """,
    )
    where = {d.label.name: (d.location.line, d.location.column) for d in decls}
    assert where == {
        "fg": (5, 5),
        # Inside a macro, the location is the macro call in this file (as Bazel).
        "unit_a": (6, 1),
        "unit_b": (6, 1),
        "integ_a": (7, 1),
        "integ_b": (7, 1),
        "n0": (8, 2),
        "n1": (8, 2),
    }
    assert str(decls[0].location) == "m/BUILD:5:5"


# --- glob ------------------------------------------------------------------------------


def test_glob(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "p/a.py",
        "p/b.py",
        "p/notes.txt",
        "p/sub/c.py",
        "p/sub/deep/d.py",
        "p/.hidden/e.py",
        "p/.dot.py",
        "p/__pycache__/a.cpython-311.pyc",
        "p/child/BUILD",
        "p/child/f.py",
    )
    decls = build(
        tmp_path,
        "p",
        """
        filegroup(name = "top", srcs = glob(["*.py"]))
        filegroup(name = "all_py", srcs = glob(["**/*.py"], exclude = ["sub/deep/**"]))
        filegroup(name = "everything", srcs = glob(["**"]))
        filegroup(name = "hidden", srcs = glob([".hidden/*.py"]))
        """,
    )
    by_name = {d.label.name: [label.name for label in d.attrs["srcs"]] for d in decls}  # type: ignore[attr-defined]
    assert by_name["top"] == ["a.py", "b.py"]
    assert by_name["all_py"] == ["a.py", "b.py", "sub/c.py"]
    # The subpackage `child` (own BUILD file), dot-files and __pycache__ stay out.
    assert by_name["everything"] == ["BUILD", "a.py", "b.py", "notes.txt", "sub/c.py", "sub/deep/d.py"]
    assert by_name["hidden"] == [".hidden/e.py"]


def test_glob_files_directly(tmp_path: Path) -> None:
    touch(tmp_path, "x/a.txt", "x/b/c.txt", "x/b/d.md")
    assert glob_files(tmp_path, ["x/**"]) == ["x/a.txt", "x/b/c.txt", "x/b/d.md"]
    assert glob_files(tmp_path, ["x/*/?.txt"]) == ["x/b/c.txt"]
    assert glob_files(tmp_path, ["**/*.txt"], ["x/b/**"]) == ["x/a.txt"]
    assert glob_files(tmp_path, ["nothing/*"]) == []
    assert glob_files(tmp_path, []) == []
    for bad in ["a**", "../x", "/abs", "a//b", ""]:
        with pytest.raises(ValueError):
            glob_files(tmp_path, [bad])


def test_glob_error_is_located(tmp_path: Path) -> None:
    e = error(tmp_path, "g", 'filegroup(\n    name = "x",\n    srcs = glob(["a/**b"]),\n)\n')
    assert (e.line, e.column) == (3, 12)
    assert str(e) == "g/BUILD:3:12: glob(): glob pattern 'a/**b': '**' must be a whole path segment"


# --- errors ---------------------------------------------------------------------------


def test_syntax_error_has_file_line_column(tmp_path: Path) -> None:
    e = error(tmp_path, "bad", 'filegroup(name = "x")\nx = 1 +\n')
    assert (e.path, e.line, e.column) == ("bad/BUILD", 2, 8)
    assert str(e).startswith("bad/BUILD:2:8: unexpected new line")


def test_unknown_rule(tmp_path: Path) -> None:
    e = error(tmp_path, "u", '\npy_libary(name = "x")\n')
    assert str(e) == "u/BUILD:2:1: unknown rule or function 'py_libary' (did you mean 'py_library'?)"


def test_unknown_attribute(tmp_path: Path) -> None:
    e = error(tmp_path, "u", 'py_library(\n    name = "lib",\n    src = ["a.py"],\n)\n')
    assert str(e) == "u/BUILD:1:1: py_library rule //u:lib: unknown attribute 'src' (did you mean 'srcs'?)"


@pytest.mark.parametrize(
    "call, message",
    [
        ('py_library(name = "x", srcs = "a.py")', "attribute 'srcs': expected a list of strings, got string"),
        ('py_library(name = "x", srcs = ["a.py", 3])', "attribute 'srcs': expected a list of strings, got a list containing int"),
        ('py_test(name = "x", flaky = "yes")', "attribute 'flaky': expected True or False, got string"),
        ('py_test(name = "x", timeout = "forever")', "attribute 'timeout': expected seconds > 0 or one of short"),
        ('py_test(name = "x", env = {"A": 1})', "attribute 'env': expected a dict of string to string"),
        ('py_test(name = "x", requires = {"gpu": "one"})', "attribute 'requires': 'gpu' must be a count >= 0"),
        ('genrule(name = "x", outs = [], cmd = "c")', "attribute 'outs': must list at least one output file"),
        ('genrule(name = "x", outs = ["a"])', "missing required attribute 'cmd'"),
        ('py_library(name = "x", deps = ["a:b"])', "did you mean '//a:b'?"),
        ('py_library(name = "x", srcs = ["a.py", ":a.py"])', "duplicate label '//w:a.py'"),
        ('sh_test(name = "x", srcs = ["a.sh", "b.sh"])', "sh_test takes exactly one script"),
    ],
)
def test_wrong_attribute_values(tmp_path: Path, call: str, message: str) -> None:
    e = error(tmp_path, "w", "\n\n" + call + "\n")
    assert (e.path, e.line, e.column) == ("w/BUILD", 3, 1)
    assert message in e.message


def test_duplicate_name(tmp_path: Path) -> None:
    e = error(tmp_path, "d", 'filegroup(name = "x")\n\npy_library(name = "x")\n')
    assert str(e) == "d/BUILD:3:1: duplicate target name 'x': already declared at d/BUILD:1:1 (target //d:x)"


def test_output_clashes_with_target_name(tmp_path: Path) -> None:
    e = error(tmp_path, "d", 'genrule(name = "g", outs = ["x"], cmd = "c")\nfilegroup(name = "x")\n')
    assert e.line == 2 and "already declared at d/BUILD:1:1 (output 'x' of //d:g)" in e.message


def test_missing_name(tmp_path: Path) -> None:
    e = error(tmp_path, "n", 'x = 1\nfilegroup(srcs = [])\n')
    assert str(e) == "n/BUILD:2:1: filegroup(): missing required attribute 'name'"


def test_positional_arguments_are_refused(tmp_path: Path) -> None:
    e = error(tmp_path, "n", 'filegroup("x")\n')
    assert str(e) == "n/BUILD:1:1: filegroup() takes keyword arguments only, got 1 positional"


def test_invalid_target_name(tmp_path: Path) -> None:
    e = error(tmp_path, "n", 'filegroup(name = "a/../b")\n')
    assert e.line == 1 and "'..' segment" in e.message


def test_load_is_refused_with_its_location(tmp_path: Path) -> None:
    e = error(tmp_path, "l", '# header\nload("//tools:defs.bzl", "macro")\n')
    assert (e.path, e.line) == ("l/BUILD", 2)
    assert "load() is not supported" in str(e)


@pytest.mark.parametrize(
    "source, name",
    [
        ('f = open("/etc/passwd")', "open"),
        ('os = __import__("os")', "__import__"),
        ('eval("1")', "eval"),
        ('exec("x = 1")', "exec"),
        ('compile("1", "f", "eval")', "compile"),
    ],
)
def test_python_builtins_do_not_exist(tmp_path: Path, source: str, name: str) -> None:
    e = error(tmp_path, "py", source + "\n")
    assert e.line == 1
    assert f"'{name}'" in e.message and "unknown" in e.message


def test_no_python_object_model(tmp_path: Path) -> None:
    e = error(tmp_path, "py", 'x = "".__class__\n')
    assert e.line == 1 and "__class__" in e.message


def test_top_level_control_flow_is_not_starlark_build_dialect(tmp_path: Path) -> None:
    e = error(tmp_path, "cf", "for i in range(3):\n    pass\n")
    assert (e.line, e.column) == (1, 1)
    assert "`for` cannot be used outside `def`" in e.message


def test_runaway_evaluation_is_stopped(tmp_path: Path) -> None:
    e = error(tmp_path, "slow", "x = [i for i in range(1000000000)]\n", time_limit_s=0.5)
    assert e.line == 1 and "stopped" in e.message


def test_undefined_name(tmp_path: Path) -> None:
    e = error(tmp_path, "u", "x = [undefined_thing]\n")
    assert str(e) == "u/BUILD:1:6: name 'undefined_thing' is not defined"


def test_fail_reports_its_location(tmp_path: Path) -> None:
    e = error(tmp_path, "f", 'x = 1\nfail("no such config")\n')
    assert e.line == 2 and "no such config" in e.message


def test_default_display_path_is_the_path(tmp_path: Path) -> None:
    path = tmp_path / "BUILD"
    path.write_text("x = (\n")
    with pytest.raises(BuildFileError) as info:
        evaluate_build_file(path, "")
    assert str(info.value).startswith(f"{path}:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BuildFileError, match="cannot read BUILD file"):
        evaluate_build_file(tmp_path / "BUILD", "")


def test_print_goes_to_stderr_with_its_location(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path, "pr", 'x = 1\nprint("value", x, sep = "=")\n')
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "DEBUG: pr/BUILD:2:1: value=1\n"
