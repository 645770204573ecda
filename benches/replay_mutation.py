"""Deterministic bugs for the CI replay's missed-failure check (benches/ci_replay.py).

A commit's diff names the functions it touched; each gets mutants in a fixed order (the body cut
to `return None`, the first comparison flipped, the first `and`/`or` swapped). The replay keeps
the first mutant that makes the baseline suite fail, so "a failing test file that ciopt did not
run" is a real miss and not a mutation nobody tests.

Mutants are produced with the `ast` module and written back with `ast.unparse`: the whole file is
reformatted (comments dropped) but means the same except for the one mutation, which is all a cache
key or an import graph can see.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")
_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
    ast.LtE: ast.Gt, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}


@dataclass(frozen=True)
class Mutant:
    path: str  # repository-relative
    function: str  # qualified name, for the report
    kind: str  # flip-compare | swap-boolop | return-none
    source: str  # the whole mutated file

    def describe(self) -> str:
        return f"{self.path}:{self.function} ({self.kind})"


def is_test_path(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return (path.startswith(("tests/", "test/", "testing/")) or "/tests/" in path
            or name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py")


def changed_source_lines(root: Path, base: str, head: str) -> dict[str, set[int]]:
    """Lines of non-test Python files added or changed by base..head, by path."""
    diff = subprocess.run(["git", "diff", "--unified=0", "--no-renames", base, head, "--", "*.py"],
                          cwd=root, check=True, capture_output=True, text=True).stdout
    lines: dict[str, set[int]] = {}
    path: str | None = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            target = line[4:]
            path = target[2:] if target.startswith("b/") else None
            if path is not None and is_test_path(path):
                path = None
        elif path is not None and (m := _HUNK.match(line)):
            start, count = int(m.group(1)), int(m.group(2) or "1")
            lines.setdefault(path, set()).update(range(start, start + max(count, 1)))
    return lines


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
    yield from walk(tree, "")


def _mutate(text: str, qualname: str, kind: str) -> str | None:
    """The file with one mutation in `qualname`, or None when that kind does not apply."""
    tree = ast.parse(text)
    func = dict(_functions(tree)).get(qualname)
    if func is None:
        return None
    if kind == "return-none":
        body = func.body
        keep = 1 if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                     and isinstance(body[0].value.value, str)) else 0
        if len(body) == keep or (len(body) == keep + 1 and isinstance(body[keep], ast.Return)
                                 and (body[keep].value is None or (isinstance(body[keep].value, ast.Constant)
                                                                   and body[keep].value.value is None))):
            return None
        func.body = [*body[:keep], ast.Return(value=ast.Constant(value=None))]
        return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    for node in ast.walk(func):
        if kind == "flip-compare" and isinstance(node, ast.Compare):
            op = node.ops[0]
            if type(op) in _FLIP:
                node.ops[0] = _FLIP[type(op)]()
                return ast.unparse(tree) + "\n"
        if kind == "swap-boolop" and isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            return ast.unparse(tree) + "\n"
    return None


# `return None` first: it breaks a changed function for every caller, so it is the mutant most
# likely to fail the suite, and each rejected mutant costs one whole baseline run.
KINDS = ("return-none", "flip-compare", "swap-boolop")


def mutants(root: Path, base: str, head: str) -> Iterator[Mutant]:
    """Mutants of the functions base..head changed, most-changed function first, in a fixed order."""
    ranked: list[tuple[int, str, str]] = []
    for path, changed in sorted(changed_source_lines(root, base, head).items()):
        file = root / path
        if not file.is_file():
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for qualname, func in _functions(tree):
            # The innermost function owning a changed line is the one the commit touched.
            own = set(range(func.lineno, (func.end_lineno or func.lineno) + 1))
            for _, inner in _functions(ast.Module(body=func.body, type_ignores=[])):
                own -= set(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
            hits = len(own & changed)
            if hits:
                ranked.append((-hits, path, qualname))
    for _, path, qualname in sorted(ranked):
        text = (root / path).read_text(encoding="utf-8")
        for kind in KINDS:
            mutated = _mutate(text, qualname, kind)
            if mutated is not None and mutated != text:
                yield Mutant(path, qualname, kind, mutated)


def apply(root: Path, mutant: Mutant) -> None:
    (root / mutant.path).write_text(mutant.source, encoding="utf-8")
