"""Resolving Python imports to workspace files.

Python finds a top-level name on the first `sys.path` entry that has it. Ours, in order:
the importing file's *base directory* (the first ancestor without `__init__.py`: where
pytest's default "prepend" import mode and `python script.py` put it), then the source
roots (configured, else detected: the workspace root, `src/`, package dirs named in
pyproject.toml, pytest's `pythonpath`). Importing `a.b.c` also runs `a/__init__.py` and
`a/b/__init__.py`, so those are dependencies too; `from a.b import c` depends on the
submodule `a/b/c.py` when there is one. Namespace packages (no `__init__.py`) and `.pyi`
stubs are found like modules.
"""

from __future__ import annotations

import configparser
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
MODULE_SUFFIXES = (".py", ".pyi")
PYTEST_CONFIGS = ("pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


@dataclass(frozen=True)
class PytestSettings:
    """What decides which files pytest collects and what it puts on sys.path."""

    python_files: tuple[str, ...] = ("test_*.py", "*_test.py")
    pythonpath: tuple[str, ...] = ()
    testpaths: tuple[str, ...] = ()
    config_file: str | None = None


def read_pytest_settings(root: Path) -> PytestSettings:
    """pytest's own precedence: pytest.ini, pyproject.toml [tool.pytest.ini_options], tox.ini, setup.cfg."""
    for name in PYTEST_CONFIGS:
        path = root / name
        if not path.is_file():
            continue
        values: dict[str, object] | None = None
        try:
            if name == "pyproject.toml":
                data = tomllib.loads(path.read_text(encoding="utf-8"))
                values = data.get("tool", {}).get("pytest", {}).get("ini_options")
            else:
                cp = configparser.ConfigParser(interpolation=None)
                cp.read(path, encoding="utf-8")
                section = "tool:pytest" if name == "setup.cfg" else "pytest"
                if cp.has_section(section):
                    values = dict(cp.items(section))
                elif name == "pytest.ini":
                    values = {}
        except (OSError, tomllib.TOMLDecodeError, configparser.Error, UnicodeDecodeError):
            continue
        if values is None:
            continue
        return PytestSettings(
            python_files=_words(values.get("python_files")) or PytestSettings.python_files,
            pythonpath=_words(values.get("pythonpath")),
            testpaths=_words(values.get("testpaths")),
            config_file=name,
        )
    return PytestSettings()


def _words(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return tuple(str(value).split())


def detect_source_roots(root: Path, files: Iterable[str], settings: PytestSettings) -> tuple[str, ...]:
    """Workspace-relative source roots ("" = the workspace root), most specific first."""
    roots: list[str] = []
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}
        tool = data.get("tool", {})
        setuptools = tool.get("setuptools", {})
        package_dir = setuptools.get("package-dir", {})
        if isinstance(package_dir, dict) and package_dir.get(""):
            roots.append(str(package_dir[""]).strip("/"))
        find = setuptools.get("packages", {})
        if isinstance(find, dict):
            for where in find.get("find", {}).get("where", []) or []:
                roots.append(str(where).strip("/"))
        for pkg in tool.get("poetry", {}).get("packages", []) or []:
            if isinstance(pkg, dict) and pkg.get("from"):
                roots.append(str(pkg["from"]).strip("/"))
        wheel = tool.get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
        for pkg in wheel.get("packages", []) or []:
            parent = str(pkg).strip("/").rpartition("/")[0]
            roots.append(parent)
    roots.extend(p.strip("/").removeprefix("./") if p not in (".", "./") else "" for p in settings.pythonpath)
    if any(f.startswith("src/") and f.endswith(".py") for f in files):
        roots.append("src")
    roots.append("")
    return tuple(dict.fromkeys(r for r in roots if r is not None))


@dataclass
class ModuleIndex:
    """Which modules exist: every .py/.pyi file and every directory that holds one."""

    files: frozenset[str]
    dirs: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, files: Iterable[str]) -> ModuleIndex:
        fs = frozenset(f for f in files if f.endswith(MODULE_SUFFIXES))
        dirs: set[str] = set()
        for f in fs:
            d = f.rpartition("/")[0]
            while d and d not in dirs:
                dirs.add(d)
                d = d.rpartition("/")[0]
        return cls(fs, frozenset(dirs))

    def module_file(self, base: str, dotted: str) -> str | None:
        """The file defining module `dotted` under directory `base`, if any."""
        rel = dotted.replace(".", "/")
        prefix = f"{base}/{rel}" if base else rel
        for candidate in (prefix + ".py", prefix + "/__init__.py", prefix + ".pyi", prefix + "/__init__.pyi"):
            if candidate in self.files:
                return candidate
        return None

    def has_top(self, base: str, top: str) -> bool:
        prefix = f"{base}/{top}" if base else top
        return prefix in self.dirs or prefix + ".py" in self.files or prefix + ".pyi" in self.files


