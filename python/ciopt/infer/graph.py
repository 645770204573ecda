"""The file-level dependency graph of a workspace, inferred from source.

Nodes are workspace-relative files; an edge a -> b means running or importing `a` may
execute or read `b`. Python edges come from imports (every form, weak and TYPE_CHECKING
ones included: safety over precision), package `__init__` files on the way, and the
conftest.py files pytest loads for a test. JS/TS, shell `source` and Dockerfile COPY/ADD
add their own edges.

The whole graph is cached under the digest of (the source tree, the settings, the files
treated as present): a warm `ciopt graph` or `ciopt affected` only walks the tree.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from ciopt import Digest, Store, hash_bytes
from ciopt._native import IMPORT_UNRESOLVED
from ciopt.infer.extract import extract_cached
from ciopt.graph.label import Label
from ciopt.graph.target import BUILD_FILE_NAMES, Location, TargetDecl
from ciopt.graph.target_graph import SourceTree, scan_sources
from ciopt.infer.targets import InferredTarget
from ciopt.infer.resolve import ModuleIndex, PythonResolver, conftests_for, detect_source_roots, read_pytest_settings

GRAPH_CACHE_VERSION = "ciopt-file-graph-v1"
JS_SUFFIXES = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx")
SHELL_SUFFIXES = (".sh", ".bash")
JS_TEST_PATTERNS = ("*.test.*", "*.spec.*")


@dataclass
class FileGraph:
    edges: dict[str, list[str]]  # file -> files it depends on (sorted)
    test_files: list[str]  # files a test runner collects (pytest's python_files, *.test.js, ...)
    unresolved: list[tuple[str, int, str]]  # (file, line, expression) of dynamic imports we cannot follow
    external: dict[str, list[str]]  # file -> third-party top-level modules it imports
    source_roots: list[str]
    _reverse: dict[str, list[str]] | None = field(default=None, repr=False)

    def reverse(self) -> dict[str, list[str]]:
        if self._reverse is None:
            rev: dict[str, list[str]] = {}
            for f, deps in self.edges.items():
                for d in deps:
                    rev.setdefault(d, []).append(f)
            self._reverse = rev
        return self._reverse

    def dependents(self, changed: Iterable[str]) -> dict[str, str | None]:
        """Every file that transitively depends on a changed file (changed files included),
        mapped to the next file on its path toward the change (None for the changes)."""
        rev = self.reverse()
        via: dict[str, str | None] = {c: None for c in changed}
        queue = deque(via)
        while queue:
            f = queue.popleft()
            for parent in rev.get(f, ()):
                if parent not in via:
                    via[parent] = f
                    queue.append(parent)
        return via

    def to_json(self) -> dict[str, object]:
        return {
            "files": self.edges,
            "test_files": self.test_files,
            "unresolved": [{"file": f, "line": l, "expression": e} for f, l, e in self.unresolved],
            "external": self.external,
            "source_roots": self.source_roots,
        }

    def encode(self) -> bytes:
        return msgpack.packb([self.edges, self.test_files, self.unresolved, self.external, self.source_roots])

    @classmethod
    def decode(cls, raw: bytes) -> FileGraph:
        edges, tests, unresolved, external, roots = msgpack.unpackb(raw)
        return cls(edges, tests, [tuple(u) for u in unresolved], external, roots)  # type: ignore[misc]


def is_python_test(path: str, patterns: Iterable[str]) -> bool:
    name = path.rpartition("/")[2]
    return path.endswith(".py") and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def build_file_graph(root: Path, files: Mapping[str, Digest], store: Store | None,
                     source_roots: tuple[str, ...] | None = None, virtual: Iterable[str] = (),
                     within: str = "") -> FileGraph:
    """The graph of `files` (path -> digest). `virtual` files are treated as present but empty:
    deleted files, so that what imported them still depends on them.

    `within` (a workspace-relative directory or file; "" = everything) restricts the files
    analysed, as `ruff analyze graph PATH` does, while imports still resolve against every
    file and the workspace's source roots: a file's edges are the same as in the whole graph."""
    settings = read_pytest_settings(root)
    all_files = frozenset(files) | frozenset(virtual)
    roots = source_roots if source_roots is not None else detect_source_roots(root, all_files, settings)
    within = within.strip("/")
    key = None
    if store is not None:
        tree = "\n".join(f"{p}\0{files[p]}" for p in sorted(files))
        parts = [GRAPH_CACHE_VERSION, tree, "\n".join(sorted(virtual)), repr(roots), repr(settings)]
        key = hash_bytes("\0".join(parts + ([within] if within else [])).encode()).hash
        raw = store.action_get(key)
        if raw is not None:
            return FileGraph.decode(raw)
    analysed = files if not within else {p: d for p, d in files.items() if is_under(p, within)}
    graph = _build(root, analysed, store, roots, settings.python_files, all_files, settings.testpaths)
    if store is not None and key is not None:
        store.action_put(key, graph.encode())
    return graph


def is_under(path: str, within: str) -> bool:
    """Whether the workspace-relative `path` is `within` (a directory or file) or below it."""
    return path == within or path.startswith(within + "/")


def in_testpaths(path: str, testpaths: tuple[str, ...]) -> bool:
    """Whether plain `pytest` (no arguments) collects `path`: pytest's `testpaths` (directories
    or globs, relative to the rootdir) when set, else everything."""
    if not testpaths:
        return True
    for tp in testpaths:
        tp = tp.strip().removeprefix("./").rstrip("/")
        if tp in ("", "."):
            return True
        parts = path.split("/")
        depth = tp.count("/") + 1
        if path == tp or path.startswith(tp + "/") or fnmatch.fnmatchcase("/".join(parts[:depth]), tp):
            return True
    return False


def _build(root: Path, files: Mapping[str, Digest], store: Store | None, roots: tuple[str, ...],
           python_files: tuple[str, ...], all_files: frozenset[str], testpaths: tuple[str, ...] = ()) -> FileGraph:
    py = {p: d for p, d in files.items() if p.endswith((".py", ".pyi"))}
    js = {p: d for p, d in files.items() if p.endswith(JS_SUFFIXES)}
    sh = {p: d for p, d in files.items() if p.endswith(SHELL_SUFFIXES)}
    imports = extract_cached(root, {**py, **js, **sh}, store)

    edges: dict[str, set[str]] = {}
    unresolved: list[tuple[str, int, str]] = []
    external: dict[str, set[str]] = {}
    resolver = PythonResolver(ModuleIndex.build(all_files), roots)
    for path in py:
        deps = edges.setdefault(path, set())
        for module, level, names, line, flags in imports.get(path, ()):
            if flags & IMPORT_UNRESOLVED:
                unresolved.append((path, line, module))
                continue
            r = resolver.resolve(path, module, level, names)
            deps.update(r.files)
            if r.external:
                external.setdefault(path, set()).add(r.external)
    # Only what plain `pytest` collects: jinja's examples/basic/test_*.py are not tests there.
    tests = sorted(p for p in py if is_python_test(p, python_files) and in_testpaths(p, testpaths))
    for t in tests:
        edges[t].update(conftests_for(t, all_files))

    if js:
        from ciopt.infer.javascript import load_js_packages, load_tsconfigs, resolve_js, tsconfig_for

        configs = load_tsconfigs(root, all_files)
        packages = load_js_packages(root, all_files)
        for path in js:
            deps = edges.setdefault(path, set())
            cfg = tsconfig_for(path, configs)
            for module, _, _, line, flags in imports.get(path, ()):
                if flags & IMPORT_UNRESOLVED:
                    unresolved.append((path, line, module))
                else:
                    deps.update(resolve_js(path, module, all_files, cfg, packages))
        tests += sorted(p for p in js if any(fnmatch.fnmatchcase(p.rpartition("/")[2], pat)
                                             for pat in JS_TEST_PATTERNS) or "/__tests__/" in f"/{p}")
    if sh:
        from ciopt.infer.shell import resolve_shell

        for path in sh:
            deps = edges.setdefault(path, set())
            for module, _, _, line, flags in imports.get(path, ()):
                if flags & IMPORT_UNRESOLVED:
                    unresolved.append((path, line, module))
                else:
                    deps.update(resolve_shell(path, module, all_files))
    from ciopt.infer.docker import dockerfile_deps, is_dockerfile, reader_for

    dockerfiles = [p for p in files if is_dockerfile(p)]
    if dockerfiles:
        read = reader_for(root)
        for path in dockerfiles:
            text = read(path)
            if text is None:
                continue
            found = dockerfile_deps(path, text, all_files, read=read)
            edges.setdefault(path, set()).update(found.files)
            unresolved.extend((path, line, t) for line, t in found.unresolved)

    return FileGraph(
        edges={f: sorted(d - {f}) for f, d in sorted(edges.items())},
        test_files=sorted(set(tests)),
        unresolved=sorted(unresolved),
        external={f: sorted(e) for f, e in sorted(external.items())},
        source_roots=list(roots),
    )


# ---- targets from the file graph ----------------------------------------------------------

def inferred_label(path: str) -> Label | None:
    """The zero-config target of a Python file: //dir:stem (None when the name is not a valid label)."""
    d, _, name = path.rpartition("/")
    try:
        return Label(d, name.rsplit(".", 1)[0])
    except ValueError:
        return None


