"""`ciopt explain LABEL`: why an action was not a cache hit (exec/explain.py does the work)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ciopt.cli.build import PytestArgsCommand
from ciopt.cli.errors import fail
from ciopt.cli.output import emit_json, output_option

if TYPE_CHECKING:
    from ciopt.exec.explain import Change, Explanation
    from ciopt.graph.label import Label
    from ciopt.graph.target_graph import TargetGraph
    from ciopt.workspace import Workspace

# Nested "cause" explanations stop here: a chain of uncached genrules is explained link by link.
MAX_CAUSE_DEPTH = 20


@click.command(cls=PytestArgsCommand)
@click.argument("target")
@output_option
@click.pass_context
def explain(ctx: click.Context, target: str, output: str) -> None:
    """Why TARGET's action is not a cache hit: which parts of its key changed since its last run.

    TARGET is a label (//pkg:name, or :name relative to the current directory) or the path of
    a test file. Its ActionKey is computed from the tree as it is now and compared with the
    parts recorded the last time the action ran with this store: argv, declared env, every
    input file's digest, the toolchain (platform, interpreter, lockfiles, each installed
    distribution) and the attributes (outputs, requires, timeout).

    \b
    Status:
      hit           the key is in the cache (local or remote)
      changed       not cached: the listed parts differ from the last recorded run
      not_cached    same key as the last run, which failed (failures are never cached) or
                    whose result was evicted
      never_built   this store never ran it: nothing to compare with
    The changes always compare with the most recent recorded run that had another key:
    after a rebuild, what made it run; before one, what will.

    Arguments after `--` are the pytest arguments of the run to compare with, as in
    `ciopt test //... -- ARGS` (they are part of every py_test's argv).

    \b
    Examples:
      ciopt explain //app:bundle
      ciopt explain tests/test_api.py -o json | jq '.changes[]'
      ciopt explain //tests:test_slow -- -k "not slow"
      ciopt build //... --explain          # the same, for every action the build ran
    Exit: 0 explained, 2 unknown target, a target without an action, or the bypass on.
    """
    from ciopt.workspace import Workspace

    cwd = Path.cwd()
    ws = Workspace(cwd)
    if ws.store is None:
        fail(f"explain compares with the records of the local store, which the emergency bypass turns off "
             f"({ws.config.bypass_reason})")
    graph = ws.load()
    label = _resolve_target(ws, graph, target, cwd)
    exp = explain_label(ws, graph, label, list(ctx.meta.get("pytest_args", [])))
    if output == "json":
        emit_json(exp.to_json())
    else:
        sys.stdout.write(format_explanation(exp))


def _resolve_target(ws: Workspace, graph: TargetGraph, text: str, cwd: Path) -> Label:
    """One label: typed as a label, or the source file of exactly one test or genrule."""
    from ciopt.graph.target_graph import GraphError

    if not text.startswith((":", "//")) and (cwd / text).is_file():
        rel = Path(os.path.relpath(os.path.abspath(cwd / text), ws.root)).as_posix()
        owners = sorted(l for l, t in graph.targets.items() if t.kind in ("py_test", "sh_test", "genrule")
                        and any(ref.path == rel for ref in t.attrs.get("srcs", ())))
        if len(owners) == 1:
            return owners[0]
        if len(owners) > 1:
            fail(f"{text}: used by {len(owners)} targets ({', '.join(map(str, owners[:5]))}); name one")
        fail(f"{text}: not the source of any test or genrule; name a test file or a label "
             "(the tests that import a module: ciopt affected, ciopt query 'rdeps(//..., LABEL)')")
    try:
        labels = graph.expand([text], ws.package_of(cwd))
    except GraphError as e:
        fail(str(e))
    if len(labels) != 1:
        fail(f"'{text}' matches {len(labels)} targets; explain takes one (e.g. {labels[0]})")
    return labels[0]


def explain_label(ws: Workspace, graph: TargetGraph, label: Label, pytest_args: list[str],
                  depth: int = 0) -> Explanation:
    """The explanation of one target's action, with the toolchain a build would use."""
    from ciopt.exec.explain import ProducerNotCached, current_parts, explain
    from ciopt.exec.python_env import InterpreterError
    from ciopt.exec.key_record import read_record
    from ciopt.graph.action_graph import ActionGraph

    store = ws.store
    assert store is not None
    actions = ActionGraph.analyze(graph, [label], pytest_args)
    if label not in actions.actions:
        kind = graph.targets[label].kind
        fail(f"{label} is a {kind}: it has no action of its own, so no cache entry; explain a genrule or "
             "test that uses it")
    needs_python = any(a.mnemonic == "PyTest" for a in actions.actions.values())
    python = None
    try:
        python = ws.python_env()
    except InterpreterError:
        if needs_python:
            raise
    # The toolchain a build uses (Workspace.toolchain), or every key would differ.
    toolchain = ws.toolchain(graph, python)
    if python is not None and not needs_python:
        # A build without py_tests keys its genrules with the version of the Python running ciopt, one
        # with py_tests with the project's: compare with whichever the last recorded run used.
        recorded = read_record(store, str(label))
        plain = ws.toolchain(graph, None)
        if recorded is None or recorded.latest.toolchain.get("python") != _python_of(toolchain.base):
            toolchain = plain
    try:
        parts = current_parts(actions, graph.sources, store, toolchain, label, store.digest_function,
                              python.distributions if python is not None else None)
    except ProducerNotCached as e:
        from ciopt.exec.explain import Explanation

        exp = Explanation(str(label), None, None, "changed",
                          note=f"an input is an output of {e.producer}, which has no cached result, so this key "
                               "cannot be known before that runs")
        if depth < MAX_CAUSE_DEPTH:
            exp.cause = explain_label(ws, graph, e.producer, pytest_args, depth + 1)
        return exp
    remote = ws.open_remote_tier(lambda m: click.echo(f"ciopt: warning: {m}", err=True))
    try:
        return explain(store, parts, (lambda k: remote.get_entry(k) is not None) if remote is not None else None)
    finally:
        if remote is not None:
            remote.close()


def _python_of(toolchain_json: str) -> object:
    import json

    return json.loads(toolchain_json).get("python")


def _short(value: str | None) -> str:
    if value is None:
        return "(absent)"
    hexpart, slash, rest = value.partition("/")
    if slash and len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart):
        return f"{hexpart[:12]}…/{rest}"  # a digest: the size says more than the last 52 hex digits
    return value