@dataclass
class Resolution:
    files: list[str]  # workspace files the import executes
    external: str | None  # top-level name of a third-party module, when it is one


class PythonResolver:
    def __init__(self, index: ModuleIndex, source_roots: tuple[str, ...]) -> None:
        self.index = index
        self.roots = source_roots
        self._base_cache: dict[str, str] = {}

    def base_dir(self, importer: str) -> str:
        """First ancestor directory of `importer` that is not a package."""
        d = importer.rpartition("/")[0]
        cached = self._base_cache.get(d)
        if cached is not None:
            return cached
        base = d
        while base and (f"{base}/__init__.py" in self.index.files or f"{base}/__init__.pyi" in self.index.files):
            base = base.rpartition("/")[0]
        self._base_cache[d] = base
        return base

    def resolve(self, importer: str, module: str, level: int, names: list[str]) -> Resolution:
        if level > 0:
            return Resolution(self._relative(importer, module, level, names), None)
        top = module.split(".", 1)[0]
        if not top:
            return Resolution([], None)
        for root in (self.base_dir(importer), *self.roots):
            if self.index.has_top(root, top):
                return Resolution(self._absolute(root, module, names), None)
        return Resolution([], None if top in STDLIB else top)

    def _absolute(self, root: str, module: str, names: list[str]) -> list[str]:
        out: list[str] = []
        parts = module.split(".")
        # Every package on the way runs its __init__.
        for i in range(1, len(parts) + 1):
            f = self.index.module_file(root, ".".join(parts[:i]))
            if f is not None:
                out.append(f)
        for name in names:
            sub = self.index.module_file(root, f"{module}.{name}")
            if sub is not None:
                out.append(sub)
        return list(dict.fromkeys(out))

    def _relative(self, importer: str, module: str, level: int, names: list[str]) -> list[str]:
        package = importer.rpartition("/")[0]
        for _ in range(level - 1):
            if not package:
                return []  # beyond the top: Python raises ImportError, nothing to depend on
            package = package.rpartition("/")[0]
        out: list[str] = []
        init = self.index.module_file("", package.replace("/", ".")) if package else None
        if init is not None and init.endswith(("/__init__.py", "/__init__.pyi")):
            out.append(init)
        if module:
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                f = self.index.module_file(package, ".".join(parts[:i]))
                if f is not None:
                    out.append(f)
        target = f"{module}." if module else ""
        for name in names:
            sub = self.index.module_file(package, f"{target}{name}")
            if sub is not None:
                out.append(sub)
        return list(dict.fromkeys(out))


def conftests_for(test_file: str, files: frozenset[str]) -> list[str]:
    """Every conftest.py pytest loads for `test_file`: its directory's and each ancestor's."""
    d = test_file.rpartition("/")[0]
    out = []
    while True:
        c = f"{d}/conftest.py" if d else "conftest.py"
        if c in files and c != test_file:
            out.append(c)
        if not d:
            return out
        d = d.rpartition("/")[0]
