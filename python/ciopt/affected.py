"""`ciopt affected`: from a git change to the tests it can affect.

Safety over precision, at every step:
* changed files come from the commit range, plus (without `--head`) staged, unstaged and
  untracked files; a rename counts as its old and new path, a deletion as its old path;
* deleted files stay in the graph as empty files, so a test that imported one is selected;
* a change to a global input (pytest configuration, lockfiles, configured globs) selects
  everything, with the input named;
* a changed file no source refers to (a data file) selects the tests of the nearest enclosing
  directory that has tests: tests read fixtures beside them by path, which no import shows;
* targets declared in BUILD files are closed over their reverse dependencies too.
"""

from __future__ import annotations

import fnmatch
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from ciopt import Store
from ciopt.config import Config
from ciopt.errors import UserError
from ciopt.graph.target import BUILD_FILE_NAMES
from ciopt.graph.target_graph import scan_sources
from ciopt.infer.graph import build_file_graph, data_files, infer_targets_and_deps, inferred_label
from ciopt.own_outputs import OwnOutputs

CODE_SUFFIXES = (".py", ".pyi", ".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx", ".sh", ".bash")


class GitError(UserError):
    pass


@dataclass
class Change:
    status: str  # A M D R T C U, or "?" for untracked
    path: str  # workspace-relative
    old_path: str | None = None  # for renames and copies


@dataclass
class AffectedResult:
    base: str
    head: str | None
    changed_files: list[str]
    targets: list[str]
    test_targets: list[str]
    test_files: list[str]
    all: bool
    reason: dict[str, list[str]]
    global_inputs_changed: list[str] = field(default_factory=list)
    unresolved: list[tuple[str, int, str]] = field(default_factory=list)
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "base": self.base,
            "head": self.head,
            "changed_files": self.changed_files,
            "targets": self.targets,
            "test_targets": self.test_targets,
            "test_files": self.test_files,
            "all": self.all,
            "reason": self.reason,
            "global_inputs_changed": self.global_inputs_changed,
            "unresolved_imports": [{"file": f, "line": l, "expression": e} for f, l, e in self.unresolved],
            "note": self.note,
        }


def _git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=120)
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {' '.join(args[:3])}: {msg[-1] if msg else 'failed'}")
    return proc.stdout.decode("utf-8", "surrogateescape")


def resolve_rev(root: Path, rev: str) -> str:
    try:
        return _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except GitError:
        raise GitError(f"unknown revision '{rev}' (not a commit in this repository)") from None


def changed_files(root: Path, base: str, head: str | None, own: OwnOutputs | None = None) -> list[Change]:
    """Workspace-relative changes from `base` to `head` (or to the working tree, untracked included).
    ciopt's own outputs (`own`, default: ciopt-out/) are never changes, whatever .gitignore says."""
    own = own or OwnOutputs.of(root)
    top, prefix = _prefix(root)
    prefix_s = "" if str(prefix) == "." else prefix.as_posix() + "/"
    args = ["diff", "--name-status", "-M", "-z", base]
    if head is not None:
        args.append(head)
    raw = _git(top, *args).split("\0")
    out: list[Change] = []
    i = 0
    while i < len(raw) - 1:
        status = raw[i][:1]
        if status in ("R", "C"):
            old, new = raw[i + 1], raw[i + 2]
            i += 3
            out.append(Change(status, new, old))
        else:
            out.append(Change(status, raw[i + 1]))
            i += 2
    if head is None:
        for path in _git(top, "ls-files", "--others", "--exclude-standard", "-z").split("\0"):
            if path:
                out.append(Change("?", path))
    rel: list[Change] = []
    for c in out:
        if not c.path.startswith(prefix_s) and not (c.old_path or "").startswith(prefix_s):
            continue
        change = Change(c.status, c.path[len(prefix_s):] if c.path.startswith(prefix_s) else c.path,
                        c.old_path[len(prefix_s):] if c.old_path and c.old_path.startswith(prefix_s) else None)
        if own.contains(change.path) and (change.old_path is None or own.contains(change.old_path)):
            continue
        rel.append(change)
    return rel


def _prefix(root: Path) -> tuple[Path, Path]:
    """(git top level, the workspace's path inside it)."""
    top = Path(_git(root, "rev-parse", "--show-toplevel").strip()).resolve()
    here = Path(os.path.abspath(root)).resolve()
    return top, here.relative_to(top)