def data_files(files: FileGraph, all_files: Iterable[str]) -> list[str]:
    """Files a test may read without importing them: every non-code file, and Python files no
    file imports that are not tests themselves (fixture packages put on sys.path at run time,
    as Jinja's tests/res/__init__.py is). Not at the workspace root."""
    referenced = {d for deps in files.edges.values() for d in deps}
    tests = set(files.test_files)
    out = []
    for p in all_files:
        if "/" not in p or p.rpartition("/")[2] in BUILD_FILE_NAMES or p.endswith(".pyc"):
            continue
        if p.endswith((".py", ".pyi")) and (p in referenced or p in tests or p.rpartition("/")[2] == "conftest.py"):
            continue
        out.append(p)
    return out


def _data_files(test: str, data_by_dir: dict[str, list[str]]) -> tuple[Label, ...]:
    """Data files (data_files above) in the test's directory tree: fixtures it may open by path.
    The same rule `ciopt affected` applies, so a test reruns exactly when a file it can read changed."""
    d = test.rpartition("/")[0]
    out = []
    for directory, paths in data_by_dir.items():
        if not d or directory == d or directory.startswith(d + "/"):
            for p in paths:
                pkg, _, name = p.rpartition("/")
                try:
                    out.append(Label(pkg, name))
                except ValueError:
                    continue  # a name no label can spell (spaces, odd characters)
    return tuple(sorted(out))


