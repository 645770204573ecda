"""Labels: the names of targets, `//pkg/path:name`.

A Label is a value, not a string: it is parsed and validated once at the edge
(BUILD files, the command line) so the graph never has to re-check or
re-normalise names. Two spellings of the same target (`//a/b`, `//a/b:b`,
`:b` inside package `a/b`) parse to equal Labels with one canonical `str()`.

Only the main repository exists; `@repo//...` is rejected rather than silently
treated as local.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Label", "validate_package", "validate_name"]

# Bazel's documented character sets. Package names are restricted more tightly
# than target names because they are directory paths every tool must handle;
# target names may be file names, so they admit most printable punctuation.
_PACKAGE_CHARS = re.compile(r"[A-Za-z0-9/\-._@]*")
_NAME_CHARS = re.compile(r"[A-Za-z0-9!%\-@^_\"#$&'()*+,;<=>?\[\]{|}~/.]+")


def _check_segments(text: str, what: str, original: str) -> None:
    # Empty, `.` and `..` segments would let two spellings name one path, or
    # let a name climb out of its package; both break "one target, one label".
    for segment in text.split("/"):
        if segment == "":
            raise ValueError(f"invalid label {original!r}: {what} {text!r} has an empty path segment")
        if segment in (".", ".."):
            raise ValueError(f"invalid label {original!r}: {what} {text!r} may not contain a {segment!r} segment")


def validate_package(package: str, original: str | None = None) -> None:
    """Raise ValueError unless `package` is a valid package path ("" is the root package)."""
    original = package if original is None else original
    if package == "":
        return
    if not _PACKAGE_CHARS.fullmatch(package):
        bad = sorted({c for c in package if not _PACKAGE_CHARS.fullmatch(c)})
        raise ValueError(
            f"invalid label {original!r}: package {package!r} contains {''.join(bad)!r}; "
            "allowed are A-Z a-z 0-9 / - . _ @"
        )
    _check_segments(package, "package", original)
    if "..." in package.split("/"):
        # `...` is the recursive wildcard of patterns; as a directory name it
        # would make `//.../x:all` mean two things.
        raise ValueError(f"invalid label {original!r}: package {package!r} may not contain a '...' segment")


def validate_name(name: str, original: str | None = None) -> None:
    """Raise ValueError unless `name` is a valid target name."""
    original = name if original is None else original
    if name == "":
        raise ValueError(f"invalid label {original!r}: empty target name")
    if not _NAME_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_CHARS.fullmatch(c)})
        raise ValueError(f"invalid label {original!r}: target name {name!r} contains {''.join(bad)!r}")
    _check_segments(name, "target name", original)


@dataclass(frozen=True, order=True, slots=True)
class Label:
    """A target's name: `package` ("" for the root) and `name` within it.

    Ordering is (package, name), so sorted labels group by package, which keeps
    printed output and JSON stable.
    """

    package: str
    name: str

    def __post_init__(self) -> None:
        text = f"//{self.package}:{self.name}"
        validate_package(self.package, text)
        validate_name(self.name, text)

    @classmethod
    def parse(cls, text: str, package: str | None = None) -> Label:
        """Parse `//pkg:name`, `//pkg`, `//:name`, or, relative to `package`, `:name` or `name`.

        Relative forms need `package` (the package whose BUILD file, or whose
        directory on the command line, the text came from); without one they
        are an error rather than a guess.
        """
        if not isinstance(text, str):
            raise ValueError(f"invalid label {text!r}: expected a string")
        if text.startswith("@"):
            raise ValueError(f"invalid label {text!r}: external repositories (@repo//...) are not supported")
        if text.startswith("//"):
            body = text[2:]
            pkg, colon, name = body.partition(":")
            validate_package(pkg, text)
            if not colon:
                if pkg == "":
                    raise ValueError(f"invalid label {text!r}: the root package has no default target; write '//:NAME'")
                # `//a/b` is shorthand for `//a/b:b`, as in Bazel.
                name = pkg.rsplit("/", 1)[-1]
            elif name == "":
                raise ValueError(f"invalid label {text!r}: empty target name after ':'")
            validate_name(name, text)
            return cls(pkg, name)
        if text.startswith("/"):
            raise ValueError(f"invalid label {text!r}: absolute labels start with '//'")
        if text.startswith(":"):
            name = text[1:]
        elif ":" in text:
            # `a/b:c` is ambiguous (relative package or a typo for `//a/b:c`);
            # refusing it costs one character and avoids building the wrong thing.
            raise ValueError(f"invalid label {text!r}: a label with a package must start with '//' (did you mean '//{text}'?)")
        else:
            name = text
        if package is None:
            raise ValueError(f"invalid label {text!r}: a relative label needs a current package")
        if name == "":
            raise ValueError(f"invalid label {text!r}: empty target name")
        validate_package(package, f"//{package}:{name}")
        validate_name(name, text)
        return cls(package, name)

    def __str__(self) -> str:
        return f"//{self.package}:{self.name}"

    def __repr__(self) -> str:
        return f"Label({str(self)!r})"

    @property
    def path(self) -> str:
        """The workspace-relative path this label names when it is a file: `pkg/name`."""
        return f"{self.package}/{self.name}" if self.package else self.name

    def relative_to(self, package: str) -> str:
        """The shortest spelling of this label inside `package` (`:name` when local)."""
        return f":{self.name}" if package == self.package else str(self)
