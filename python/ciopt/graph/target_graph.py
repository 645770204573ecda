"""The target graph: every BUILD file of a workspace loaded, every label resolved.

A label in `srcs`/`deps`/`data`/`tools`/`tests` names either a target of its package or,
failing that, a source file at `package/name` (as in Bazel). Loading checks that every
such label exists, suggests a near miss when it does not, and reports a dependency cycle as
its full path.

Loading is cached: a BUILD file's evaluation is stored in the ActionCache under the digest
of (the BUILD file, the package's file listing), since `glob()` reads the listing. An
unchanged workspace is therefore loaded without running Starlark at all.
"""

from __future__ import annotations

from ciopt.errors import UserError

import difflib
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ciopt import Digest, Store, hash_bytes, hash_tree
from ciopt.graph.label import Label
from ciopt.graph.pattern import Pattern
from ciopt.graph.target import BUILD_FILE_NAMES, TEST_RULES, Target, TargetDecl
from ciopt.own_outputs import OwnOutputs
from ciopt.store_location import default_store_path

# Attributes whose values are labels, in the order dependencies are listed.
LABEL_ATTRS = ("srcs", "deps", "data", "tools", "tests")
_EVAL_CACHE_VERSION = b"ciopt-build-eval-v2\0"



# (root, sources, store, configured source roots, declared targets, zero_config) ->
# (targets with inferred ones and inferred deps, the source roots used).
Inferrer = Callable[[Path, "SourceTree", "Store | None", "tuple[str, ...] | None", "dict[Label, Target]", bool],
                    "tuple[dict[Label, Target], tuple[str, ...]]"]


class GraphError(UserError):
    """A problem in the graph as a whole (unknown label, cycle); `str()` starts with file:line:col."""


@dataclass(frozen=True)
class SourceTree:
    """The workspace's source files: workspace-relative path -> Digest and executable bit."""

    root: Path
    digests: dict[str, Digest]
    executable: frozenset[str]
    tree_digest: Digest


def scan_sources(root: Path, store: Store | None, own: OwnOutputs | None = None) -> SourceTree:
    """One walk of the workspace (honoring .gitignore), through the StatCache when there is a store.

    ciopt's own outputs and an in-workspace store are never sources, whatever .gitignore says."""
    if own is None:
        own = OwnOutputs.of(root, store.path if store is not None else default_store_path())
    excludes = own.walk_excludes()
    tree = store.hash_tree(root, excludes=excludes) if store else hash_tree(root, excludes=excludes)
    digests: dict[str, Digest] = {}
    executable = set()
    for e in tree.entries():
        digests[e.path] = e.digest
        if e.is_executable:
            executable.add(e.path)
    return SourceTree(root, digests, frozenset(executable), tree.digest)


