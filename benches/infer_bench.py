"""Dependency-inference benchmarks: `ciopt graph` / `ciopt affected` against ruff and grimp, side by side.

Run:  .venv/bin/python benches/infer_bench.py [--repeat N] [--quick] [--only NAME] [--json FILE]
                                             [--commits 200] [--replay-source GIT]

Timed results read `name: ours X s, peer Y s, ratio Z (target ...)` with ratio = ours / peer (lower
is better), X and Y the median of the repetitions, ours and peer alternating so that drift hits both
alike. Agreement and replay results read `name: <figures> (target ...)`. Targets are printed, never
asserted (see hash_bench.py for why).

  graph_django_cold_vs_ruff   `ciopt graph -o json` on the Django 5.1.4 tree, empty store (a fresh
                              CIOPT_CACHE_DIR every repetition), against `ruff analyze graph .`
  graph_django_warm_vs_ruff   the same with the store warm (the graph itself is cached by content)
  edges_django_vs_ruff        ruff's edges that ciopt also has, and every disagreement classified
  edges_django_vs_grimp       the same against grimp's module graph of the `django` package
  affected_django_one_file_warm
                              `ciopt affected --base HEAD -o json` after appending a comment to one
                              file, warm store; peer: ruff's dependents map + closure in Python
  replay_history              `ciopt affected --base C^ --head C` over the last --commits commits of a
                              public repository (first-parent history), checked by a dynamic oracle:
                              every test file ciopt did not select is run under pytest, recording the
                              project files Python imported; a changed file in that set is a miss.

Every ciopt run is this checkout's `.venv/bin/ciopt` with cwd = the corpus and CIOPT_CACHE_DIR a store
the bench owns. Corpora live under benches/.corpus/ (gitignored): the Django tree committed to git
(`django-git`, see corpus.py) and a clone of the replayed repository (`replay-<name>`). Each gets a
workspace marker that git does not see (corpus.mark_workspace explains why it is needed).
"""

from __future__ import annotations

import argparse
import ast
import configparser
import fnmatch
import functools
import hashlib
import json
import keyword
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import corpus
import harness
from harness import (
    CIOPT_CLI,
    REPO,
    ChildFailed,
    Result,
    emit,
    fill,
    fmt_samples,
    tool_version,
)

VENV_BIN = CIOPT_CLI.parent
RUFF = VENV_BIN / "ruff"
SCRATCH = corpus.CORPUS / "infer_tmp"  # stores live here: same filesystem as the corpora
CMD_TIMEOUT_S = 600

# affected_django_one_file_warm: the file that gets a comment appended (and is restored after).
DJANGO_EDIT = "django/utils/text.py"

# replay_history: a small, pure-Python library whose suite runs in seconds with only pytest.
# 1,654 commits, 31 test files under tests/ (a package), one module per test file mostly.
# The head is pinned so that the replayed range never moves.
REPLAY_NAME = "boltons"
REPLAY_HEAD = "967864f89791509f9eb36b22b4579d36b72a6df2"
REPLAY_SOURCES = ("/work/.mirror/mahmoud+boltons/repo", "https://github.com/mahmoud/boltons.git")
# The oracle's own pytest: pytest 9 rejects the `pytest_ignore_collect(path, config)` hook that
# boltons' conftest.py used until 2025-12 (most of the range); pytest 8 still accepts it.
ORACLE_PYTEST = "pytest>=8,<9"
ORACLE_TIMEOUT_S = 300
MODULE_SUFFIXES = (".py", ".pyi", ".so", ".pyd")  # what a module's __file__ can end with
PYTEST_CONFIGS = ("pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")

# The same recorder as tests/test_affected.py: project files in sys.modules at session end.
ORACLE_PLUGIN = '''
import json, os, sys
def pytest_sessionfinish(session):
    root = os.environ["ORACLE_ROOT"]
    files = sorted({os.path.relpath(os.path.realpath(m.__file__), root)
                    for m in list(sys.modules.values())
                    if getattr(m, "__file__", None)
                    and os.path.realpath(m.__file__).startswith(root + os.sep)})
    with open(os.environ["ORACLE_OUT"], "w") as f:
        json.dump(files, f)
'''


# --- running commands ----------------------------------------------------------------------------

run = functools.partial(harness.run, timeout=CMD_TIMEOUT_S)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout.decode(
        "utf-8", "surrogateescape")


class Ciopt(harness.Ciopt):
    """`ciopt` in a corpus with a store the bench chooses."""

    timeout_s = CMD_TIMEOUT_S


def fresh_store() -> Path:
    return harness.fresh_store(SCRATCH)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ruff_graph_argv(*extra: str) -> list[str]:
    return [str(RUFF), "analyze", "graph", *extra, "."]


def django_workspace() -> Path:
    root = corpus.django_git_tree()
    corpus.mark_workspace(root)
    # A run interrupted inside affected_django_one_file_warm leaves its edit behind.
    if git(root, "status", "--porcelain", "--", DJANGO_EDIT).strip():
        git(root, "checkout", "--", DJANGO_EDIT)
    corpus.settle(root)
    return root


@dataclass
class Config:
    repeat: int
    commits: int
    replay_source: str | None


# --- 1, 2: graph cold / warm ---------------------------------------------------------------------