def _change_line(c: Change) -> str:
    return f"  {c.part:<10} {c.name}: {_short(c.before)} -> {_short(c.after)}\n"


def format_explanation(exp: Explanation, after_build: bool = False, indent: str = "") -> str:
    """Human text: one headline, then one line per changed part; an uncached producer follows,
    indented, as the cause."""
    key = (exp.key or "?")[:12]
    prev = (exp.previous_key or "?")[:12]
    n = len(exp.changes)
    if exp.status == "hit":
        head = f"{exp.label}: cache hit ({exp.tier}), key {key}"
        head += f"; {n} part(s) differ from the previous recorded run (key {prev}):" if n else ""
    elif exp.status == "changed" and exp.key is None:
        head = f"{exp.label}: not a cache hit: {exp.note}"
    elif exp.status == "changed":
        verb = "ran" if after_build else "is not a cache hit"
        head = f"{exp.label} {verb}: {n} part(s) differ from the previous recorded run (key {prev} -> {key}):"
    elif exp.status == "not_cached":
        head = f"{exp.label}: not a cache hit: same key as its last recorded run ({key}), but {exp.note}"
        head += f"; compared with the run before (key {prev}):" if n else ""
    else:
        verb = "ran" if after_build else "is not a cache hit"
        head = f"{exp.label} {verb}: no earlier run recorded in this store (key {key}), nothing to compare with"
    text = indent + head + "\n" + "".join(indent + _change_line(c) for c in exp.changes)
    if exp.cause is not None:
        text += format_explanation(exp.cause, indent=indent + "    ")
    return text
