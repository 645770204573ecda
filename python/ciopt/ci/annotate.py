"""GitHub annotations (`::error file=F,line=N,title=T::message`) for the failed tests of a JUnit
XML report: ciopt's own (`ciopt test --junit`) or pytest's (`--junitxml`), so the fallback path
of a workflow gets them too.

JUnit has no standard place for the failing line. pytest's text does: its long traceback ends
each failure with `path.py:LINE: ExceptionType`, and ciopt's report carries a whole file's log,
where each failing test has its own `____ name ____` section. So the section of the test is cut
out first, then the last location in the test's own file is taken (the assertion), else the last
location at all (the frame that raised), else the file alone.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

_SECTION = re.compile(r"^_{3,} (.+?) _{3,}$")
_RULE = re.compile(r"^={3,}")
_PYTEST_LOCATION = re.compile(r"^([^\s:][^:]*\.py):(\d+): ")
_NATIVE_LOCATION = re.compile(r'File "([^"]+\.py)", line (\d+)')
MESSAGE_LINES = 12


@dataclass(frozen=True)
class Annotation:
    level: str  # error | warning
    title: str
    message: str
    file: str | None = None
    line: int | None = None

    def command(self) -> str:
        """The workflow command, escaped per GitHub's rules."""
        props = [f"{k}={escape_property(str(v))}" for k, v in
                 (("file", self.file), ("line", self.line), ("title", self.title)) if v is not None]
        return f"::{self.level} {','.join(props)}::{escape_data(self.message)}"

    def to_json(self) -> dict[str, object]:
        return {"level": self.level, "file": self.file, "line": self.line, "title": self.title,
                "message": self.message}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _section(text: str, name: str) -> str:
    """The lines of `text` under the `____ name ____` header (pytest's FAILURES section); all
    of `text` when it has no such header (pytest's own JUnit holds one test per failure)."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if start is not None and (m or _RULE.match(line)):
            return "\n".join(lines[start:i])
        if m and (m.group(1) == name or m.group(1).endswith("." + name)):
            start = i + 1
    return "\n".join(lines[start:]) if start is not None else text


def _locations(text: str) -> list[tuple[str, int]]:
    found = []
    for line in text.splitlines():
        m = _PYTEST_LOCATION.match(line) or _NATIVE_LOCATION.search(line)
        if m:
            found.append((m.group(1), int(m.group(2))))
    return found


def _file_of(case: ET.Element, suite_file: str | None, base: Path) -> str | None:
    if case.get("file"):
        return case.get("file")
    if suite_file and len(suite_file.split()) == 1:
        return suite_file
    # classname `tests.test_a.TestX`: the longest dotted prefix that is a file here.
    parts = (case.get("classname") or "").split(".")
    for n in range(len(parts), 0, -1):
        candidate = "/".join(parts[:n]) + ".py"
        if (base / candidate).is_file():
            return candidate
    return None


def _summary(section: str, fallback: str) -> str:
    errors = [line[1:].strip() for line in section.splitlines() if line.startswith("E ")]
    if errors:
        return "\n".join(errors[:MESSAGE_LINES])
    return fallback or "\n".join(section.strip().splitlines()[-MESSAGE_LINES:])


def _repo_path(path: str, base: Path, repo_root: Path | None) -> str:
    """`path` (relative to `base`, where the tests ran, or absolute) relative to the repository
    root, which is what GitHub resolves annotation paths against."""
    full = Path(path) if os.path.isabs(path) else base / path
    if repo_root is not None:
        try:
            return Path(os.path.abspath(full)).relative_to(repo_root).as_posix()
        except ValueError:
            pass
    return path


def _suite_files(root: ET.Element) -> dict[int, str | None]:
    files: dict[int, str | None] = {}
    for suite in root.iter("testsuite"):
        for case in suite.iter("testcase"):
            files[id(case)] = suite.get("file")
    return files


def annotations(junit: Path, base: Path, repo_root: Path | None = None) -> list[Annotation]:
    """An error per failed or erroring test case, a warning per flaky one. `base`: the directory
    the tests ran in (where the report's relative paths start). Raises ET.ParseError, OSError."""
    root = ET.parse(junit).getroot()
    suite_file = _suite_files(root)
    out = []
    for case in root.iter("testcase"):
        name = case.get("name") or "?"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        flaky = case.find("system-err")
        if problem is None:
            if flaky is not None and (flaky.text or "").startswith("FLAKY"):
                file = _file_of(case, suite_file.get(id(case)), base)
                out.append(Annotation("warning", f"flaky: {name}", (flaky.text or "").splitlines()[0],
                                      _repo_path(file, base, repo_root) if file else None))
            continue
        text = problem.text or ""
        section = _section(text, name)
        test_file = _file_of(case, suite_file.get(id(case)), base)
        located = _locations(section)
        mine = [loc for loc in located if test_file and os.path.normpath(loc[0]) == os.path.normpath(test_file)]
        file, line = (mine or located or [(test_file, None)])[-1]
        classname = case.get("classname") or ""
        title = f"{classname}::{name}" if classname and not classname.startswith("//") else name
        level_word = "error" if problem.tag == "error" else "failed"
        out.append(Annotation("error", f"{title} {level_word}", _summary(section, problem.get("message") or ""),
                              _repo_path(file, base, repo_root) if file else None, line))
    return out


__all__ = ["Annotation", "annotations", "escape_data", "escape_property"]
