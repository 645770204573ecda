"""Resolving shell `source FILE` / `. FILE` to workspace files.

Bash resolves a sourced name against $PATH (when it has no '/') and then the
*current directory* of the running shell, which is unknown statically. Scripts in
a repository are run either from their own directory or from the repository root,
so both readings are candidates, and every one that exists is returned: listing a
file the script might not read costs an extra test run; missing one would skip a
test that could break. Specs built from variables or command substitutions
(`$(dirname "$0")/lib.sh`, `${BASH_SOURCE%/*}/x`) arrive flagged unresolved from
the extension and never reach here; any that do are ignored.
"""

from __future__ import annotations

import posixpath

__all__ = ["resolve_shell"]

_DYNAMIC = ("$", "`", "~")


def _inside(path: str) -> str | None:
    p = posixpath.normpath(path)
    if p in (".", "..") or p.startswith(("../", "/")):
        return None
    return p


def resolve_shell(importer: str, spec: str, files: frozenset[str]) -> list[str]:
    """Workspace files `source SPEC` in script `importer` may read: relative to the
    script's directory first, then to the workspace root (both when both exist)."""
    spec = spec.strip()
    if len(spec) >= 2 and spec[0] == spec[-1] and spec[0] in "'\"":
        spec = spec[1:-1]
    if not spec or spec.startswith("/") or any(c in spec for c in _DYNAMIC):
        return []  # absolute (outside the workspace) or only known at run time
    out: list[str] = []
    directory = posixpath.dirname(importer)
    for base in (directory, ""):
        candidate = _inside(posixpath.join(base, spec) if base else spec)
        if candidate is not None and candidate in files and candidate not in out:
            out.append(candidate)
    return out
