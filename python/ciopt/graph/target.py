"""The vocabulary of declared targets, kept free of the Starlark interpreter so that loading
a workspace from the cache (which unpickles these) never imports it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ciopt.graph.label import Label

# BUILD.ciopt wins when both exist, so a repository that already has Bazel
# BUILD files can give ciopt its own without renaming anything.
BUILD_FILE_NAMES = ("BUILD.ciopt", "BUILD")
# Rule kinds that are tests: `ciopt test` runs them, `ciopt build` only builds their inputs.
TEST_RULES = frozenset({"py_test", "sh_test"})


@dataclass(frozen=True, slots=True)
class Location:
    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class TargetDecl:
    """One rule call: its kind, label, checked attributes (all of them, defaults included) and call site."""

    kind: str
    label: Label
    attrs: dict[str, object] = field(hash=False)
    location: Location


Target = TargetDecl
