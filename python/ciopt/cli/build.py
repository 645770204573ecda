"""`ciopt build`, `ciopt test` and `ciopt query`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ciopt.cli.errors import exit_with
from ciopt.cli.output import emit_json, output_option


def _common(f):
    f = click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                     help="Actions run in parallel (default: execution.jobs, else one per CPU).")(f)
    f = click.option("--progress/--no-progress", default=None,
                     help="Live progress display (default: on when stderr is a terminal).")(f)
    f = click.option("--remote", metavar="ADDR", default=None,
                     help="Run actions on the executors of the `ciopt scheduler` at ADDR (tcp://HOST:PORT); "
                          "default: remote_execution.scheduler when remote_execution.enabled. CurveZMQ keys "
                          "come from $CIOPT_CURVE_SECRET and $CIOPT_SERVER_KEY.")(f)
    f = click.option("--explain", is_flag=True,
                     help="For every action that ran (a cache miss), print which parts of its key differ from "
                          "its previous run (as `ciopt explain`); with -o json, an \"explain\" list.")(f)
    return output_option(f)


def _run(command: str, patterns: tuple[str, ...], jobs: int | None, keep_going: bool, progress: bool | None,
         output: str, flaky_attempts: int | None = None, junit: Path | None = None,
         remote: str | None = None, explain: bool = False, **test_options: object) -> None:
    from ciopt.cli.progress import Progress
    from ciopt.workspace import Workspace

    ws = Workspace(Path.cwd())
    for w in ws.config.warnings:
        click.echo(f"ciopt: warning: {w}", err=True)
    if ws.bypass:
        click.echo(f"ciopt: EMERGENCY BYPASS ({ws.config.bypass_reason}): no cache is read or written, "
                   "everything runs plainly", err=True)
    show = progress if progress is not None else (sys.stderr.isatty() and output != "json")
    bar = Progress(enabled=show)

    def loaded(graph, actions, wanted) -> None:
        bar.start(len(actions.actions))

    # A CI runner cancelling the job sends SIGTERM: stop the actions' process groups exactly
    # as for Ctrl-C instead of leaving them running in their own sessions.
    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)

    try:
        result = ws._run(command, list(patterns), jobs=jobs, keep_going=keep_going, flaky_attempts=flaky_attempts,
                         listener=bar.event, on_loaded=loaded, remote=remote,
                         warn=lambda m: click.echo(f"ciopt: warning: {m}", err=True), **test_options)
    finally:
        bar.stop()
    if junit is not None:
        from ciopt.exec.junit import write_junit

        write_junit(junit, result)
    explained = _explain_ran(ws, result) if explain else None
    if output == "json":
        doc = result.to_json()
        if explained is not None:
            doc["explain"] = [e.to_json() for e in explained]
        emit_json(doc)
    elif explained is not None:
        from ciopt.cli.explain import format_explanation

        sys.stderr.write("".join(format_explanation(e, after_build=True) for e in explained))
    _summary(result, show_failures=not show)
    exit_with(result.exit_code)


def _explain_ran(ws, result) -> list:
    """`--explain`: why each action that ran missed, from the key parts the build just recorded."""
    from ciopt.exec.explain import explain_recorded

    if ws.store is None:
        click.echo("ciopt: note: --explain: the emergency bypass is on, nothing was recorded", err=True)
        return []
    ran = [o for o in result.outcomes.values() if o.key and o.status in ("executed", "failed", "cached_remote")]
    return [explain_recorded(ws.store, str(o.label), o.key) for o in sorted(ran, key=lambda o: o.label)]


def _size(n: int) -> str:
    from ciopt.size import format_size

    return format_size(n)


def _summary(result, show_failures: bool) -> None:
    from ciopt.exec.engine import log_tail

    err = sys.stderr
    if result.python is not None and result.counts()["executed"] + result.counts()["failed"]:
        err.write(f"python: {result.python.executable} ({result.python.implementation} {result.python.version}; "
                  f"{result.python.reason})\n")
    for note in result.notes:
        err.write(f"note: {note}\n")
    if show_failures:
        for o in result.failed:
            err.write(f"FAILED {o.label}: {o.message}\n")
    for o in result.failed:
        tail = log_tail(o.log, 15)
        if tail:
            err.write(f"---- {o.label} (last lines of {o.log})\n{tail}\n----\n")
    c = result.counts()
    elapsed = result.finished_at - result.started_at
    err.write(f"{'FAILED' if result.exit_code else 'OK'}: {c['actions']} actions: {c['executed']} executed, "
              f"{c['cached_local'] + c['cached_remote']} cached, {c['failed']} failed, {c['skipped']} skipped "
              f"in {elapsed:.2f}s (loading {result.loading_s:.2f}s)\n")
    if result.command == "test":
        t = result.test_counts()
        unaffected = f", {t['skipped_unaffected']} skipped (unaffected)" if result.selection else ""
        err.write(f"tests: {len(result.tests)} total, {t['passed']} passed ({t['cached']} cached), "
                  f"{t['flaky']} flaky, {t['failed']} failed, {t['timeout']} timed out, {t['not_run']} not run"
                  f"{unaffected}\n")
        if result.selection and result.selection.get("base"):
            err.write(f"selection: changes since {str(result.selection['base'])[:12]} "
                      f"({result.selection['source']}) affect {result.selection['affected']} of "
                      f"{len(result.tests)} tests\n")
        for label in result.tests:
            o = result.outcomes.get(label)
            if o is not None and o.test_outcome == "flaky":
                err.write(f"FLAKY {label}: passed on attempt {o.attempts}\n")
    rc = result.remote_cache
    if rc:
        err.write(f"remote cache: {rc['hits']} hits, {rc['misses']} misses, {rc['uploads']} uploaded "
                  f"({_size(int(rc['bytes_down']))} down, {_size(int(rc['bytes_up']))} up)"
                  + (f", {rc['errors']} errors" if rc["errors"] else "")
                  + (f", {rc['verify_failures'] + rc['signature_failures']} refused" if
                     rc["verify_failures"] or rc["signature_failures"] else "") + "\n")
    if result.bypass:
        err.write("note: emergency bypass was on: nothing was cached\n")


@click.command()
@click.argument("patterns", nargs=-1, required=True)
@_common
@click.option("-k", "--keep-going", is_flag=True, help="Keep building what does not depend on a failure.")
def build(patterns: tuple[str, ...], jobs: int | None, keep_going: bool, progress: bool | None, output: str,
          remote: str | None, explain: bool) -> None:
    """Build targets: //pkg:name, //pkg/..., //pkg:all, or :name relative to the current directory.

    Each action runs in a fresh directory holding only its declared inputs; results are
    cached by content, so an unchanged action never runs twice. Outputs land in ciopt-out/.

    \b
    Examples:
      ciopt build //...
      ciopt build //app:bundle -j 8 --keep-going
      ciopt build //... -o json | jq '.summary'
      ciopt build //... --remote tcp://ci-scheduler:5555 -j 16
    Exit: 0 success, 1 an action failed, 2 bad BUILD file, pattern or configuration.
    """
    _run("build", patterns, jobs, keep_going, progress, output, remote=remote, explain=explain)


class PytestArgsCommand(click.Command):
    """Everything after `--` goes to pytest, not to the patterns."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["pytest_args"] = args[i + 1:]
            args = args[:i]
        return super().parse_args(ctx, args)