def bench_graph_django(cfg: Config, results: list[Result]) -> None:
    root = django_workspace()
    files = [p for p in corpus.list_files(root) if p != root / corpus.WORKSPACE_MARKER]
    corpus.warm_page_cache(files)
    py_files = sum(1 for p in files if p.suffix in (".py", ".pyi"))
    ruff_argv = ruff_graph_argv()
    run(ruff_argv, cwd=root)  # warm-up: page cache, ruff's own start-up files

    cold_stores: list[int] = []

    def cold() -> float:
        store = fresh_store()  # made and removed outside the timing
        try:
            t = Ciopt(store).run(root, "graph", "-o", "json")[0]
            cold_stores.append(dir_size(store))
            return t
        finally:
            shutil.rmtree(store, ignore_errors=True)

    ours_t: list[float] = []
    peer_t: list[float] = []
    for _ in range(cfg.repeat):
        ours_t.append(cold())
        peer_t.append(run(ruff_argv, cwd=root)[0])
    r = fill(Result("graph_django_cold_vs_ruff", "ruff analyze graph . (process)",
                    "target <= 1.0", max_ratio=1.0), ours_t, peer_t)
    r.notes["corpus"] = (f"{root.relative_to(REPO)}: {len(files)} files, {py_files} .py/.pyi; "
                         f"ciopt also reads the JS/shell/Dockerfiles, ruff only Python")
    r.notes["samples ours / peer"] = f"{fmt_samples(ours_t)} / {fmt_samples(peer_t)}"
    r.notes["store after one cold run"] = f"{statistics.median(cold_stores) / 1e6:.1f} MB"
    store = fresh_store()
    try:
        cold_phases = phases(root, store)
        warm_phases = phases(root, store)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    r.notes["where a cold run goes (in-process timers)"] = fmt_phases(cold_phases)
    r.extra["phases"] = cold_phases
    emit(r, results)

    store = fresh_store()
    try:
        ciopt = Ciopt(store)
        _, first = ciopt.run(root, "graph", "-o", "json", capture=True)
        ours_t, peer_t = [], []
        outputs_equal = True
        for _ in range(cfg.repeat):
            t, out = ciopt.run(root, "graph", "-o", "json", capture=True)
            ours_t.append(t)
            outputs_equal &= out == first
            peer_t.append(run(ruff_argv, cwd=root)[0])
        r = fill(Result("graph_django_warm_vs_ruff", "ruff analyze graph . (process)",
                        "target <= 0.3", max_ratio=0.3), ours_t, peer_t)
        r.notes["samples ours / peer"] = f"{fmt_samples(ours_t)} / {fmt_samples(peer_t)}"
        r.notes["warm output identical to cold output"] = "yes" if outputs_equal else "NO"
        r.notes["where a warm run goes (in-process timers)"] = fmt_phases(warm_phases)
        r.extra["phases"] = warm_phases
        emit(r, results)
    finally:
        shutil.rmtree(store, ignore_errors=True)


# The phases of `ciopt graph` (python/ciopt/cli/affected.py: graph), timed inside one process.
_CHILD_PHASES = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from ciopt.workspace import Workspace
from ciopt.graph.target_graph import scan_sources
from ciopt.infer import extract, graph as g
t1 = time.perf_counter()
ws = Workspace(Path.cwd())
t2 = time.perf_counter()
sources = scan_sources(ws.root, ws.store)
t3 = time.perf_counter()
spent = {"extract": 0.0}
real = g.extract_cached
def timed_extract(*a, **k):
    s = time.perf_counter()
    try:
        return real(*a, **k)
    finally:
        spent["extract"] += time.perf_counter() - s
g.extract_cached = timed_extract
fg = g.build_file_graph(ws.root, sources.digests, ws.store, ws.config.selection.source_roots)
t4 = time.perf_counter()
out = json.dumps(fg.to_json(), indent=2)
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "workspace": t2 - t1, "scan_sources": t3 - t2,
                  "extract_imports": spent["extract"],
                  "graph (rest: resolve, cache)": t4 - t3 - spent["extract"], "json": t5 - t4}))