def _checkout(root: Path, commit: str, cache_dir: Path) -> Path:
    """The tree of `commit` as files, extracted once and kept (keyed by commit id)."""
    dest = cache_dir / "trees" / commit
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}.", dir=dest.parent))
    top, prefix = _prefix(root)
    proc = subprocess.run(["git", "archive", "--format=tar", commit], cwd=top, capture_output=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GitError(f"git archive {commit}: {proc.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(tmp, filter="data")
    os.replace(tmp, dest)
    return dest / prefix


def _matches(path: str, globs: tuple[str, ...]) -> str | None:
    name = path.rpartition("/")[2]
    for g in globs:
        if fnmatch.fnmatchcase(path, g) or ("/" not in g and fnmatch.fnmatchcase(name, g) and "/" not in path):
            return g
        if g.endswith("/**") and path.startswith(g[:-3] + "/"):
            return g
    return None


def compute_affected(root: Path, config: Config, store: Store | None, own: OwnOutputs, base: str,
                     head: str | None = None) -> AffectedResult:
    """What a change from `base` to `head` (None: the working tree) can affect, in the workspace
    at `root` (its configuration, store, and ciopt's own output directories)."""
    from ciopt.graph.target_graph import TargetGraph

    base_commit = resolve_rev(root, base)
    head_commit = resolve_rev(root, head) if head is not None else None
    changes = changed_files(root, base_commit, head_commit, own)
    changed = sorted({c.path for c in changes} | {c.old_path for c in changes if c.old_path})
    deleted = sorted({c.path for c in changes if c.status == "D"} | {c.old_path for c in changes if c.old_path
                                                                      and c.status == "R"})
    sel = config.selection

    # The state the tests will run against: the working tree, or the head commit's tree.
    tree_root = root
    if head_commit is not None:
        current = resolve_rev(root, "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no").strip()
        if current != head_commit or dirty:
            tree_root = _checkout(root, head_commit, config.cache.local.path)
    sources = scan_sources(tree_root, store, own if tree_root == root else None)
    graph = build_file_graph(tree_root, sources.digests, store, sel.source_roots, virtual=deleted)
    all_tests = graph.test_files

    def result(**kw: object) -> AffectedResult:
        return AffectedResult(base=base, head=head, changed_files=changed, unresolved=graph.unresolved,
                              **kw)  # type: ignore[arg-type]

    if config.bypass:
        return result(targets=[], test_targets=[], test_files=all_tests, all=True,
                      reason={"*": [f"emergency bypass ({config.bypass_reason})"]},
                      note="emergency bypass: every test selected")
    global_hits = [p for p in changed if _matches(p, sel.global_inputs)]
    relevant = [p for p in changed if not _matches(p, sel.ignore)]

    # Explicit BUILD targets, when the workspace has them.
    target_graph = None
    try:
        target_graph = TargetGraph.load(tree_root, store, sources, sel.source_roots, infer_targets_and_deps) if any(
            p.rpartition("/")[2] in BUILD_FILE_NAMES for p in sources.digests) else None
    except UserError:
        target_graph = None  # a broken BUILD file: fall back to files only, never to fewer tests
    if global_hits:
        tests = set(all_tests)
        test_targets: set[str] = set()
        if target_graph is not None:
            test_targets = {str(l) for l in target_graph.targets if target_graph.is_test(l)}
        return result(targets=sorted(test_targets), test_targets=sorted(test_targets), test_files=sorted(tests),
                      all=True, reason={"*": [f"{g} (global input)" for g in global_hits]},
                      global_inputs_changed=global_hits)

    via = graph.dependents(relevant)
    # Data files nobody imports (infer.graph.data_files: non-code files, and Python files no
    # file imports that are not tests): the tests of the nearest enclosing directory that has
    # tests may read them (fixtures usually sit in a folder beside the tests). Root-level files
    # select nothing unless they are global inputs.
    data = set(data_files(graph, relevant))
    for p in relevant:
        if p not in data or (p.endswith(CODE_SUFFIXES) and not p.endswith((".py", ".pyi"))):
            continue
        d = p.rpartition("/")[0]
        while True:
            near = [t for t in all_tests if not d or t.startswith(d + "/")]
            if near or not d:
                break
            d = d.rpartition("/")[0]
        for t in near:
            via.setdefault(t, p)
    affected_files = set(via)
    tests = {t for t in all_tests if t in affected_files}
    reason = {t: _chain(t, via) for t in sorted(tests)}

    targets: set[str] = set()
    test_targets: set[str] = set()
    if target_graph is not None:
        owners: dict[str, list] = {}
        for label, t in target_graph.targets.items():
            for attr in ("srcs", "data", "tools"):
                for ref in t.attrs.get(attr, ()):
                    if ref not in target_graph.targets:
                        owners.setdefault(ref.path, []).append(label)
        hit = {l for f in affected_files for l in owners.get(f, ())}
        # BUILD files themselves: every target they declare may have changed.
        for p in relevant:
            if p.rpartition("/")[2] in BUILD_FILE_NAMES:
                pkg = p.rpartition("/")[0]
                hit |= {l for l in target_graph.targets if l.package == pkg}
        rev = target_graph.reverse_edges()
        todo = list(hit)
        while todo:
            l = todo.pop()
            for parent in rev.get(l, ()):
                if parent not in hit:
                    hit.add(parent)
                    todo.append(parent)
        targets = {str(l) for l in hit}
        test_targets = {str(l) for l in hit if target_graph.is_test(l)}
        for l in hit:
            if target_graph.is_test(l):
                for ref in target_graph.targets[l].attrs.get("srcs", ()):
                    if ref.path in sources.digests:
                        tests.add(ref.path)
                        reason.setdefault(ref.path, [ref.path, f"{l} (a dependency of this test target changed)"])
    targets |= _labels(f for f in affected_files if f.endswith((".py", ".pyi")) and f in sources.digests)
    test_targets |= _labels(t for t in tests if t.endswith(".py"))
    return result(targets=sorted(targets), test_targets=sorted(test_targets), test_files=sorted(tests), all=False,
                  reason=reason)


def _chain(test: str, via: dict[str, str | None]) -> list[str]:
    chain = [test]
    nxt = via.get(test)
    while nxt is not None and len(chain) < 1000:
        chain.append(nxt)
        nxt = via.get(nxt)
    return chain


def _labels(paths: Iterable[str]) -> set[str]:
    """The zero-config targets of these Python files (the labels `ciopt query` and `test` use)."""
    return {str(label) for p in paths if (label := inferred_label(p)) is not None}
