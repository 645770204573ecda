"""Which workspace files a Dockerfile reads from its build context.

A Dockerfile depends on the context files its `COPY`/`ADD` instructions (and
`RUN --mount=type=bind` mounts) take; a change to any of them changes the image.
This is a small line parser, not BuildKit: it handles what real Dockerfiles use
(continuations, comments, the `# escape=` directive, heredocs, the JSON-array form,
`--flag` options) and reports, rather than guesses, what it cannot know statically
(sources built from `$VAR`, sources that match nothing).

Source matching follows BuildKit: sources are relative to the context root (a leading
"/" or a "../" cannot leave it), `*`/`?`/`[...]` match within one path segment (Go's
filepath.Match), a match on a directory takes everything under it, and files excluded
by the context's `.dockerignore` are never sent, so they are not dependencies.
"""

from __future__ import annotations

import bisect
import json
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = ["DockerDeps", "DockerIgnore", "dockerfile_deps", "is_dockerfile", "reader_for"]

# What `read` gets: a workspace-relative path; what it returns: the text, or None when absent.
Reader = Callable[[str], "str | None"]

_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@)", re.IGNORECASE)
_VARIABLE = re.compile(r"\$(?:\{|[A-Za-z_])")


@dataclass(frozen=True)
class DockerDeps:
    """Context files (workspace-relative, sorted), local stage names, and what could not be resolved."""

    files: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    unresolved: list[tuple[int, str]] = field(default_factory=list)  # (line, source text)


def is_dockerfile(path: str) -> bool:
    """Dockerfile, Dockerfile.<variant>, <name>.dockerfile, Containerfile (and variants)."""
    name = path.rsplit("/", 1)[-1]
    lower = name.lower()
    if lower.endswith(".dockerignore"):  # Dockerfile.dockerignore is an ignore file, not a Dockerfile
        return False
    return (
        lower in ("dockerfile", "containerfile")
        or lower.startswith(("dockerfile.", "containerfile."))
        or lower.endswith((".dockerfile", ".containerfile"))
    )


def reader_for(root: Path) -> Reader:
    """A `read` callable over the working tree at `root`."""

    def read(rel: str) -> str | None:
        try:
            return (root / rel).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    return read


# --------------------------------------------------------------------------- patterns

@lru_cache(maxsize=4096)
def _segment_regex(pattern: str, *, double_star: bool) -> re.Pattern[str] | None:
    """Go filepath.Match (`*`, `?`, `[...]` with `^` negation and `\\` escapes) as a regex
    over whole '/'-separated paths. With `double_star`, `**` crosses directories
    (.dockerignore syntax; COPY gets it too, an over-approximation that only adds deps)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if double_star and pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):  # "**/" : zero or more whole directories
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] in "^!"
            if negate:
                j += 1
            body: list[str] = []
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    j += 1
                body.append(re.escape(pattern[j]) if pattern[j] != "-" else "-")
                j += 1
            if j >= n:  # unterminated class: Go reports ErrBadPattern; we treat it as matching nothing
                return None
            out.append("[" + ("^/" if negate else "") + "".join(body) + "]")
            i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out))
    except re.error:
        return None


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _clean(path: str) -> str:
    """BuildKit cleans a source against the context root: "/a", "./a" and "../a" are all "a"."""
    p = posixpath.normpath("/" + path.strip())
    return p.lstrip("/")


@dataclass(frozen=True)
class DockerIgnore:
    """A parsed .dockerignore: (regex, negated) rules; the last matching rule decides."""

    rules: tuple[tuple[re.Pattern[str], bool], ...]

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules: list[tuple[re.Pattern[str], bool]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:].strip()
            pattern = _clean(line)
            if not pattern:
                continue
            rx = _segment_regex(pattern, double_star=True)
            if rx is not None:
                rules.append((rx, negated))
        return cls(tuple(rules))

    def excludes(self, rel: str) -> bool:
        """Whether context-relative `rel` is left out of the context.

        As in moby's patternmatcher, a rule matching a parent directory matches
        everything below it ("build" excludes "build/x/y")."""
        excluded = False
        parts = rel.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        for rx, negated in self.rules:
            if any(rx.fullmatch(p) for p in prefixes):
                excluded = not negated
        return excluded


# --------------------------------------------------------------------------- Dockerfile lines

def _escape_char(lines: list[str]) -> str:
    """The `# escape=` parser directive (only valid before any other line)."""
    for line in lines:
        m = re.match(r"^\s*#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$", line)
        if not m:
            break
        if m.group(1).lower() == "escape" and m.group(2) in ("\\", "`"):
            return m.group(2)
    return "\\"


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, instruction text) with continuations joined and comments,
    blank lines and heredoc bodies dropped."""
    lines = text.splitlines()
    escape = _escape_char(lines)
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        start = i + 1
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts: list[str] = []
        while True:
            stripped = line.rstrip()
            if stripped.endswith(escape) and not stripped.endswith(escape * 2):
                parts.append(stripped[:-1])
                # Docker drops comment lines and blank lines inside a continuation.
                while i < n and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                    i += 1
                if i >= n:
                    break
                line = lines[i]
                i += 1
                continue
            parts.append(line)
            break
        instruction = " ".join(p.strip() for p in parts)
        # Heredocs (`COPY <<EOF /dst`, `RUN <<EOT bash`): their bodies follow the
        # instruction and are inline content, not context files or instructions.
        for m in _HEREDOC.finditer(instruction):
            word, strip_tabs = m.group(3), m.group(1) == "-"
            while i < n:
                body = lines[i].lstrip("\t") if strip_tabs else lines[i]
                i += 1
                if body.rstrip("\r") == word:
                    break
        yield start, instruction


