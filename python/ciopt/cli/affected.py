"""`ciopt affected` and `ciopt graph`: inference from source, no BUILD files needed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ciopt.cli.output import emit_json, output_option


@click.command()
@click.option("--base", required=True, help="Compare against this revision (a branch, tag or commit).")
@click.option("--head", default=None,
              help="Up to this revision. Default: the working tree, with staged, unstaged and untracked files.")
@click.option("--explain", is_flag=True, help="Print, for each selected test, the chain of files to a change.")
@output_option
def affected(base: str, head: str | None, explain: bool, output: str) -> None:
    """The tests a change can affect, from imports inferred in the source.

    Changed files come from git (renames and deletions count). Each is followed back
    through every file that imports it, transitively, to the test files; a change to a
    global input (pytest configuration, lockfiles, `selection.global_inputs`) selects
    every test. A test that could be affected is never left out.

    \b
    Examples:
      ciopt affected --base origin/main
      ciopt affected --base HEAD~1 --head HEAD -o json | jq -r '.test_files[]'
      pytest $(ciopt affected --base origin/main)        # test files, one per line
    """
    from ciopt.workspace import Workspace

    result = Workspace(Path.cwd()).affected(base, head)
    if output == "json":
        emit_json(result.to_json())
        return
    err = sys.stderr
    err.write(f"{len(result.changed_files)} changed file(s) since {base}; ")
    if result.all:
        err.write(f"ALL {len(result.test_files)} test files selected: "
                  f"{'; '.join(next(iter(result.reason.values()), []))}\n")
    else:
        err.write(f"{len(result.test_files)} test file(s) selected\n")
    if explain and not result.all:
        for test, chain in result.reason.items():
            err.write(f"  {' -> '.join(chain)}\n")
    for f, line, expr in result.unresolved[:10]:
        err.write(f"warning: {f}:{line}: dynamic import not followed: {expr}\n")
    sys.stdout.write("".join(f"{t}\n" for t in result.test_files))


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--output", "-o", type=click.Choice(["json", "dot", "text"]), default="json", show_default=True,
              help="json: {\"files\": {file: [deps]}} plus test files and unresolved imports; dot: Graphviz.")
def graph(path: Path | None, output: str) -> None:
    """The file-level dependency graph inferred from source (Python, JS/TS, shell, Dockerfiles).

    PATH (a directory or file; default: the whole workspace) limits which files are
    analysed, as `ruff analyze graph PATH` does. Paths stay workspace-relative and imports
    still resolve against the whole workspace and its source roots, so a file's edges are the
    same as in the whole graph, and they may point outside PATH. Results are cached in the
    store by content: an unchanged tree is not parsed again.

    \b
    Examples:
      ciopt graph -o json > deps.json
      ciopt graph src/mypkg -o text          # only files under src/mypkg, edges to anywhere
      ciopt graph src/ -o dot | dot -Tsvg > deps.svg
    """
    from ciopt.cli.errors import fail
    from ciopt.graph.target_graph import scan_sources
    from ciopt.infer.graph import build_file_graph
    from ciopt.workspace import Workspace

    ws = Workspace(path or Path.cwd())
    within = ""
    if path is not None:
        within = os.path.relpath(os.path.realpath(path), os.path.realpath(ws.root))
        if within == os.curdir:
            within = ""
        elif within == os.pardir or within.startswith(os.pardir + os.sep):
            fail(f"{path}: not inside the workspace {ws.root}")
        within = Path(within).as_posix()
    sources = scan_sources(ws.root, ws.store, ws.own_outputs)
    g = build_file_graph(ws.root, sources.digests, ws.store, ws.config.selection.source_roots, within=within)
    if output == "json":
        emit_json(g.to_json())
    elif output == "dot":
        lines = ["digraph deps {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
        for f, deps in g.edges.items():
            for d in deps:
                lines.append(f'  "{f}" -> "{d}";')
        lines.append("}")
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        for f, deps in g.edges.items():
            sys.stdout.write(f"{f}: {' '.join(deps)}\n")