@dataclass
class TargetGraph:
    root: Path
    sources: SourceTree
    targets: dict[Label, Target]
    packages: frozenset[str]
    # Direct dependencies on other targets (not source files), in attribute order.
    edges: dict[Label, tuple[Label, ...]] = field(default_factory=dict)
    # Generated files by label (`//pkg:out.txt`) -> the genrule producing them.
    output_files: dict[Label, Label] = field(default_factory=dict)
    # BUILD files evaluated (cache misses) and loaded from the cache, for progress and tests.
    evaluated: int = 0
    cached: int = 0
    # True when no BUILD file exists and every target was inferred from source.
    zero_config: bool = False
    # Import roots, most specific first ("" = the root): configured, or detected as `affected` does.
    source_roots: tuple[str, ...] = ("",)

    # -- loading ------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path, store: Store | None = None, sources: SourceTree | None = None,
             source_roots: tuple[str, ...] | None = None, infer: Inferrer | None = None) -> TargetGraph:
        """Every target of the workspace. With `infer` (infer.graph.infer_targets_and_deps),
        Python dependencies inferred from imports are added (as `inferred_deps`) to
        py_library/py_test targets, and a workspace without BUILD files gets one py_library per
        module and one py_test per test file. The graph layer knows nothing of inference
        itself: imports run infer -> graph, never back."""
        sources = sources or scan_sources(root, store)
        build_files = _build_files(sources.digests)
        listings = _package_listings(sources.digests, set(build_files))
        targets: dict[Label, Target] = {}
        evaluated = cached = 0
        fresh: list[tuple[str, bytes]] = []  # new cache entries: one transaction for all of them
        for package, build_path in sorted(build_files.items()):
            key = _eval_key(sources.digests[build_path], package, listings.get(package, []))
            decls = _cached_decls(store, key)
            if decls is None:
                # Only here, on a miss: the Starlark interpreter costs more to import than a no-op build.
                from ciopt.graph.build_file import evaluate_build_file

                prefix = package + "/" if package else ""
                visible = frozenset(p[len(prefix):] for p in listings.get(package, []))
                decls = evaluate_build_file(root / build_path, package, display_path=build_path, visible=visible)
                evaluated += 1
                fresh.append((key, pickle.dumps(decls, protocol=pickle.HIGHEST_PROTOCOL)))
            else:
                cached += 1
            for d in decls:
                targets[d.label] = d
        if store is not None and fresh:
            store.action_put_many(fresh)
        zero_config = not build_files
        roots = source_roots or ("",)
        if infer is not None and any(p.endswith(".py") for p in sources.digests):
            targets, roots = infer(root, sources, store, source_roots, targets, zero_config)
        graph = cls(root, sources, targets, frozenset(build_files), evaluated=evaluated, cached=cached,
                    zero_config=zero_config, source_roots=roots)
        graph._link()
        return graph

    def _link(self) -> None:
        """Resolve every label attribute; unknown labels and cycles are errors."""
        # A genrule's output file is a target too (`//pkg:out.txt`): depending on it depends on the genrule.
        self.output_files = {Label(l.package, out): l for l, t in self.targets.items() if t.kind == "genrule"
                             for out in t.attrs["outs"]}
        for out, producer in self.output_files.items():
            # Bazel's rule too: otherwise dependents would silently get the generated file.
            if out.path in self.sources.digests:
                raise GraphError(f"{self.targets[producer].location}: genrule {producer}: output '{out.name}' "
                                 f"has the same path as the source file {out.path}")
        explicit: dict[Label, tuple[Label, ...]] = {}
        for label, target in self.targets.items():
            deps: list[Label] = []
            for attr in LABEL_ATTRS:
                for ref in target.attrs.get(attr, ()):
                    if ref in self.targets:
                        deps.append(ref)
                    elif ref in self.output_files:
                        deps.append(self.output_files[ref])
                    elif ref.path not in self.sources.digests:
                        raise GraphError(f"{target.location}: {target.kind} rule {label}: {attr} refers to "
                                         f"'{ref}', which is neither a target nor a file{self._suggest(ref)}")
            explicit[label] = tuple(dict.fromkeys(deps))
            inferred = [d for d in target.attrs.get("inferred_deps", ()) if d in self.targets]
            self.edges[label] = tuple(dict.fromkeys([*deps, *inferred]))
        # Only declared dependencies must be acyclic: Python modules import each other in
        # cycles all the time, and a cycle of inferred file-level deps is harmless.
        self._check_cycles(explicit)

    def _suggest(self, ref: Label) -> str:
        same_package = [str(l) for l in (*self.targets, *self.output_files) if l.package == ref.package]
        files = [f"//{ref.package}:{p[len(ref.package) + 1:] if ref.package else p}" for p in self.sources.digests
                 if (p.startswith(ref.package + "/") if ref.package else "/" not in p)]
        close = difflib.get_close_matches(str(ref), same_package + files, n=1, cutoff=0.6)
        if not close:
            close = difflib.get_close_matches(str(ref), [str(l) for l in self.targets], n=1, cutoff=0.6)
        return f" (did you mean '{close[0]}'?)" if close else ""

    def _check_cycles(self, edges: dict[Label, tuple[Label, ...]]) -> None:
        # Iterative DFS: recursion would overflow on long chains (the 100-deep bench graph).
        state: dict[Label, int] = {}  # 1 = on the stack, 2 = done
        for start in sorted(self.targets):
            if state.get(start):
                continue
            stack: list[tuple[Label, Iterator[Label]]] = [(start, iter(edges[start]))]
            state[start] = 1
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(child) == 1:
                    path = [n for n, _ in stack]
                    cycle = path[path.index(child):] + [child]
                    where = self.targets[child].location
                    raise GraphError(f"{where}: dependency cycle: " + " -> ".join(map(str, cycle)))
                elif not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(edges[child])))

    # -- queries ------------------------------------------------------------------

    def expand(self, patterns: Iterable[str], package: str | None = None) -> list[Label]:
        """Targets matched by the patterns, sorted; a pattern matching nothing is an error."""
        out: set[Label] = set()
        for text in patterns:
            try:
                pattern = Pattern.parse(text, package)
            except ValueError as e:
                raise GraphError(str(e)) from None
            matched = {l for l in self.targets if pattern.matches(l)}
            if not matched:
                single = pattern.label
                hint = self._suggest(single) if single else ""
                raise GraphError(f"no targets match '{text}'{hint}")
            out |= matched
        return sorted(out)

    def transitive_deps(self, labels: Iterable[Label]) -> set[Label]:
        seen: set[Label] = set()
        todo = list(labels)
        while todo:
            l = todo.pop()
            if l not in seen:
                seen.add(l)
                todo.extend(self.edges[l])
        return seen

    def reverse_edges(self) -> dict[Label, set[Label]]:
        rev: dict[Label, set[Label]] = {l: set() for l in self.targets}
        for l, deps in self.edges.items():
            for d in deps:
                rev[d].add(l)
        return rev

    def is_test(self, label: Label) -> bool:
        return self.targets[label].kind in TEST_RULES

    def tests_of(self, labels: Iterable[Label]) -> list[Label]:
        """Test targets among `labels`, with test_suites expanded (an empty suite: its package's tests)."""
        out: set[Label] = set()
        seen_suites: set[Label] = set()
        todo = list(labels)
        while todo:
            l = todo.pop()
            t = self.targets[l]
            if t.kind in TEST_RULES:
                out.add(l)
            elif t.kind == "test_suite" and l not in seen_suites:
                seen_suites.add(l)
                listed = [x for x in t.attrs.get("tests", ()) if x in self.targets]
                todo.extend(listed or [x for x in self.targets
                                       if x.package == l.package and self.targets[x].kind in TEST_RULES])
        return sorted(out)