def _split_args(rest: str) -> list[str]:
    """Arguments of an instruction in JSON-array or shell form."""
    rest = rest.strip()
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None  # not valid JSON: Docker falls back to the shell form too
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    try:
        return shlex.split(rest, comments=False, posix=True)
    except ValueError:
        return rest.split()


def _take_flags(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Leading `--name[=value]` options (they may repeat, e.g. --exclude) and the rest."""
    flags: dict[str, list[str]] = {}
    i = 0
    while i < len(args) and args[i].startswith("--"):
        name, _, value = args[i][2:].partition("=")
        flags.setdefault(name.lower(), []).append(value)
        i += 1
    return flags, args[i:]


def _split_leading_flags(rest: str) -> tuple[dict[str, list[str]], str]:
    """Like _take_flags, but leaves the remainder as text (for the JSON-array form)."""
    flags: dict[str, list[str]] = {}
    rest = rest.strip()
    while rest.startswith("--"):
        token, _, remainder = rest.partition(" ")
        try:
            parsed = shlex.split(token)
        except ValueError:
            parsed = [token]
        name, _, value = (parsed[0] if parsed else token)[2:].partition("=")
        flags.setdefault(name.lower(), []).append(value)
        rest = remainder.strip()
    return flags, rest


# --------------------------------------------------------------------------- resolution

class _Context:
    """The build context: which workspace files are in it, minus .dockerignore'd ones."""

    def __init__(self, directory: str, files: frozenset[str], ignore: DockerIgnore | None) -> None:
        self.directory = directory
        self.ignore = ignore
        prefix = f"{directory}/" if directory else ""
        # context-relative -> workspace-relative; .dockerignore is applied to matches only,
        # which is far cheaper than filtering a large context up front.
        self.files: dict[str, str] = {f[len(prefix):]: f for f in files if f.startswith(prefix)}
        self.sorted = sorted(self.files)

    def match(self, source: str, excludes: list[re.Pattern[str]]) -> list[str]:
        """Workspace files a COPY/ADD source takes (empty when it matches nothing)."""
        pattern = _clean(source)
        # `--exclude` patterns apply to paths as copied: relative to a directory source,
        # or to the directory a file or glob source sits in.
        base = posixpath.dirname(pattern)
        if not pattern:
            hits = list(self.sorted)  # "." : the whole context
        elif not _has_magic(pattern):
            if pattern in self.files:
                hits = [pattern]
            else:
                hits = self._under(pattern)
                base = pattern
        else:
            rx = _segment_regex(pattern, double_star=True)
            if rx is None:
                return []
            depth = pattern.count("/") + 1
            hits = []
            for rel in self.sorted:
                parts = rel.split("/")
                # A match on a path prefix is a directory match: it takes the whole subtree.
                if rx.fullmatch(rel) or (len(parts) > depth and rx.fullmatch("/".join(parts[:depth]))):
                    hits.append(rel)
        if excludes:
            cut = len(base) + 1 if base else 0
            hits = [h for h in hits
                    if not any(rx.fullmatch(p) for rx in excludes for p in _prefixes(h[cut:]))]
        if self.ignore is not None:
            hits = [h for h in hits if not self.ignore.excludes(h)]
        return [self.files[h] for h in hits]

    def _under(self, directory: str) -> list[str]:
        prefix = directory + "/"
        lo = bisect.bisect_left(self.sorted, prefix)
        out = []
        for rel in self.sorted[lo:]:
            if not rel.startswith(prefix):
                break
            out.append(rel)
        return out


def _prefixes(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[: k + 1]) for k in range(len(parts))]