@click.command(cls=PytestArgsCommand)
@click.argument("patterns", nargs=-1, required=True)
@_common
@click.option("--flaky-attempts", type=click.IntRange(min=1), default=None,
              help="Run a failing test up to N times; a later pass is reported FLAKY (and not cached).")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a JUnit XML report to this file (a testsuite per test target, a testcase per test).")
@click.option("--affected-since", metavar="REV", default=None,
              help="Run only the tests a change since REV can affect (as `ciopt affected --base REV`, "
                   "uncommitted changes included); the others are reported skipped_unaffected.")
@click.option("--batch/--no-batch", default=None,
              help="Several py_test files per pytest process (default: execution.batch, on). --no-batch runs "
                   "one file per process.")
@click.pass_context
def test(ctx: click.Context, patterns: tuple[str, ...], jobs: int | None, progress: bool | None, output: str,
         flaky_attempts: int | None, junit: Path | None, remote: str | None, affected_since: str | None,
         batch: bool | None, explain: bool) -> None:
    """Run test targets (py_test, sh_test, test_suite) matched by the patterns.

    py_test runs with the project's interpreter (python.interpreter, else $VIRTUAL_ENV, else
    .venv/ or venv/, else python3 on PATH; never ciopt's own) with the source roots on
    PYTHONPATH. Test files are packed into a few pytest processes (one per -j slot) but
    cached per file: a file that passed with exactly the same inputs, arguments and installed
    distributions is not run again; its result and log (ciopt-out/testlogs/) are reused.
    One failing file never fails its neighbours; a crashed batch re-runs its unreported files
    one per process. Arguments after `--` go to pytest (and into every test's cache key).

    \b
    Examples:
      ciopt test //...
      ciopt test //... --affected-since origin/main -o json
      ciopt test //api/... --flaky-attempts 3 --junit reports/junit.xml
      ciopt test //... -- -k "not slow" -x
    Exit: 0 all passed, 1 a test failed, 2 bad input.
    """
    _run("test", patterns, jobs, True, progress, output, flaky_attempts, junit, remote, explain,
         batch=batch, pytest_args=list(ctx.meta.get("pytest_args", [])), affected_since=affected_since)


@click.command()
@click.argument("expression")
@output_option
def query(expression: str, output: str) -> None:
    """Query the target graph; prints one label per line.

    \b
    EXPRESSION:
      //pkg/...                   targets matching a pattern
      deps(X)                     X and everything it depends on
      rdeps(//..., X)             targets in the universe that depend on X
      kind(py_test, X)            targets of a rule kind (a regex)
      tests(X)                    test targets in X, test_suites expanded
      X + Y, X - Y                union and difference
    """
    from ciopt.workspace import Workspace

    labels = Workspace(Path.cwd()).query(expression, Path.cwd())
    if output == "json":
        emit_json({"query": expression, "labels": [str(l) for l in labels]})
    else:
        sys.stdout.write("".join(f"{l}\n" for l in labels))
