"""ciopt's own files inside a user's workspace, and its virtualenvs: never sources, never changes.

A repository that has not adopted ciopt has no `.gitignore` line for `ciopt-out/`, and a
store may be placed inside the workspace (`CIOPT_CACHE_DIR=.ciopt-demo`). Without this module
a test run would make its own logs "changed files" for the next `ciopt affected`, and a
directory hash would change every time ciopt wrote to it. Every walk, glob and git change list
filters through `OwnOutputs`, whatever the user's ignore files say.

Each directory ciopt creates also gets a `.gitignore` holding `*` (as pytest does for
`.pytest_cache`), so `git status` stays clean for the user as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

OUT_DIR = "ciopt-out"  # build outputs, test logs, sandboxes; at the workspace root
# Our state directories by naming convention (the demo store `.ciopt-demo`, bench stores).
STATE_GLOB = ".ciopt-*"
_IGNORE_ALL = "# Written by ciopt: nothing here is source.\n*\n"


@dataclass(frozen=True)
class OwnOutputs:
    """The workspace-relative directories that hold ciopt's outputs and state."""

    dirs: tuple[str, ...]  # '/'-separated, relative to the workspace root, no trailing slash

    @classmethod
    def of(cls, root: Path, store_path: str | os.PathLike[str] | None = None) -> OwnOutputs:
        dirs = [OUT_DIR]
        if store_path is not None:
            rel = _inside(Path(root), Path(store_path))
            if rel:
                dirs.append(rel)
        dirs += virtualenvs(Path(root))
        return cls(tuple(dict.fromkeys(dirs)))

    def walk_excludes(self) -> list[str]:
        """Anchored gitignore-style patterns for the Rust walker (`hash_tree(excludes=...)`)."""
        return [f"/{d}" for d in self.dirs] + [f"/{STATE_GLOB}"]

    def contains(self, path: str) -> bool:
        """True when the workspace-relative `path` is one of ours or lies below one."""
        first = path.split("/", 1)[0]
        if first.startswith(".ciopt-"):
            return True
        return any(path == d or path.startswith(d + "/") for d in self.dirs)

    def filter(self, paths: Iterable[str]) -> list[str]:
        return [p for p in paths if not self.contains(p)]


def virtualenvs(root: Path) -> list[str]:
    """Virtual environments directly in the workspace root (`.venv/`, `venv/`, any name).

    Not ours, but never sources either: a runner that creates or restores `.venv` in a checkout
    whose `.gitignore` does not list it must not see pip's vendored `test_*.py` files as tests,
    nor thousands of untracked files as changes. Recognized by `pyvenv.cfg`, as pytest does.
    """
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    return sorted(e.name for e in entries
                  if e.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(e.path, "pyvenv.cfg")))


def _inside(root: Path, path: Path) -> str | None:
    """`path` relative to `root` when it lies strictly inside it, else None."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(root)))
    except ValueError:
        try:  # the same place reached through a symlink (/tmp vs /private/tmp)
            rel = path.resolve().relative_to(root.resolve())
        except (ValueError, OSError):
            return None
    text = rel.as_posix()
    return None if text in ("", ".") else text


def mark_ignored(directory: Path) -> None:
    """Create `directory` (and parents) with a `.gitignore` holding `*`, unless it has one."""
    marker = directory / ".gitignore"
    if marker.is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".gitignore.{os.getpid()}.tmp"
    try:
        tmp.write_text(_IGNORE_ALL)
        os.replace(tmp, marker)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only tree: the filters above still apply


__all__ = ["OUT_DIR", "OwnOutputs", "mark_ignored"]