def _load_ignore(
    path: str, context: str, files: frozenset[str], read: Reader | None
) -> tuple[str | None, DockerIgnore | None]:
    """BuildKit reads `<Dockerfile>.dockerignore` beside the Dockerfile first, else the
    context's `.dockerignore`. Without a reader we cannot see it and keep every file (safe)."""
    candidates = [f"{path}.dockerignore", posixpath.join(context, ".dockerignore") if context else ".dockerignore"]
    for candidate in candidates:
        if candidate in files:
            text = read(candidate) if read is not None else None
            return candidate, (DockerIgnore.parse(text) if text is not None else None)
    return None, None


def dockerfile_deps(
    path: str,
    text: str,
    files: frozenset[str],
    context: str | None = None,
    read: Reader | None = None,
) -> DockerDeps:
    """Context files the Dockerfile at workspace-relative `path` (contents `text`) reads.

    `context` is the workspace-relative build context (default: the Dockerfile's
    directory). `read` (see `reader_for`) lets the .dockerignore be applied; the
    ignore file itself is then a dependency too, since it decides what is sent.
    """
    ctx_dir = posixpath.dirname(path) if context is None else _clean(context)
    ignore_path, ignore = _load_ignore(path, ctx_dir, files, read)
    ctx = _Context(ctx_dir, files, ignore)

    found: dict[str, None] = {}
    stages: list[str] = []
    unresolved: list[tuple[int, str]] = []

    def add_source(line: int, source: str, excludes: list[re.Pattern[str]]) -> None:
        if _VARIABLE.search(source):
            unresolved.append((line, source))  # a build arg or env value: only the user knows
            return
        hits = ctx.match(source, excludes)
        if not hits:
            unresolved.append((line, source))  # matches nothing (yet): the build would fail
        for h in hits:
            found.setdefault(h, None)

    for line, instruction in _logical_lines(text):
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            _, args = _take_flags(_split_args(rest))
            if len(args) >= 3 and args[1].lower() == "as":
                stages.append(args[2])
        elif keyword in ("COPY", "ADD"):
            flags, remainder = _split_leading_flags(rest)
            if "from" in flags:
                continue  # another stage, an image or a named context: not this context's files
            args = _split_args(remainder)
            if len(args) < 2:
                continue
            excludes = [rx for p in flags.get("exclude", []) if (rx := _segment_regex(_clean(p), double_star=True))]
            for source in args[:-1]:
                if source.startswith("<<"):
                    continue  # heredoc: inline content
                if keyword == "ADD" and _REMOTE.match(source):
                    continue  # a URL or git repository, fetched at build time
                add_source(line, source, excludes)
        elif keyword == "RUN":
            # `RUN --mount=type=bind[,source=DIR]` mounts context files (the whole context
            # when no source is given); cache/secret/ssh/tmpfs mounts, and binds from
            # another stage or image, do not.
            flags, _ = _split_leading_flags(rest)
            for spec in flags.get("mount", []):
                opts: dict[str, str] = {}
                for item in spec.split(","):
                    k, _, v = item.partition("=")
                    opts[k.strip().lower()] = v.strip()
                if opts.get("type", "bind") != "bind" or "from" in opts:
                    continue
                add_source(line, opts.get("source", opts.get("src", ".")) or ".", [])
    if ignore_path is not None and read is not None:
        found.setdefault(ignore_path, None)
    return DockerDeps(files=sorted(found), stages=stages, unresolved=unresolved)