"""


def phases(root: Path, store: Path) -> dict[str, float]:
    _, out = run([str(VENV_BIN / "python"), "-c", _CHILD_PHASES], cwd=root, env=Ciopt(store).env(),
                 capture=True)
    return json.loads(out)


def fmt_phases(p: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in p.items()) + f" (sum {sum(p.values()):.3f} s)"


# --- 3: edge agreement ---------------------------------------------------------------------------

@dataclass
class ImportStmt:
    line: int
    form: str  # import | from | dynamic
    level: int
    text: str  # the source line, trimmed
    # (target, how): target is "a/b/c" for absolute imports, a workspace-relative module path for
    # relative ones; how is "module" (the imported module), "name" (`from m import name`, which
    # is a submodule only when m/name exists) or "dynamic" (importlib/__import__ string literal).
    targets: list[tuple[str, str]]
    relative: bool
    beyond_top: bool
    context: tuple[str, ...]  # TYPE_CHECKING, try, function, class, conditional (innermost last)


class SourceIndex:
    """The import statements of every Python file of a tree, read with the `ast` module:
    the bench's own reference to explain each edge with the statement behind it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stmts: dict[str, list[ImportStmt] | str] = {}

    def statements(self, rel: str) -> list[ImportStmt] | str:
        """The file's import statements, or a string saying why it could not be read."""
        if rel not in self._stmts:
            self._stmts[rel] = self._scan(rel)
        return self._stmts[rel]

    def _scan(self, rel: str) -> list[ImportStmt] | str:
        try:
            src = (self.root / rel).read_bytes()
            tree = ast.parse(src, filename=rel)
        except SyntaxError as e:
            return f"syntax error at line {e.lineno}: {e.msg}"
        except (OSError, ValueError) as e:
            return f"unreadable: {e}"
        lines = src.decode("utf-8", "replace").splitlines()
        package = rel.rpartition("/")[0]
        out: list[ImportStmt] = []

        def text(node: ast.AST) -> str:
            ln = getattr(node, "lineno", 0)
            return lines[ln - 1].strip()[:120] if 0 < ln <= len(lines) else ""

        def visit(node: ast.AST, ctx: tuple[str, ...]) -> None:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    out.append(ImportStmt(node.lineno, "import", 0, text(node),
                                          [(alias.name.replace(".", "/"), "module")], False, False, ctx))
            elif isinstance(node, ast.ImportFrom):
                mod = (node.module or "").replace(".", "/")
                if node.level == 0:
                    base, beyond = mod, False
                else:
                    pkg, beyond = package, False
                    for _ in range(node.level - 1):
                        if not pkg:
                            beyond = True
                            break
                        pkg = pkg.rpartition("/")[0]
                    base = "/".join(p for p in (pkg, mod) if p)
                targets = [(base, "module")] + [(f"{base}/{a.name}" if base else a.name, "name")
                                                for a in node.names if a.name != "*"]
                out.append(ImportStmt(node.lineno, "from", node.level, text(node), targets,
                                      node.level > 0, beyond, ctx))
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if (name in ("import_module", "__import__") and node.args
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    lit = node.args[0].value
                    dots = len(lit) - len(lit.lstrip("."))
                    if dots == 0:
                        out.append(ImportStmt(node.lineno, "dynamic", 0, text(node),
                                              [(lit.replace(".", "/"), "dynamic")], False, False, ctx))
                    else:
                        # import_module(".x", package): relative to `package`, a run-time value;
                        # recorded as if relative to the importer, to explain edges made that way.
                        pkg = package
                        for _ in range(dots - 1):
                            pkg = pkg.rpartition("/")[0]
                        rest = lit[dots:].replace(".", "/")
                        out.append(ImportStmt(node.lineno, "dynamic-relative", dots, text(node),
                                              [("/".join(x for x in (pkg, rest) if x), "dynamic")],
                                              True, False, ctx))
            # Children, with the context they run in.
            if isinstance(node, ast.If):
                t = ast.unparse(node.test)
                inner = ctx + (("TYPE_CHECKING",) if "TYPE_CHECKING" in t else ("conditional",))
                visit(node.test, ctx)
                for c in node.body:
                    visit(c, inner)
                for c in node.orelse:
                    visit(c, ctx + ("conditional",))
                return
            if isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                for c in node.body:
                    visit(c, ctx + ("try",))
                for h in node.handlers:
                    visit(h, ctx + ("except",))
                for c in node.orelse + node.finalbody:
                    visit(c, ctx)
                return
            inner = ctx
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = ctx + ("function",)
            elif isinstance(node, ast.ClassDef):
                inner = ctx + ("class",)
            for c in ast.iter_child_nodes(node):
                visit(c, inner)

        visit(tree, ())
        return out


def module_stem(path: str) -> str:
    """'a/b/c.py' -> 'a/b/c'; 'a/b/__init__.py' -> 'a/b'."""
    return path.rsplit(".", 1)[0].removesuffix("/__init__")


@dataclass
class Match:
    stmt: ImportStmt
    kind: str  # exact | parent | dynamic
    how: str  # module | name | dynamic
    root: str  # the directory the module was found under ("" = the tree's root); "rel" for relative


def matches(stmts: list[ImportStmt], dep: str, roots: set[str] | None = None) -> list[Match]:
    """The statements of a file that can make it depend on `dep`, exact ones first; absolute
    imports count only when found under one of `roots` (any directory when None)."""
    stem = module_stem(dep)
    parts = stem.split("/")
    suffixes = ["/".join(parts[i:]) for i in range(len(parts))]  # longest first
    out: list[Match] = []
    for s in stmts:
        for target, how in s.targets:
            if s.relative:
                if target == stem:
                    out.append(Match(s, "dynamic" if how == "dynamic" else "exact", how, "rel"))
                elif target.startswith(stem + "/") or (stem == "" and target):
                    out.append(Match(s, "parent", how, "rel"))
                continue
            for suf in suffixes:
                root = stem[: len(stem) - len(suf)].rstrip("/")
                if roots is not None and root not in roots:
                    continue
                if target == suf:
                    out.append(Match(s, "dynamic" if how == "dynamic" else "exact", how, root))
                elif target.startswith(suf + "/"):
                    out.append(Match(s, "parent", how, root))
    order = {"exact": 0, "dynamic": 1, "parent": 2}
    out.sort(key=lambda m: (order[m.kind], m.root != "", m.stmt.line))
    return out


def base_dir(path: str, files: set[str]) -> str:
    """First ancestor directory without __init__.py (where pytest's prepend mode starts)."""
    d = path.rpartition("/")[0]
    while d and (f"{d}/__init__.py" in files or f"{d}/__init__.pyi" in files):
        d = d.rpartition("/")[0]
    return d


def context_class(stmt: ImportStmt) -> str | None:
    for c in ("TYPE_CHECKING", "try", "except", "function", "conditional", "class"):
        if c in stmt.context:
            return {"TYPE_CHECKING": "under `if TYPE_CHECKING:`", "try": "inside try/except",
                    "except": "inside an except handler", "function": "inside a function",
                    "conditional": "under another `if`", "class": "inside a class body"}[c]
    return None


def submodule_names(m: Match, files: set[str]) -> list[str]:
    """For `from pkg import a, b`: the names that are submodules (files) of pkg, under m's root."""
    out = []
    for target, how in m.stmt.targets:
        if how != "name":
            continue
        path = target if m.stmt.relative else "/".join(x for x in (m.root, target) if x)
        if any(c in files for c in (f"{path}.py", f"{path}/__init__.py", f"{path}.pyi")):
            out.append(target.rpartition("/")[2])
    return out


def classify_missing(a: str, b: str, src: SourceIndex, ciopt_roots: list[str], files: set[str],
                     ciopt_deps: set[str]) -> tuple[str, Match | None]:
    """Why ciopt lacks an edge a -> b that the peer has."""
    stmts = src.statements(a)
    if isinstance(stmts, str):
        return f"importer does not parse ({stmts.split(':')[0]})", None
    roots_a = {base_dir(a, files), *ciopt_roots}
    found = matches(stmts, b, roots_a) or matches(stmts, b)
    if not found:
        return "no import statement in the importer names the dependency", None
    m = found[0]
    if m.kind == "parent":
        return "peer adds a parent package the import runs through", m
    if m.stmt.beyond_top:
        return "relative import beyond the top-level package", m
    if b.endswith(".pyi"):
        return "peer resolves to a .pyi stub", m
    if m.kind == "dynamic":
        return "importlib/__import__ string literal", m
    if not m.stmt.relative and m.root not in roots_a:
        target = next(t for t, _ in m.stmt.targets)
        elsewhere = sorted(d for d in ciopt_deps if module_stem(d).endswith(target))
        where = (f"; ciopt resolved it to {elsewhere[0]}" if elsewhere
                 else "; ciopt: not in the tree under the importer's roots (third-party)")
        return (f"source root: the peer resolves it under `{m.root or '.'}/`, which Python does not "
                f"search for this file{where}"), m
    if m.how == "name":
        return "`from m import name` where name is a submodule", m
    ctx = context_class(m.stmt)
    return (f"import {ctx}" if ctx else "plain import, not resolved by ciopt"), m


def classify_extra(a: str, b: str, src: SourceIndex, ciopt_roots: list[str], files: set[str],
                   tests: set[str], peer_deps: set[str]) -> tuple[str, Match | None]:
    """Why ciopt has an edge a -> b that the peer lacks."""
    if b.rpartition("/")[2] == "conftest.py" and a in tests:
        return "conftest.py above a test (pytest loads it)", None
    stmts = src.statements(a)
    if isinstance(stmts, str):
        return ("importer has a syntax error: ciopt's tree-sitter parse still reads its imports, "
                "the peer skips the file"), None
    found = matches(stmts, b, {base_dir(a, files), *ciopt_roots})
    if not found:
        return "no import statement in the importer names the dependency", None
    m = found[0]
    if m.stmt.form == "dynamic-relative":
        return ("import_module('.x', package) taken relative to the importer's own package "
                "(the run-time `package` argument is ignored)"), m
    if m.kind == "parent":
        return "parent package __init__ (importing a.b.c runs a/__init__.py, a/b/__init__.py)", m
    if m.kind == "dynamic":
        return "importlib/__import__ string literal (ruff: only with --detect-string-imports)", m
    if b.endswith(".pyi"):
        return "ciopt also depends on the .pyi stub", m
    if m.stmt.form == "from" and m.how == "module" and submodule_names(m, files):
        return ("`from pkg import submodule`: Python runs pkg/__init__.py too; the peer records only "
                "the submodule"), m
    if any(keyword.iskeyword(part) for part in module_stem(b).split("/")):
        return "module inside a package named after a Python keyword (e.g. tests/async/)", m
    target = next(t for t, _ in m.stmt.targets)
    shadow = sorted(d for d in peer_deps if module_stem(d).endswith(target) and d != b)
    if shadow:
        return f"source root: the peer resolved the same name to {shadow[0]}", m
    if m.root not in ("", "rel") and not m.stmt.relative:
        return f"resolved under the importer's base directory `{m.root}/`", m
    if m.how == "name":
        return "`from m import name` where name is a submodule", m
    ctx = context_class(m.stmt)
    return (f"import {ctx}" if ctx else "plain import the peer did not resolve"), m


def classified_notes(rows: list[tuple[str, str, str, Match | None]], total: int,
                     per_class: int = 5) -> list[str]:
    """Class lines (count, share) each followed by up to `per_class` examples with file:line."""
    by: dict[str, list[tuple[str, str, Match | None]]] = defaultdict(list)
    for cls, a, b, m in rows:
        by[cls].append((a, b, m))
    out: list[str] = []
    for cls, items in sorted(by.items(), key=lambda kv: -len(kv[1])):
        out.append(f"{len(items):6d}  {cls}" + (f"  ({100 * len(items) / total:.2f}%)" if total else ""))
        for a, b, m in items[:per_class]:
            where = f"{a}:{m.stmt.line}" if m else a
            code = f"   `{m.stmt.text}`" if m else ""
            out.append(f"          {where} -> {b}{code}")
    return out


def compare_edges(name: str, peer_name: str, target_pct: float, peer_edges: dict[str, set[str]],
                  ciopt_edges: dict[str, set[str]], scope: Callable[[str], bool], root: Path,
                  ciopt_roots: list[str], tests: set[str], results: list[Result],
                  notes: dict[str, Any] | None = None) -> None:
    src = SourceIndex(root)
    files = {str(p.relative_to(root)) for p in root.rglob("*.py*")}
    peer_total = sum(len(v) for a, v in peer_edges.items() if scope(a))
    missing: list[tuple[str, str, str, Match | None]] = []
    for a in sorted(peer_edges):
        if not scope(a):
            continue
        for b in sorted(peer_edges[a]):
            if b not in ciopt_edges.get(a, ()):
                cls, m = classify_missing(a, b, src, ciopt_roots, files, ciopt_edges.get(a, set()))
                missing.append((cls, a, b, m))
    extra: list[tuple[str, str, str, Match | None]] = []
    ciopt_total = 0
    for a in sorted(ciopt_edges):
        if not scope(a) or a not in peer_edges and not a.endswith((".py", ".pyi")):
            continue
        for b in sorted(ciopt_edges[a]):
            if not scope(b) or not b.endswith((".py", ".pyi")):
                continue
            ciopt_total += 1
            if b not in peer_edges.get(a, ()):
                cls, m = classify_extra(a, b, src, ciopt_roots, files, tests, peer_edges.get(a, set()))
                extra.append((cls, a, b, m))
    found = peer_total - len(missing)
    pct = 100 * found / peer_total if peer_total else 0.0
    r = Result(name, peer_name, f"target >= {target_pct:g}%")
    r.summary = (f"{peer_name} {peer_total} edges, found by ciopt {found} ({pct:.2f}%); "
                 f"ciopt {ciopt_total} edges in the same files, {len(extra)} of them not in {peer_name}")
    r.extra.update(met=pct >= target_pct, peer_edges=peer_total, found=found, pct=pct,
                   ciopt_edges=ciopt_total, ciopt_only=len(extra),
                   missing_classes=dict(Counter(c for c, *_ in missing)),
                   extra_classes=dict(Counter(c for c, *_ in extra)))
    if notes:
        r.notes.update(notes)
    r.notes[f"edges {peer_name} has that ciopt lacks: {len(missing)}"] = (
        classified_notes(missing, peer_total) or ["none"])
    r.notes[f"edges ciopt has that {peer_name} lacks: {len(extra)}"] = (
        classified_notes(extra, ciopt_total) or ["none"])
    emit(r, results)


def bench_edges_django(cfg: Config, results: list[Result]) -> None:
    root = django_workspace()
    store = fresh_store()
    try:
        _, graph = Ciopt(store).json(root, "graph")
    finally:
        shutil.rmtree(store, ignore_errors=True)
    ciopt_edges = {a: set(bs) for a, bs in graph["files"].items()}
    tests = set(graph["test_files"])
    roots = list(graph["source_roots"])

    proc = subprocess.run(ruff_graph_argv(), check=False, cwd=root, capture_output=True, timeout=CMD_TIMEOUT_S)
    if proc.returncode != 0:
        raise ChildFailed(f"ruff analyze graph exited {proc.returncode}: {proc.stderr[-500:]!r}")
    ruff_edges = {a: set(bs) for a, bs in json.loads(proc.stdout).items()}
    ruff_warnings = [w for w in proc.stderr.decode(errors="replace").splitlines()
                     if "Failed" in w or "error" in w.lower()]
    notes: dict[str, Any] = {
        "files": f"ruff {len(ruff_edges)} Python files; ciopt {len(ciopt_edges)} files "
                 f"(JS/shell/Dockerfiles included), {len(tests)} test files, source roots {roots}",
        "counted as found": "ruff edge a -> b with b among ciopt's deps of a",
    }
    if ruff_warnings:
        notes["ruff warnings"] = [w[:200] for w in ruff_warnings[:5]]
    compare_edges("edges_django_vs_ruff", "ruff", 99.0, ruff_edges, ciopt_edges,
                  lambda p: p.endswith((".py", ".pyi")), root, roots, tests, results, notes)

    # grimp: module graph of the `django` package, imported from the tree itself.
    import grimp

    sys.path.insert(0, str(root))
    try:
        for mod in [m for m in sys.modules if m == "django" or m.startswith("django.")]:
            del sys.modules[mod]
        t0 = time.perf_counter()
        g = grimp.build_graph("django", include_external_packages=False, cache_dir=None)
        grimp_s = time.perf_counter() - t0
    finally:
        sys.path.remove(str(root))

    def module_file(m: str) -> str | None:
        p = m.replace(".", "/")
        for c in (f"{p}/__init__.py", f"{p}.py", f"{p}/__init__.pyi", f"{p}.pyi"):
            if (root / c).is_file():
                return c
        return None

    grimp_edges: dict[str, set[str]] = {}
    unmapped = 0
    for m in g.modules:
        fa = module_file(m)
        if fa is None:
            unmapped += 1
            continue
        deps = grimp_edges.setdefault(fa, set())
        for d in g.find_modules_directly_imported_by(m):
            fb = module_file(d)
            if fb is None:
                unmapped += 1
            else:
                deps.add(fb)
    notes = {
        "scope": f"the `django` package: {len(g.modules)} modules (grimp build {grimp_s:.3f} s, "
                 f"in process, no cache); ciopt's edges restricted to django/ -> django/",
        "mapping": "module -> its file (package -> __init__.py)"
                   + (f"; {unmapped} module(s) without a file" if unmapped else ""),
    }
    compare_edges("edges_django_vs_grimp", "grimp", 99.0, grimp_edges, ciopt_edges,
                  lambda p: p.startswith("django/") and p.endswith((".py", ".pyi")), root, roots,
                  tests, results, notes)


# --- 4: affected, one file, warm -----------------------------------------------------------------

def closure_tests(dependents: dict[str, list[str]], changed: Iterable[str], tests: set[str]) -> set[str]:
    seen = set(changed)
    todo = deque(seen)
    while todo:
        f = todo.popleft()
        for d in dependents.get(f, ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen & tests


def bench_affected_django(cfg: Config, results: list[Result]) -> None:
    root = django_workspace()
    edit = root / DJANGO_EDIT
    original = edit.read_bytes()
    st = edit.stat()
    store = fresh_store()
    try:
        ciopt = Ciopt(store)
        _, graph = ciopt.json(root, "graph")  # fills the store: extraction and the clean graph
        tests = set(graph["test_files"])
        edit.write_bytes(original + b"\n# infer_bench: one-file change\n")
        _, first = ciopt.json(root, "affected", "--base", "HEAD")  # warm-up: the changed tree

        def peer() -> set[str]:
            _, out = run(ruff_graph_argv("--direction", "dependents"), cwd=root, capture=True)
            return closure_tests(json.loads(out), [DJANGO_EDIT], tests)

        ours_t: list[float] = []
        peer_t: list[float] = []
        doc: dict[str, Any] = first
        peer_sel: set[str] = set()
        for _ in range(cfg.repeat):
            t, doc = ciopt.json(root, "affected", "--base", "HEAD")
            ours_t.append(t)
            t0 = time.perf_counter()
            peer_sel = peer()
            peer_t.append(time.perf_counter() - t0)
    finally:
        edit.write_bytes(original)
        os.utime(edit, ns=(st.st_atime_ns, st.st_mtime_ns))
        shutil.rmtree(store, ignore_errors=True)
    clean = not git(root, "status", "--porcelain").strip()

    r = fill(Result("affected_django_one_file_warm",
                    "ruff analyze graph --direction dependents + closure (process + Python)",
                    "target ours < 0.5 s"), ours_t, peer_t)
    ours_sel = set(doc["test_files"])
    r.extra["met"] = r.ours_s is not None and r.ours_s < 0.5
    r.notes["ours wall"] = f"{r.ours_s:.3f} s {'<' if r.extra['met'] else '>='} 0.5 s"
    r.notes["change"] = f"a comment appended to {DJANGO_EDIT} (uncommitted), --base HEAD"
    r.notes["selected"] = (f"{len(ours_sel)} of {len(tests)} test files "
                           f"(pytest's rules: test_*.py, *_test.py; Django's own runner also "
                           f"collects tests.py), all={doc['all']}, changed={doc['changed_files']}")
    r.notes["ruff-based selection"] = (
        f"{len(peer_sel)} test files; in ruff's not ciopt's: {len(peer_sel - ours_sel)}"
        + (f" e.g. {sorted(peer_sel - ours_sel)[:3]}" if peer_sel - ours_sel else "")
        + f"; in ciopt's not ruff's: {len(ours_sel - peer_sel)}"
        + (f" e.g. {sorted(ours_sel - peer_sel)[:3]}" if ours_sel - peer_sel else ""))
    r.notes["samples ours / peer"] = f"{fmt_samples(ours_t)} / {fmt_samples(peer_t)}"
    r.notes["tree restored"] = "yes, git status clean" if clean else "NO: git status not clean"
    emit(r, results)


# --- 5: replay -----------------------------------------------------------------------------------

def pytest_python_files(root: Path) -> tuple[str, ...]:
    """pytest's `python_files` for the checkout at `root`, by pytest's own config precedence."""
    for name in PYTEST_CONFIGS:
        p = root / name
        if not p.is_file():
            continue
        try:
            if name == "pyproject.toml":
                opts = tomllib.loads(p.read_text()).get("tool", {}).get("pytest", {}).get("ini_options")
                if opts is None:
                    continue
                v = opts.get("python_files")
                return tuple(v.split() if isinstance(v, str) else v) if v else ("test_*.py", "*_test.py")
            cp = configparser.ConfigParser(interpolation=None)
            cp.read(p)
            section = "tool:pytest" if name == "setup.cfg" else "pytest"
            if not cp.has_section(section):
                if name == "pytest.ini":
                    return ("test_*.py", "*_test.py")
                continue
            v = cp.get(section, "python_files", fallback="")
            return tuple(v.split()) or ("test_*.py", "*_test.py")
        except (OSError, ValueError, configparser.Error, tomllib.TOMLDecodeError):
            continue
    return ("test_*.py", "*_test.py")


NORECURSE = (".*", "*.egg", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}")


def discover_tests(paths: Iterable[str], patterns: tuple[str, ...]) -> set[str]:
    out = set()
    for p in paths:
        parts = p.split("/")
        if not p.endswith(".py") or any(fnmatch.fnmatchcase(d, n) for d in parts[:-1] for n in NORECURSE):
            continue
        if any(fnmatch.fnmatchcase(parts[-1], pat) for pat in patterns):
            out.add(p)
    return out


class Oracle:
    """Runs one test file under pytest at the checked-out commit and records the project files in
    sys.modules at session end. A recording is reused at a later commit when every file it holds
    has the same content there, the set of module paths in the tree is the same (import resolution
    sees only those) and so are pytest's configuration files: then the run would execute the same
    code. Recordings persist across bench runs in benches/.corpus/replay-<name>.oracle.json."""

    def __init__(self, root: Path, python: Path, cache_file: Path) -> None:
        self.root = root
        self.python = python
        self.cache_file = cache_file
        probe = "import sys, pytest; print(sys.version.split()[0], pytest.__version__)"
        ver = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
        self.version = ver.stdout.strip()
        SCRATCH.mkdir(parents=True, exist_ok=True)
        self.plugin_dir = Path(tempfile.mkdtemp(prefix="oracle-", dir=SCRATCH))
        (self.plugin_dir / "oracle_plugin.py").write_text(ORACLE_PLUGIN)
        self.cache: dict[str, list[dict[str, Any]]] = {}
        if cache_file.exists():
            try:
                data = json.loads(cache_file.read_text())
                if data.get("version") == self.version and data.get("plugin") == ORACLE_PLUGIN:
                    self.cache = data["tests"]
            except (OSError, ValueError, KeyError):
                pass
        self.runs = self.reused = 0
        self.run_s = 0.0

    def save(self) -> None:
        tmp = self.cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": self.version, "plugin": ORACLE_PLUGIN, "tests": self.cache}))
        tmp.replace(self.cache_file)

    def record(self, test: str, blobs: dict[str, str], listing: str, config: str) -> dict[str, Any]:
        """{"files": {path: blob}, "rc": int, "tail": str} for `test` in the current checkout."""
        for entry in self.cache.get(test, ()):
            if (entry["listing"] == listing and entry["config"] == config
                    and all(blobs.get(p) == b for p, b in entry["files"].items())):
                self.reused += 1
                return entry
        out = self.plugin_dir / "out.json"
        out.unlink(missing_ok=True)
        env = {**os.environ, "ORACLE_ROOT": str(self.root.resolve()), "ORACLE_OUT": str(out),
               "PYTHONPATH": str(self.plugin_dir), "PYTHONDONTWRITEBYTECODE": "1"}
        for k in ("CIOPT_CACHE_DIR", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "VIRTUAL_ENV"):
            env.pop(k, None)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(["nice", "-n", "10", str(self.python), "-m", "pytest", "-q",
                                   "-p", "oracle_plugin", "-p", "no:cacheprovider", test],
                                  check=False, cwd=self.root, env=env, capture_output=True,
                                  timeout=ORACLE_TIMEOUT_S)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")[-600:]
        except subprocess.TimeoutExpired:
            rc, tail = -1, f"timed out after {ORACLE_TIMEOUT_S} s"
        self.run_s += time.perf_counter() - t0
        self.runs += 1
        recorded = json.loads(out.read_text()) if out.exists() else None
        entry = {"listing": listing, "config": config, "rc": rc, "tail": tail,
                 "recorded": recorded is not None,
                 "files": {p: blobs.get(p, "?") for p in (recorded or [])}}
        if recorded is not None and all(p in blobs for p in recorded) and rc != -1:
            self.cache.setdefault(test, []).append(entry)
        return entry

    def close(self) -> None:
        self.save()
        shutil.rmtree(self.plugin_dir, ignore_errors=True)


def tree_blobs(root: Path, commit: str) -> dict[str, str]:
    out = {}
    for line in git(root, "ls-tree", "-r", "-z", commit).split("\0"):
        if line:
            meta, path = line.split("\t", 1)
            out[path] = meta.split()[2]
    return out


def replay_source(cfg: Config) -> str:
    if cfg.replay_source:
        return cfg.replay_source
    for s in REPLAY_SOURCES:
        if "://" in s or Path(s).exists():
            return s
    return REPLAY_SOURCES[-1]


def bench_replay_history(cfg: Config, results: list[Result]) -> None:
    name = "replay_history"
    t_start = time.perf_counter()
    root = corpus.replay_repo(REPLAY_NAME, replay_source(cfg), REPLAY_HEAD)
    corpus.mark_workspace(root)
    python = corpus.pytest_venv("oracle-venv", ORACLE_PYTEST)
    chain = git(root, "rev-list", "--first-parent", f"--max-count={cfg.commits + 1}",
                REPLAY_HEAD).split()
    commits = [c for c in reversed(chain[:cfg.commits])]  # oldest first: the cache fills forward
    oracle = Oracle(root, python, corpus.CORPUS / f"replay-{REPLAY_NAME}.oracle.json")
    store = fresh_store()
    ciopt = Ciopt(store)

    per_commit: list[dict[str, Any]] = []
    misses: list[dict[str, Any]] = []
    affected_t: list[float] = []
    fractions: list[float] = []
    counts = Counter()
    ciopt_test_mismatch: list[str] = []
    oracle_self: Counter[bool] = Counter()
    try:
        for i, c in enumerate(commits):
            parents = git(root, "rev-list", "--parents", "-n", "1", c).split()[1:]
            if not parents:
                counts["root commit (no parent)"] += 1
                continue
            p = parents[0]
            git(root, "-c", "advice.detachedHead=false", "checkout", "-q", "-f", "--detach", c)
            git(root, "clean", "-fdxq", "-e", f"/{corpus.WORKSPACE_MARKER}")
            rec: dict[str, Any] = {"commit": c, "parent": p, "merge": len(parents) > 1,
                                   "subject": git(root, "log", "-1", "--format=%s", c).strip()[:80]}
            per_commit.append(rec)
            try:
                t, doc = ciopt.json(root, "affected", "--base", p, "--head", c)
            except ChildFailed as e:
                rec["ciopt_error"] = str(e)[-400:]
                counts["ciopt affected failed"] += 1
                continue
            affected_t.append(t)
            blobs = tree_blobs(root, c)
            tests = discover_tests(blobs, pytest_python_files(root))
            selected = set(doc["test_files"])
            if not tests:
                counts["no test files"] += 1
                continue
            if i == 0 or i == len(commits) - 1:
                _, g = ciopt.json(root, "graph")
                ours = {t for t in g["test_files"] if t.endswith(".py")}
                if ours != tests:
                    ciopt_test_mismatch.append(f"{c[:10]}: ciopt only {sorted(ours - tests)[:3]}, "
                                               f"pytest rules only {sorted(tests - ours)[:3]}")
            frac = 1 - len(selected & tests) / len(tests)
            fractions.append(frac)
            changed_here = [f for f in doc["changed_files"] if f in blobs]
            module_changes = {f for f in changed_here if f.endswith(MODULE_SUFFIXES)}
            rec.update(changed=doc["changed_files"], selected=len(selected & tests), tests=len(tests),
                       skipped=round(frac, 4), all=doc["all"], affected_s=round(t, 4))
            if doc["all"]:
                counts["global input changed (all selected)"] += 1
                continue
            if not module_changes:
                counts["no module file changed (no miss possible)"] += 1
                continue
            listing = hashlib.sha1("\n".join(sorted(
                f for f in blobs if f.endswith(MODULE_SUFFIXES))).encode()).hexdigest()
            config = hashlib.sha1(repr([blobs.get(n) for n in PYTEST_CONFIGS]).encode()).hexdigest()
            unselected = sorted(tests - selected)
            ok_runs = 0
            for test in unselected:
                entry = oracle.record(test, blobs, listing, config)
                # A recording without the test module itself means the recorder saw nothing.
                oracle_self[test in entry["files"]] += 1
                if entry["rc"] in (0, 1, 5) and entry["recorded"]:
                    ok_runs += 1
                else:
                    rec.setdefault("oracle_failed", []).append(
                        {"test": test, "rc": entry["rc"], "tail": entry["tail"][-300:]})
                hit = sorted(module_changes & set(entry["files"]))
                if hit:
                    misses.append({"commit": c, "parent": p, "test": test, "files": hit,
                                   "chain_expected": f"{test} imported {hit} at {c[:10]}",
                                   "oracle_rc": entry["rc"]})
            if unselected and ok_runs == 0:
                counts["broken (no unselected test could run)"] += 1
                rec["broken"] = True
            else:
                counts["checked by the oracle"] += 1
            if oracle.runs and oracle.runs % 25 == 0:
                oracle.save()
    finally:
        oracle.close()
        git(root, "-c", "advice.detachedHead=false", "checkout", "-q", "-f", "--detach", REPLAY_HEAD)
        git(root, "clean", "-fdxq", "-e", f"/{corpus.WORKSPACE_MARKER}")
        shutil.rmtree(store, ignore_errors=True)
    elapsed = time.perf_counter() - t_start

    done = len(fractions)
    mean_skip = statistics.fmean(fractions) if fractions else 0.0
    r = Result(name, "dynamic oracle (pytest + sys.modules)", "target misses == 0")
    r.summary = (f"commits {done}, mean fraction of test files skipped {mean_skip:.3f}, "
                 f"misses {len(misses)}")
    r.extra.update(met=not misses, commits=done, requested=cfg.commits, mean_skipped=mean_skip,
                   misses=misses, counts=dict(counts), per_commit=per_commit,
                   affected_samples=affected_t)
    first = per_commit[0]["commit"] if per_commit else "?"
    dates = git(root, "log", "-1", "--format=%ci", first).strip() if per_commit else "?"
    r.notes["repository"] = (f"{REPLAY_NAME} ({replay_source(cfg)}), first-parent history, "
                             f"{first[:10]} ({dates}) .. {REPLAY_HEAD[:10]} "
                             f"({git(root, 'log', '-1', '--format=%ci', REPLAY_HEAD).strip()})")
    r.notes["commits"] = (f"{len(per_commit)} replayed of {cfg.commits} requested; "
                          + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if fractions:
        all_count = sum(1 for x in per_commit if x.get("all"))
        r.notes["fraction skipped"] = (
            f"mean {mean_skip:.3f}, median {statistics.median(fractions):.3f}; "
            f"{sum(1 for f in fractions if f == 0)} commits ran everything "
            f"({all_count} of them for a global input)")
        lst = [x for x in per_commit if x.get("all")]
        if lst:
            why = Counter(tuple(sorted(f for f in x["changed"] if "/" not in f or f.startswith("config")))
                          for x in lst)
            r.notes["global inputs that changed"] = ", ".join(
                f"{'+'.join(k) or '?'} x{v}" for k, v in why.most_common(6))
    if affected_t:
        q = sorted(affected_t)
        r.notes["ciopt affected per commit"] = (
            f"median {statistics.median(q):.3f} s, p90 {q[int(0.9 * (len(q) - 1))]:.3f} s, "
            f"max {q[-1]:.3f} s (first, empty store: {affected_t[0]:.3f} s)")
    failed_runs = [(x["commit"], f) for x in per_commit for f in x.get("oracle_failed", ())]
    r.notes["oracle"] = (f"pytest {oracle.version.split()[1]} on Python {oracle.version.split()[0]}; "
                         f"{oracle.runs} test-file runs ({oracle.run_s:.0f} s), {oracle.reused} recordings "
                         f"reused; {len(failed_runs)} runs could not import/collect; "
                         f"{oracle_self[True]} of {sum(oracle_self.values())} recordings hold their own "
                         f"test module (sanity)")
    if failed_runs:
        by_test = Counter(f["test"] for _, f in failed_runs)
        r.notes["oracle runs that failed (test: count), first tail"] = [
            f"{t}: {n}" for t, n in by_test.most_common(5)] + [
            next((ln for ln in reversed(failed_runs[0][1]["tail"].splitlines()) if "Error" in ln),
                 failed_runs[0][1]["tail"].strip().splitlines()[-1])[:200]]
    if ciopt_test_mismatch:
        r.notes["ciopt test_files differ from pytest's rules"] = ciopt_test_mismatch
    if misses:
        r.notes["misses"] = [f"{m['commit'][:10]} (parent {m['parent'][:10]}): {m['test']} "
                             f"imported changed {m['files']} but was not selected" for m in misses[:20]]
    r.notes["time"] = f"{elapsed:.0f} s for the replay"
    emit(r, results)


# --- main ----------------------------------------------------------------------------------------

BENCHES: dict[str, Callable[[Config, list[Result]], None]] = {
    "graph_django_cold_vs_ruff+graph_django_warm_vs_ruff": bench_graph_django,
    "edges_django_vs_ruff+edges_django_vs_grimp": bench_edges_django,
    "affected_django_one_file_warm": bench_affected_django,
    "replay_history": bench_replay_history,
}


def machine_context(cfg: Config) -> dict[str, Any]:
    return {
        **harness.machine_basics(),
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
        "ciopt": tool_version([str(CIOPT_CLI), "--version"]) if CIOPT_CLI.exists() else "not installed",
        "ruff": tool_version([str(RUFF), "--version"]),
        "grimp": harness.dist_version("grimp"),
        "git": tool_version(["git", "--version"]),
        "repeat": cfg.repeat,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    harness.add_common_args(ap, (n for k in BENCHES for n in k.split("+")),
                            " (cold and warm run together, and so do ruff and grimp)")
    ap.add_argument("--commits", type=int, default=200, help="replay_history: commits to replay")
    ap.add_argument("--replay-source", metavar="GIT",
                    help=f"replay_history: where to clone {REPLAY_NAME} from (default: the first of "
                         f"{', '.join(REPLAY_SOURCES)} that exists); must hold {REPLAY_HEAD[:12]}")
    args = ap.parse_args(argv)

    selected = harness.select(BENCHES, args.only)
    if not selected:
        ap.error("--only matched no bench")
    if not CIOPT_CLI.exists():
        ap.error(f"{CIOPT_CLI} not installed (make dev)")
    if not RUFF.exists():
        ap.error(f"{RUFF} not installed: .venv/bin/pip install ruff")
    cfg = Config(repeat=harness.repetitions(args), commits=max(1, args.commits),
                 replay_source=args.replay_source)
    machine = machine_context(cfg)
    harness.print_machine(machine)

    try:
        results = harness.run_benches(BENCHES, selected, cfg)
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    return harness.finish(args.json, machine, results)


if __name__ == "__main__":
    sys.exit(main())