def inferred_targets(files: FileGraph, all_files: Iterable[str] = ()) -> list[TargetDecl]:
    """A workspace without BUILD files: one py_library per module, one py_test per test file."""
    tests = set(files.test_files)
    data_by_dir: dict[str, list[str]] = {}
    for p in data_files(files, all_files):
        data_by_dir.setdefault(p.rpartition("/")[0], []).append(p)
    out: list[TargetDecl] = []
    for path in files.edges:
        if not path.endswith(".py"):
            continue
        label = inferred_label(path)
        if label is None:
            continue
        src = Label(label.package, path.rpartition("/")[2])
        common = {"name": label.name, "srcs": (src,), "deps": (), "data": (), "tags": ("inferred",)}
        if path in tests:
            attrs = {**common, "data": _data_files(path, data_by_dir), "timeout": None, "flaky": False,
                     "requires": {}, "env": {}, "args": ()}
            out.append(TargetDecl("py_test", label, attrs, Location(path, 1, 1)))
        else:
            out.append(TargetDecl("py_library", label, common, Location(path, 1, 1)))
    return out


def add_inferred_deps(targets: dict[Label, TargetDecl], files: FileGraph) -> dict[Label, TargetDecl]:
    """Fill `inferred_deps` of py_library/py_test targets from the imports of their sources,
    as Pants does: a dependency on the target that owns each imported file. Declared deps
    still count; files no target owns are left out (they are not build inputs)."""
    owner: dict[str, Label] = {}
    for label, t in targets.items():
        if t.kind in ("py_library", "py_test"):
            for ref in t.attrs.get("srcs", ()):
                if ref not in targets:
                    owner.setdefault(ref.path, label)
    out = dict(targets)
    for label, t in targets.items():
        if t.kind not in ("py_library", "py_test"):
            continue
        deps: set[Label] = set()
        for ref in t.attrs.get("srcs", ()):
            for dep_file in files.edges.get(ref.path, ()):
                o = owner.get(dep_file)
                if o is not None and o != label:
                    deps.add(o)
        if deps:
            out[label] = TargetDecl(t.kind, label, {**t.attrs, "inferred_deps": tuple(sorted(deps))}, t.location)
    return out


def infer_targets_and_deps(root: Path, sources: SourceTree, store: Store | None,
                           source_roots: tuple[str, ...] | None, targets: dict[Label, TargetDecl],
                           zero_config: bool) -> tuple[dict[Label, TargetDecl], tuple[str, ...]]:
    """The Inferrer TargetGraph.load takes: inferred targets (zero-config) and inferred deps."""
    files = build_file_graph(root, sources.digests, store, source_roots)
    if zero_config:
        targets = {t.label: t for t in inferred_targets(files, sources.digests)}
    return add_inferred_deps(targets, files), tuple(files.source_roots)


def infer_targets(root: Path, store: Store | None, source_roots: tuple[str, ...] | None = None) -> list[InferredTarget]:
    """What `ciopt tailor` writes: every Python module and test as a target, deps from imports.

    Declared deps must be acyclic, imports need not be: a dep inside an import cycle is left
    out of the BUILD file (inference still adds it when loading), so tailored files always load.
    """
    sources = scan_sources(root, store)
    files = build_file_graph(root, sources.digests, store, source_roots)
    label_of = {p: inferred_label(p) for p in files.edges if p.endswith(".py")}
    decls = inferred_targets(files, ())
    deps_of: dict[Label, set[Label]] = {}
    for decl in decls:
        src = decl.attrs["srcs"][0].path
        deps_of[decl.label] = {l for d in files.edges.get(src, ()) if (l := label_of.get(d)) is not None
                               and l != decl.label}
    component = _strongly_connected(deps_of)
    out: list[InferredTarget] = []
    for decl in decls:
        keep = [d for d in deps_of[decl.label] if component[d] != component[decl.label]]
        deps = sorted((d.relative_to(decl.label.package) for d in keep), key=lambda x: (not x.startswith(":"), x))
        out.append(InferredTarget(decl.label.package, decl.label.name, decl.kind,  # type: ignore[arg-type]
                                  [decl.attrs["srcs"][0].name], deps))
    return out


def _strongly_connected(graph: dict[Label, set[Label]]) -> dict[Label, int]:
    """Tarjan's algorithm, iterative (import chains are deep): node -> component id."""
    index: dict[Label, int] = {}
    low: dict[Label, int] = {}
    on_stack: set[Label] = set()
    stack: list[Label] = []
    comp: dict[Label, int] = {}
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp[member] = index[node]
                    if member == node:
                        break
    return comp
