"""Evaluating BUILD files: Starlark source in, target declarations out.

BUILD files run in a real Starlark interpreter (starlark-rust via the
`starlark-pyo3` package), never as Python: there is no `open`, no `import`, no
I/O beyond `glob()`, evaluation is deterministic, and a runaway loop is
cancelled after a time limit. The dialect is standard Starlark as in Bazel
BUILD files: `def` and comprehensions allowed, no top-level `if`/`for`, and no
`load()` yet (it is reported, with its location, as unsupported).

Where a target was declared matters for every later error ("duplicate name",
"unknown label", "cycle"), but Python callables receive no call-site location
from starlark-pyo3. So each rule is a two-line Starlark function, defined in a
prelude evaluated into the same module, that passes `call_stack()` to the
Python side. The outermost frame in this BUILD file gives the line (for a
macro, the line of the macro call, as Bazel reports); the column is found by
locating the called name on that line, falling back to the first
non-blank column.

Attributes are checked and normalised here (labels parsed relative to the
package, lists made tuples, defaults filled in) so the target graph works on
clean values and never needs the source again.
"""

from __future__ import annotations

from ciopt.errors import UserError

import difflib
import functools
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import starlark as sl

from ciopt.graph.label import Label, validate_name, validate_package
from ciopt.graph.target import BUILD_FILE_NAMES, TEST_RULES, Location, TargetDecl

__all__ = [
    "BUILD_FILE_NAMES",
    "RULE_ATTRS",
    "TEST_RULES",
    "BuildFileError",
    "Location",
    "TargetDecl",
    "evaluate_build_file",
    "find_build_file",
    "glob_files",
]

EVAL_TIME_LIMIT_S = 30.0


class BuildFileError(UserError):
    """A BUILD file problem; `str()` is `path:line:column: message`."""

    def __init__(self, message: str, path: str, line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.path, self.line, self.column) if p is not None)
        return f"{where}: {self.message}"

    @classmethod
    def at(cls, location: Location, message: str) -> BuildFileError:
        return cls(message, location.path, location.line, location.column)


def find_build_file(directory: Path) -> Path | None:
    """The BUILD file of the package in `directory`, if it is one."""
    for name in BUILD_FILE_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------
# Attribute types. A checker gets the raw value (already converted from
# Starlark to Python: lists, dicts, str, int, bool, None) and the package, and
# returns the normalised value or raises _BadAttr with the reason.


class _BadAttr(Exception):
    pass


def _type_name(value: object) -> str:
    if value is None:
        return "None"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "dict"}.get(
        type(value), type(value).__name__
    )


def _string(value: object, package: str) -> str:
    if not isinstance(value, str):
        raise _BadAttr(f"expected a string, got {_type_name(value)}")
    return value


def _bool(value: object, package: str) -> bool:
    if not isinstance(value, bool):
        raise _BadAttr(f"expected True or False, got {_type_name(value)}")
    return value


