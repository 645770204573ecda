"""Exec roots: a fresh directory per action holding only its declared inputs.

Inputs are copied, not linked: a hardlink would let an action that writes to an input
corrupt the source tree (or the materialized output of another action). Relative reads of
undeclared files fail because those files are simply not there. This is not a security
boundary: an action can still read absolute paths (docs/execution.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path


class OutputError(Exception):
    """A declared output is missing, not a regular file, or escapes the exec root."""


class Sandbox:
    def __init__(self, base: Path, name: str) -> None:
        base.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-60:]
        self.dir = Path(tempfile.mkdtemp(prefix=safe + ".", dir=base))
        self.root = self.dir / "execroot"
        self.root.mkdir()
        self.tmp = self.dir / "tmp"
        self.tmp.mkdir()

    def stage(self, files: Iterable[tuple[str, Path, bool]]) -> None:
        """Copy (exec path, source file, executable) into the exec root."""
        made: set[Path] = set()
        for rel, src, executable in files:
            dest = self.root / rel
            parent = dest.parent
            if parent not in made:
                parent.mkdir(parents=True, exist_ok=True)
                made.add(parent)
            shutil.copyfile(src, dest)
            os.chmod(dest, 0o755 if executable else 0o644)

    def prepare_outputs(self, outputs: Iterable[str]) -> None:
        # Bazel's convention: output directories exist before the command runs.
        for rel in outputs:
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)

    def output(self, rel: str) -> Path:
        """The produced file for a declared output, checked to be a regular file inside the exec root."""
        path = self.root / rel
        if not os.path.lexists(path):
            raise OutputError(f"declared output '{rel}' was not created")
        if path.is_symlink():
            target = os.path.realpath(path)
            if not target.startswith(str(self.root.resolve()) + os.sep):
                raise OutputError(f"declared output '{rel}' is a symlink escaping the exec root (-> {target})")
            raise OutputError(f"declared output '{rel}' is a symlink; outputs must be regular files")
        if not path.is_file():
            raise OutputError(f"declared output '{rel}' is not a regular file")
        resolved = path.resolve()
        if not str(resolved).startswith(str(self.root.resolve()) + os.sep):
            raise OutputError(f"declared output '{rel}' escapes the exec root")
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
