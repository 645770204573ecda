"""Finding the workspace root from a directory inside it.

The root is the nearest ancestor (the start included) holding
`config/ci-optimization.yaml`, not looking past the enclosing git work tree
(a repository nested in another workspace is its own); failing that, the
root of the git work tree the start lies in. A directory that is in neither has no workspace: callers
that can do without one (`ciopt config show`) fall back to the current
directory themselves.
"""

from __future__ import annotations

from ciopt.errors import UserError

import os
import subprocess
from pathlib import Path

from ciopt.config import CONFIG_RELPATH

__all__ = ["WorkspaceNotFound", "find_workspace_root", "git_toplevel"]


class WorkspaceNotFound(UserError):
    """No ancestor holds config/ci-optimization.yaml and the start is not in a git work tree."""

    def __init__(self, start: Path) -> None:
        self.start = start
        super().__init__(
            f"no workspace at {start}: no {CONFIG_RELPATH} in it or any parent directory, "
            "and it is not inside a git repository"
        )


def git_toplevel(start: Path) -> Path | None:
    """`git rev-parse --show-toplevel` run in `start`; None when git or a repository is missing."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=start,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    top = proc.stdout.strip()
    return Path(top) if proc.returncode == 0 and top else None


def find_workspace_root(start: Path) -> Path:
    """The workspace root for `start` (a directory or a file in it). Raises WorkspaceNotFound."""
    # abspath, not resolve(): a workspace reached through a symlink keeps the
    # path its user typed, so messages and relative paths read as expected.
    here = Path(os.path.abspath(start))
    if not here.is_dir():
        here = here.parent
    for directory in (here, *here.parents):
        if (directory / CONFIG_RELPATH).is_file():
            return directory
        # A git repository is a boundary: a repository nested inside another workspace
        # (a checkout under a build tree, a corpus in benches/) is its own workspace.
        if (directory / ".git").exists():
            return directory
    top = git_toplevel(here) if here.is_dir() else None
    if top is None:
        raise WorkspaceNotFound(here)
    return top
