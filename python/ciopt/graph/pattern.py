"""Target patterns: what the user asks for on the command line.

A Pattern selects labels without knowing which targets exist, so `matches()`
is a pure function of the label; expanding a pattern against the loaded
packages is the target graph's job.

Forms (as in Bazel):
  //pkg:name, //pkg, :name, name   one target (a Label)
  //pkg:all, //pkg:*               every target in package `pkg`
  //pkg/...  (also //pkg/...:all)  every target in `pkg` and all packages below
  //...                            every target in the workspace

A target literally named `all` or `*` is shadowed by the wildcard, as in Bazel.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ciopt.graph.label import Label, validate_package

__all__ = ["Pattern", "PatternKind"]

# `all-targets` is Bazel's spelling that also covers file targets; here every
# target is a rule or a file alike, so it means the same as `all`.
_WILDCARD_NAMES = frozenset({"all", "*", "all-targets"})


class PatternKind(Enum):
    TARGET = "target"  # exactly one label
    PACKAGE = "package"  # every target of one package
    RECURSIVE = "recursive"  # every target of a package and its subpackages


@dataclass(frozen=True, slots=True)
class Pattern:
    kind: PatternKind
    package: str
    # Set only for TARGET patterns; wildcards carry no name.
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is PatternKind.TARGET) != (self.name is not None):
            raise ValueError(f"Pattern {self.kind.value!r} with name {self.name!r}: only target patterns have a name")
        if self.name is not None:
            Label(self.package, self.name)  # validates both parts
        else:
            validate_package(self.package, str(self))

    @classmethod
    def of(cls, label: Label) -> Pattern:
        """The pattern that matches exactly `label`."""
        return cls(PatternKind.TARGET, label.package, label.name)

    @classmethod
    def parse(cls, text: str, package: str | None = None) -> Pattern:
        """Parse a target pattern; relative forms (`...`, `:all`, `x/...`, `:name`) need `package`."""
        if not isinstance(text, str):
            raise ValueError(f"invalid target pattern {text!r}: expected a string")
        if text.startswith("-"):
            raise ValueError(f"invalid target pattern {text!r}: negative patterns are not supported")
        if text.startswith("@"):
            raise ValueError(f"invalid target pattern {text!r}: external repositories (@repo//...) are not supported")

        if text.startswith("//"):
            body, base = text[2:], ""
        elif text.startswith("/"):
            raise ValueError(f"invalid target pattern {text!r}: absolute patterns start with '//'")
        else:
            if package is None:
                raise ValueError(f"invalid target pattern {text!r}: a relative pattern needs a current package")
            body, base = text, package

        path, colon, name = body.partition(":")
        if path == "..." or path.endswith("/..."):
            if colon and name not in _WILDCARD_NAMES:
                raise ValueError(
                    f"invalid target pattern {text!r}: after '...' only ':all' or ':*' may follow, got {':' + name!r}"
                )
            sub = path[: -len("...")].rstrip("/")
            return cls(PatternKind.RECURSIVE, _join(base, sub, text))
        if "..." in path.split("/"):
            raise ValueError(f"invalid target pattern {text!r}: '...' must be the last path segment")
        if colon and name in _WILDCARD_NAMES:
            return cls(PatternKind.PACKAGE, _join(base, path, text))
        # Everything else is a single target; Label gives the precise error.
        try:
            label = Label.parse(text, package)
        except ValueError as e:
            raise ValueError(f"invalid target pattern {text!r}: {_reason(e)}") from None
        return cls.of(label)

    def matches(self, label: Label) -> bool:
        if self.kind is PatternKind.TARGET:
            return label.package == self.package and label.name == self.name
        if self.kind is PatternKind.PACKAGE:
            return label.package == self.package
        # Compare whole segments: //foo/... must not match //foobar:x.
        return self.package == "" or label.package == self.package or label.package.startswith(self.package + "/")

    def contains_package(self, package: str) -> bool:
        """Whether targets of `package` can match; lets loading skip BUILD files that cannot."""
        if self.kind is PatternKind.RECURSIVE:
            return self.package == "" or package == self.package or package.startswith(self.package + "/")
        return package == self.package

    @property
    def label(self) -> Label | None:
        """The single label of a TARGET pattern, else None."""
        return Label(self.package, self.name) if self.name is not None else None

    def __str__(self) -> str:
        if self.kind is PatternKind.TARGET:
            return f"//{self.package}:{self.name}"
        if self.kind is PatternKind.PACKAGE:
            return f"//{self.package}:all"
        return f"//{self.package}/..." if self.package else "//..."

    def __repr__(self) -> str:
        return f"Pattern({str(self)!r})"


def _join(base: str, sub: str, original: str) -> str:
    joined = "/".join(p for p in (base, sub) if p)
    try:
        validate_package(joined, original)
    except ValueError as e:
        raise ValueError(f"invalid target pattern {original!r}: {_reason(e)}") from None
    return joined


def _reason(error: ValueError) -> str:
    # Label errors read "invalid label 'x': reason"; keep just the reason so the
    # message names the pattern once, as the user typed it.
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("invalid label ") and ": " in text else text