def _strings(value: object, package: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _BadAttr(f"expected a list of strings, got {_describe(value)}")
    return tuple(value)


def _describe(value: object) -> str:
    if isinstance(value, list):
        odd = next((v for v in value if not isinstance(v, str)), None)
        return f"a list containing {_type_name(odd)}" if odd is not None else "a list"
    return _type_name(value)


def _labels(value: object, package: str) -> tuple[Label, ...]:
    items = _strings(value, package)
    labels = []
    for item in items:
        try:
            labels.append(Label.parse(item, package))
        except ValueError as e:
            raise _BadAttr(str(e)) from None
    _no_duplicates([str(label) for label in labels], "label")
    return tuple(labels)


def _outs(value: object, package: str) -> tuple[str, ...]:
    outs = _strings(value, package)
    if not outs:
        raise _BadAttr("must list at least one output file")
    for out in outs:
        try:
            validate_name(out)
        except ValueError as e:
            raise _BadAttr(f"bad output name: {e}") from None
    _no_duplicates(list(outs), "output")
    return outs


def _no_duplicates(items: list[str], what: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise _BadAttr(f"duplicate {what} {item!r}")
        seen.add(item)


def _string_dict(value: object, package: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _BadAttr(f"expected a dict of string to string, got {_type_name(value)}")
    return dict(value)


# Bazel's timeout names, so BUILD files written for Bazel keep their meaning.
_TIMEOUTS = {"short": 60, "moderate": 300, "long": 900, "eternal": 3600}


def _timeout(value: object, package: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in _TIMEOUTS:
        return _TIMEOUTS[value]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise _BadAttr(f"expected seconds > 0 or one of {', '.join(_TIMEOUTS)}, got {value!r}")


def _requires(value: object, package: str) -> dict[str, object]:
    # The platform vocabulary belongs to the scheduler; only the few keys
    # whose type everyone relies on are checked here.
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _BadAttr(f"expected a dict like {{\"gpu\": 1}}, got {_type_name(value)}")
    out: dict[str, object] = {}
    for key, item in value.items():
        if key == "gpu" and (isinstance(item, bool) or not isinstance(item, int) or item < 0):
            raise _BadAttr(f"'gpu' must be a count >= 0, got {item!r}")
        if key == "gpu_memory_gb" and (isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0):
            raise _BadAttr(f"'gpu_memory_gb' must be a number >= 0, got {item!r}")
        if key == "tags":
            item = _strings(item, package)
        elif not isinstance(item, (str, int, float, bool)):
            raise _BadAttr(f"{key!r} must be a string, number or bool, got {_type_name(item)}")
        out[key] = item
    return out


@dataclass(frozen=True)
class _Attr:
    check: Callable[[object, str], object]
    default: object = None
    required: bool = False


_NAME = _Attr(_string, required=True)
_SRCS = _Attr(_labels, ())
_DEPS = _Attr(_labels, ())
_DATA = _Attr(_labels, ())
_TAGS = _Attr(_strings, ())
_ENV = _Attr(_string_dict, {})
_REQUIRES = _Attr(_requires, {})
_TEST = {
    "timeout": _Attr(_timeout, None),
    "flaky": _Attr(_bool, False),
    "requires": _REQUIRES,
    "env": _ENV,
    "args": _Attr(_strings, ()),
}

_RULES: dict[str, dict[str, _Attr]] = {
    "genrule": {
        "name": _NAME,
        "srcs": _SRCS,
        "outs": _Attr(_outs, required=True),
        "cmd": _Attr(_string, required=True),
        "tools": _Attr(_labels, ()),
        "env": _ENV,
        "requires": _REQUIRES,
        "tags": _TAGS,
    },
    "filegroup": {"name": _NAME, "srcs": _SRCS, "data": _DATA, "tags": _TAGS},
    "py_library": {"name": _NAME, "srcs": _SRCS, "deps": _DEPS, "data": _DATA, "tags": _TAGS},
    "py_test": {"name": _NAME, "srcs": _SRCS, "deps": _DEPS, "data": _DATA, "tags": _TAGS, **_TEST},
    "sh_test": {"name": _NAME, "srcs": _Attr(_labels, required=True), "deps": _DEPS, "data": _DATA, "tags": _TAGS, **_TEST},
    "test_suite": {"name": _NAME, "tests": _Attr(_labels, ()), "tags": _TAGS},
}

RULE_ATTRS: Mapping[str, frozenset[str]] = {kind: frozenset(attrs) for kind, attrs in _RULES.items()}

_PRELUDE_NAME = "<ciopt rules>"
_PRELUDE = "".join(
    f"def {kind}(*args, **kwargs):\n    return _ciopt_rule({kind!r}, call_stack(), args, kwargs)\n"
    for kind in _RULES
) + (
    # Our own print(): the interpreter's writes straight to fd 2 with no
    # location; this one says where it came from, as Bazel's DEBUG lines do.
    'def print(*args, sep = " "):\n'
    "    _ciopt_print(call_stack(), sep.join([str(a) for a in args]))\n"
)


# ----------------------------------------------------------------------------
# glob()

# Directories no glob enters: build outputs and bytecode caches would make
# source lists depend on what ran before, which poisons every cache key.
_NEVER_ENTER = frozenset({"__pycache__", "ciopt-out"})


def _glob_regex(pattern: str) -> re.Pattern[str]:
    if not pattern:
        raise ValueError("empty glob pattern")
    if pattern.startswith("/"):
        raise ValueError(f"glob pattern {pattern!r} must be relative to the package")
    parts: list[str] = []
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment in ("", ".", ".."):
            raise ValueError(f"glob pattern {pattern!r} has an empty, '.' or '..' segment")
        if segment == "**":
            # Zero or more directories; as the last segment, every file below.
            parts.append(r"(?:[^/.][^/]*/)*" + (r"[^/.][^/]*" if last else ""))
            continue
        if "**" in segment:
            raise ValueError(f"glob pattern {pattern!r}: '**' must be a whole path segment")
        # Like a shell, a wildcard does not match a leading dot: `*` skips
        # .git and .venv unless the pattern names the dot itself.
        regex = "" if segment.startswith(".") else r"(?!\.)"
        for char in segment:
            regex += "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char)
        parts.append(regex + ("" if last else "/"))
    return re.compile("".join(parts))


def glob_files(package_dir: Path, include: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Files under `package_dir` matching `include` and not `exclude`, sorted, '/'-separated.

    Subpackages (directories with their own BUILD file) are not entered: their
    files belong to them.
    """
    includes = [_glob_regex(p) for p in include]
    excludes = [_glob_regex(p) for p in exclude]
    if not includes:
        return []
    recursive = any("**" in p.split("/") for p in include)
    depth = None if recursive else max(p.count("/") for p in include)
    dotted = any(s.startswith(".") for p in include for s in p.split("/"))
    found: list[str] = []
    root = str(package_dir)
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        if rel and any(name in filenames for name in BUILD_FILE_NAMES):
            dirnames[:] = []
            continue
        level = rel.count("/") + 1 if rel else 0
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _NEVER_ENTER
            and (dotted or not d.startswith("."))
            and (depth is None or level < depth)
        )
        for name in filenames:
            path = f"{rel}/{name}" if rel else name
            if any(r.fullmatch(path) for r in includes) and not any(r.fullmatch(path) for r in excludes):
                if os.path.exists(os.path.join(dirpath, name)):  # drop dangling symlinks
                    found.append(path)
    return sorted(found)


# ----------------------------------------------------------------------------
# Evaluation


class _GlobError(Exception):
    pass


def _pattern_list(what: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise _GlobError(f"glob(): {what} must be a list of strings, got {_describe(value)}")
    return [str(p) for p in value]


_FRAME = re.compile(r"^  \* (?P<file>.+):(?P<line>\d+), in (?P<func>\S+)$", re.M)
_ARROW = re.compile(r"^\s*--> (?P<file>.+):(?P<line>\d+):(?P<column>\d+)\s*$", re.M)
_ERROR = re.compile(r"^error: (?P<message>.*)$", re.M)
_NOT_FOUND = re.compile(r"Variable `(?P<name>[^`]+)` not found(?:, did you mean `(?P<hint>[^`]+)`\?)?")


class _Evaluation:
    def __init__(self, path: Path, package: str, display: str, source: str, time_limit_s: float,
                 visible: frozenset[str] | None = None) -> None:
        self.path = path
        # Package-relative files glob() may return: the workspace's source files (gitignored
        # ones excluded), so a glob never names a file the build cannot see. None: the disk.
        self.visible = visible
        self.time_limit_s = time_limit_s
        self.package = package
        self.display = display
        self.lines = source.splitlines()
        self.decls: list[TargetDecl] = []
        self.names: dict[str, tuple[str, Location]] = {}  # name -> (what, where)
        # Errors raised in our callables cross Starlark as text; the exact
        # error (with its location) is kept here and re-raised afterwards.
        self.pending: BuildFileError | None = None

    # -- called from Starlark --------------------------------------------------

    def rule(self, kind: str, stack: str, args: list[object], kwargs: dict[str, object]) -> None:
        location = self._call_site(stack, kind)
        try:
            self._declare(kind, args, kwargs, location)
        except BuildFileError as e:
            self.pending = e
            raise

    def print(self, stack: str, message: str) -> None:
        sys.stderr.write(f"DEBUG: {self._call_site(stack, 'print')}: {message}\n")

    def glob(self, include: object, exclude: object = None) -> list[str]:
        includes = _pattern_list("include", include)
        excludes = _pattern_list("exclude", [] if exclude is None else exclude)
        try:
            found = glob_files(self.path.parent, includes, excludes)
            return found if self.visible is None else [f for f in found if f in self.visible]
        except ValueError as e:
            raise _GlobError(f"glob(): {e}") from None

    # -- declaring -------------------------------------------------------------

    def _declare(self, kind: str, args: list[object], kwargs: dict[str, object], location: Location) -> None:
        if args:
            raise BuildFileError.at(location, f"{kind}() takes keyword arguments only, got {len(args)} positional")
        schema = _RULES[kind]
        name = kwargs.get("name")
        if "name" not in kwargs:
            raise BuildFileError.at(location, f"{kind}(): missing required attribute 'name'")
        if not isinstance(name, str):
            raise BuildFileError.at(location, f"{kind}(): attribute 'name' must be a string, got {_type_name(name)}")
        try:
            label = Label(self.package, name)
        except ValueError as e:
            raise BuildFileError.at(location, f"{kind}(): bad name: {e}") from None
        where = f"{kind} rule {label}"

        attrs: dict[str, object] = {}
        for attr, value in kwargs.items():
            spec = schema.get(attr)
            if spec is None:
                close = difflib.get_close_matches(attr, schema, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; {kind} takes {', '.join(sorted(schema))}"
                raise BuildFileError.at(location, f"{where}: unknown attribute '{attr}'{hint}")
            try:
                attrs[attr] = spec.check(value, self.package)
            except _BadAttr as e:
                raise BuildFileError.at(location, f"{where}: attribute '{attr}': {e}") from None
        for attr, spec in schema.items():
            if attr not in attrs:
                if spec.required:
                    raise BuildFileError.at(location, f"{where}: missing required attribute '{attr}'")
                attrs[attr] = spec.default

        srcs = attrs["srcs"] if "srcs" in attrs else ()
        if kind == "sh_test" and isinstance(srcs, tuple) and len(srcs) != 1:
            raise BuildFileError.at(location, f"{where}: attribute 'srcs': sh_test takes exactly one script")

        # A genrule's outputs are targets of the package too, so they share
        # the namespace with rule names.
        self._claim(name, f"target {label}", location)
        outs = attrs.get("outs", ())
        for out in outs if isinstance(outs, tuple) else ():
            self._claim(out, f"output '{out}' of {label}", location)
        self.decls.append(TargetDecl(kind, label, attrs, location))

    def _claim(self, name: str, what: str, location: Location) -> None:
        if name in self.names:
            first_what, first_at = self.names[name]
            raise BuildFileError.at(
                location, f"duplicate target name '{name}': already declared at {first_at} ({first_what})"
            )
        self.names[name] = (what, location)

    # -- locations -------------------------------------------------------------

    def _call_site(self, stack: str, kind: str) -> Location:
        frames = [m for m in _FRAME.finditer(stack)]
        for i, frame in enumerate(frames):
            if frame["file"] == self.display:
                line = int(frame["line"])
                callee = frames[i + 1]["func"] if i + 1 < len(frames) else kind
                return Location(self.display, line, self._column(line, callee))
        return Location(self.display, 1, 1)  # unreachable from a BUILD file

    def _column(self, line: int, name: str) -> int:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        match = re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", text)
        if match:
            return match.start() + 1
        return len(text) - len(text.lstrip()) + 1

    def error_from(self, error: sl.StarlarkError) -> BuildFileError:
        """Translate a Starlark error's text into a located BuildFileError."""
        if self.pending is not None:
            return self.pending
        text = str(error)
        messages = _ERROR.findall(text)
        message = messages[-1] if messages else text.strip().splitlines()[-1]
        message = message.removeprefix(f"{_GlobError.__name__}: ").removeprefix("Parse error: ")
        line = column = None
        arrow = next((m for m in _ARROW.finditer(text) if m["file"] == self.display), None)
        if arrow:
            line, column = int(arrow["line"]), int(arrow["column"])
        else:
            frame = next((m for m in _FRAME.finditer(text) if m["file"] == self.display), None)
            if frame:
                line, column = int(frame["line"]), 1
        return BuildFileError(self._reword(message, line, column), self.display, line, column)

    def _reword(self, message: str, line: int | None, column: int | None) -> str:
        if message.startswith("`load` is not allowed"):
            return "load() is not supported in BUILD files yet; declare everything in this file"
        if message == "Evaluation cancelled":
            return f"evaluation took longer than {self.time_limit_s:g}s and was stopped (a runaway loop?)"
        missing = _NOT_FOUND.fullmatch(message)
        if missing and line is not None and column is not None:
            name = missing["name"]
            rest = self.lines[line - 1][column - 1 + len(name) :] if line <= len(self.lines) else ""
            if rest.lstrip().startswith("("):
                close = difflib.get_close_matches(name, [*_RULES, "glob"], n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; the rules are {', '.join(_RULES)}"
                return f"unknown rule or function '{name}'{hint}"
            hint = f" (did you mean '{missing['hint']}'?)" if missing["hint"] else ""
            return f"name '{name}' is not defined{hint}"
        return message


@functools.cache
def _globals() -> sl.Globals:
    # Standard Starlark builtins plus call_stack(), which the prelude needs.
    return sl.Globals.extended_by([sl.LibraryExtension.CallStack])


def evaluate_build_file(
    path: Path,
    package: str,
    *,
    display_path: str | None = None,
    time_limit_s: float = EVAL_TIME_LIMIT_S,
    visible: frozenset[str] | None = None,
) -> list[TargetDecl]:
    """Evaluate the BUILD file at `path`, the package `package` ("" = root); targets in call order.

    `display_path` is how the file is named in errors and locations (e.g.
    workspace-relative); by default `str(path)`. Raises BuildFileError.
    """
    display = display_path if display_path is not None else str(path)
    try:
        validate_package(package)
    except ValueError as e:
        raise BuildFileError(f"bad package name: {e}", display) from None
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BuildFileError(f"cannot read BUILD file: {e.strerror or e}", display) from None
    except UnicodeDecodeError as e:
        raise BuildFileError(f"BUILD file is not UTF-8: {e.reason}", display) from None

    evaluation = _Evaluation(path, package, display, source, time_limit_s, visible)
    module = sl.Module()
    module.add_callable("_ciopt_rule", evaluation.rule)
    module.add_callable("glob", evaluation.glob)
    module.add_callable("_ciopt_print", evaluation.print)
    globals_ = _globals()
    sl.eval(module, sl.parse(_PRELUDE_NAME, _PRELUDE, sl.Dialect.extended()), globals_)

    dialect = sl.Dialect.standard()
    dialect.enable_load = False
    deadline = time.monotonic() + time_limit_s
    options = sl.EvalOptions(check_cancelled=lambda: time.monotonic() > deadline)
    try:
        ast = sl.parse(display, source, dialect)
        sl.eval_with(options, module, ast, globals_)
    except sl.StarlarkError as e:
        raise evaluation.error_from(e) from None
    return evaluation.decls
