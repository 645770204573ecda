"""`ciopt hash`: digests in the exact format of b3sum / sha256sum."""

from __future__ import annotations

import os
from pathlib import Path
import sys

import click

from ciopt import hash_files, hash_tree
from ciopt.own_outputs import OwnOutputs
from ciopt.store_location import default_store_path
from ciopt.cli.errors import fail
from ciopt.cli.output import output_option


def _escape(path: str, digest: str) -> tuple[str, bool]:
    # b3sum and coreutils escape names that would break the line format and flag the
    # line with a leading backslash; b3sum also escapes \r.
    specials = ("\\", "\n", "\r") if digest == "blake3" else ("\\", "\n")
    if not any(c in path for c in specials):
        return path, False
    out = path.replace("\\", "\\\\").replace("\n", "\\n")
    if digest == "blake3":
        out = out.replace("\r", "\\r")
    return out, True


@click.command("hash")
# Plain strings: click.Path would stat every argument, and `ciopt hash $(git ls-files)`
# passes thousands. Paths are checked by the one native call that hashes them.
@click.argument("paths", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--digest",
    type=click.Choice(["blake3", "sha256"]),
    default="blake3",
    show_default=True,
    help="sha256 matches sha256sum and Bazel/REAPI digests.",
)
@click.option("--no-gitignore", is_flag=True, help="When recursing into directories, include gitignored files.")
@output_option
def hash_command(paths: tuple[str, ...], digest: str, no_gitignore: bool, output: str) -> None:
    """Print `<hex>  <path>` for every file, byte for byte like b3sum / sha256sum.

    Files are hashed in parallel. A directory is walked recursively, honoring
    .gitignore; its files print as DIR/relative/path in sorted order.

    \b
    Examples:
      ciopt hash src/main.py
      ciopt hash --digest sha256 dist/*.whl
      ciopt hash -o json src/ | jq '.files | length'
    """
    try:
        # Fast path, the common case: every argument is a readable file (or a link to one).
        # One parallel native call, no per-argument stat from Python.
        digests = hash_files(paths, digest=digest)
    except OSError:
        # Something is missing, a directory, or unreadable: sort it out argument by argument.
        rows = _rows_by_argument(paths, digest, not no_gitignore)
    else:
        rows = [(p, d.hash, d.size) for p, d in zip(paths, digests)]

    if output == "json":
        from ciopt.cli.output import emit_json

        emit_json({"digest": digest, "files": [{"path": p, "hash": h, "size": s} for p, h, s in rows]})
        return
    specials = ("\\", "\n", "\r") if digest == "blake3" else ("\\", "\n")
    names = "".join([p for p, _, _ in rows])
    if any(c in names for c in specials):
        text = "".join([_line(p, h, digest) for p, h, _ in rows])
    else:
        text = "".join([f"{h}  {p}\n" for p, h, _ in rows])
    out = sys.stdout.buffer
    out.write(text.encode("utf-8", "surrogateescape"))
    out.flush()


def _line(path: str, h: str, digest: str) -> str:
    shown, escaped = _escape(path, digest)
    return ("\\" if escaped else "") + h + "  " + shown + "\n"


def _rows_by_argument(paths: tuple[str, ...], digest: str, gitignore: bool) -> list[tuple[str, str, int]]:
    for p in paths:
        if not os.path.lexists(p):
            fail(f"{p}: no such file or directory")
    rows: list[tuple[str, str, int]] = []
    # Consecutive plain files are hashed in one parallel batch; order follows the arguments.
    batch: list[str] = []

    def flush() -> None:
        if batch:
            for path, d in zip(batch, hash_files(batch, digest=digest)):
                rows.append((path, d.hash, d.size))
            batch.clear()

    for p in paths:
        if os.path.isdir(p):
            flush()
            # ciopt's own outputs under the directory are not content, .gitignore or not.
            excludes = OwnOutputs.of(Path(p), default_store_path()).walk_excludes()
            tree = hash_tree(p, digest=digest, gitignore=gitignore, excludes=excludes)
            entries = tree.entries()
            links = [e for e in entries if e.is_symlink]
            # Like b3sum on the same names: symlinks are followed, dangling ones skipped.
            followed = {}
            live = [e.path for e in links if os.path.exists(os.path.join(p, e.path))]
            if live:
                followed = dict(zip(live, hash_files([os.path.join(p, x) for x in live], digest=digest)))
            prefix = p.rstrip("/") + "/" if p not in ("", ".") else ""
            for e in entries:
                d = followed.get(e.path) if e.is_symlink else e.digest
                if d is None or (e.is_symlink and os.path.isdir(os.path.join(p, e.path))):
                    continue
                rows.append((prefix + e.path if p != "." else e.path, d.hash, d.size))
        else:
            batch.append(p)
    flush()
    return rows


__all__ = ["hash_command"]
