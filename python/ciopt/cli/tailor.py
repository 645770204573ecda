"""`ciopt tailor`: write and update BUILD files from inferred targets."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ciopt.cli.errors import EXIT_FAILURE, exit_with, fail
from ciopt.cli.output import emit_json, output_option
from ciopt.infer.targets import InferredTarget


def infer_targets_for(root: Path, store: object) -> list[InferredTarget]:
    """The workspace's inferred targets (a seam: tests replace it with a fixed list)."""
    try:
        from ciopt.infer.graph import infer_targets
    except ImportError as e:  # inference not installed in this build: say so, no traceback
        fail(f"tailor: target inference is unavailable ({e})")
    return list(infer_targets(root, store))


@click.command("tailor")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--check", is_flag=True,
              help="Change nothing; exit 1 and list the BUILD files tailor would create or update (for CI).")
@output_option
def tailor(path: Path | None, check: bool, output: str) -> None:
    """Create and update BUILD files from inferred dependencies.

    Every test file becomes a py_test and every module a py_library, with `deps`
    inferred from imports. Existing BUILD files are edited in place: only the
    `srcs` and `deps` lists of targets tailor infers gain missing entries;
    comments, formatting, other attributes, hand-written deps and targets tailor
    does not infer (genrules, macros) are kept as they are. A second run
    changes nothing. PATH limits the run to packages at or below it.

    \b
    Examples:
      ciopt tailor                 # the whole workspace
      ciopt tailor src/app         # packages under src/app only
      ciopt tailor --check         # CI: exit 1 when BUILD files are out of date
      ciopt tailor --output json   # {"created": [...], "updated": [...], ...}
    """
    from ciopt.infer.tailor import apply_changes, plan_tailor
    from ciopt.workspace import Workspace

    start = path if path is not None else Path.cwd()
    ws = Workspace(start)
    try:
        under = Path(os.path.abspath(start)).relative_to(ws.root).as_posix()
    except ValueError:
        fail(f"{start}: outside the workspace at {ws.root}")
    under = "" if under == "." else under
    plan = plan_tailor(ws.root, infer_targets_for(ws.root, ws.store), under)
    if not check:
        apply_changes(ws.root, plan.changes)
    for note in plan.notes:
        click.echo(f"ciopt: note: {note}", err=True)
    if output == "json":
        emit_json({"created": plan.created, "updated": plan.updated, "check": check,
                   "changed": bool(plan.changes), "notes": plan.notes})
    else:
        verb_created, verb_updated = ("would create", "would update") if check else ("created", "updated")
        for change in plan.changes:
            click.echo(f"{verb_created if change.created else verb_updated} {change.path}")
        if not plan.changes:
            click.echo("BUILD files are up to date", err=True)
        elif check:
            click.echo("ciopt: BUILD files are out of date; run `ciopt tailor` to update them", err=True)
    if check and plan.changes:
        exit_with(EXIT_FAILURE)
