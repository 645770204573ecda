"""`ciopt query` expressions over the target graph.

    EXPR := PATTERN                      //pkg:name, //pkg/..., //pkg:all
          | deps(EXPR)                   EXPR and everything it depends on
          | rdeps(UNIVERSE, EXPR)        targets of UNIVERSE that depend on EXPR (EXPR included)
          | kind(REGEX, EXPR)            targets whose rule kind matches REGEX (e.g. py_test, "_test$")
          | tests(EXPR)                  test targets in EXPR, test_suites expanded
          | EXPR + EXPR | EXPR - EXPR    union, difference (left to right)
"""

from __future__ import annotations

import re

from ciopt.graph.label import Label
from ciopt.graph.target_graph import GraphError, TargetGraph

_TOKEN = re.compile(r"\s*(?:(?P<punct>[(),+-])|(?P<word>\"[^\"]*\"|'[^']*'|[^\s(),+]+))")
FUNCTIONS = {"deps": 1, "rdeps": 2, "kind": 2, "tests": 1}


class QueryError(GraphError):
    pass


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"query: cannot parse at column {pos + 1}: {text[pos:]!r}")
        out.append(m.group("punct") or m.group("word"))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, graph: TargetGraph, text: str, package: str | None) -> None:
        self.g, self.text, self.package = graph, text, package
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise QueryError(f"query {self.text!r}: expected {want or 'an expression'}, got {tok or 'end of input'}")
        self.i += 1
        return tok

    def parse(self) -> set[Label]:
        result = self.expr()
        if self.peek() is not None:
            raise QueryError(f"query {self.text!r}: unexpected {self.peek()!r}")
        return result

    def expr(self) -> set[Label]:
        result = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            result = result | rhs if op == "+" else result - rhs
        return result

    def word(self) -> str:
        tok = self.take()
        return tok[1:-1] if tok[:1] in "\"'" else tok

    def term(self) -> set[Label]:
        tok = self.peek()
        if tok in FUNCTIONS and self.i + 1 < len(self.toks) and self.toks[self.i + 1] == "(":
            name = self.take()
            self.take("(")
            if name == "deps":
                arg = self.expr()
                self.take(")")
                return self.g.transitive_deps(arg)
            if name == "tests":
                arg = self.expr()
                self.take(")")
                return set(self.g.tests_of(arg))
            if name == "kind":
                regex = self.word()
                self.take(",")
                arg = self.expr()
                self.take(")")
                try:
                    pattern = re.compile(regex)
                except re.error as e:
                    raise QueryError(f"query: kind(): bad regex {regex!r}: {e}") from None
                return {l for l in arg if pattern.search(self.g.targets[l].kind)}
            universe = self.expr()
            self.take(",")
            arg = self.expr()
            self.take(")")
            return _rdeps(self.g, universe, arg)
        word = self.word()
        return set(self.g.expand([word], self.package))


def _rdeps(g: TargetGraph, universe: set[Label], of: set[Label]) -> set[Label]:
    rev = g.reverse_edges()
    seen = set(of)
    todo = list(of)
    while todo:
        for parent in rev[todo.pop()]:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen & universe


def run_query(graph: TargetGraph, text: str, package: str | None = None) -> list[Label]:
    return sorted(_Parser(graph, text, package).parse())