def _build_files(digests: dict[str, Digest]) -> dict[str, str]:
    """package -> workspace-relative BUILD file path (BUILD.ciopt wins over BUILD)."""
    found: dict[str, str] = {}
    for path in digests:
        directory, _, name = path.rpartition("/")
        if name in BUILD_FILE_NAMES:
            current = found.get(directory)
            if current is None or BUILD_FILE_NAMES.index(name) < BUILD_FILE_NAMES.index(current.rpartition("/")[2]):
                found[directory] = path
    return found


def _package_listings(digests: dict[str, Digest], packages: set[str]) -> dict[str, list[str]]:
    """Each package's files (not descending into subpackages): what glob() can see."""
    listings: dict[str, list[str]] = {p: [] for p in packages}
    for path in sorted(digests):
        directory = path.rpartition("/")[0]
        # The owning package is the nearest ancestor directory with a BUILD file.
        while directory not in packages and directory:
            directory = directory.rpartition("/")[0]
        if directory in packages:
            listings[directory].append(path)
    return listings


def _eval_key(build_digest: Digest, package: str, listing: list[str]) -> str:
    h = hash_bytes(_EVAL_CACHE_VERSION + str(build_digest).encode() + b"\0" + package.encode() + b"\0"
                   + "\n".join(listing).encode())
    return h.hash


def _cached_decls(store: Store | None, key: str) -> list[TargetDecl] | None:
    if store is None:
        return None
    raw = store.action_get(key)
    if raw is None:
        return None
    try:
        return pickle.loads(raw)
    except Exception:
        # Written by another ciopt version: evaluate again and overwrite.
        return None


__all__ = ["GraphError", "Inferrer", "LABEL_ATTRS", "SourceTree", "Target", "TargetGraph", "scan_sources"]
