"""Targets produced by inference: the shape `ciopt tailor` writes into BUILD files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["InferredKind", "InferredTarget"]

InferredKind = Literal["py_library", "py_test"]


@dataclass(frozen=True)
class InferredTarget:
    """One inferred rule call.

    `package` is the workspace-relative package directory ("" for the root),
    `srcs` are package-relative file paths, and `deps` are labels ("//pkg:name",
    or ":name" inside the same package).
    """

    package: str
    name: str
    kind: InferredKind
    srcs: list[str]
    deps: list[str]
