"""`ciopt ci`: helpers a CI file calls around `ciopt test` (GitHub Actions first, GitLab second,
any CI through options)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ciopt.cli.errors import EXIT_USAGE, exit_with, fail
from ciopt.cli.output import emit_json, output_option

if TYPE_CHECKING:
    from ciopt.config import Config


@click.group()
def ci() -> None:
    """Helpers for CI files: the base revision for selection, a step summary, failure annotations.

    \b
      ciopt ci base                    the revision to pass to `ciopt test --affected-since`
      ciopt ci summary                 Markdown summary of the last build ($GITHUB_STEP_SUMMARY)
      ciopt ci annotate --junit F      ::error annotations for failed tests
      ciopt ci config --set K=V --out F   this run's configuration (for CIOPT_CONFIG)
      ciopt ci mark-green              remember HEAD as this branch's last green commit

    \b
    A workflow that uses them all: .github/workflows/ci-unified.yml
      args=(); base=$(ciopt ci base) && args=(--affected-since "$base")
      ciopt test //... "${args[@]}" --junit junit.xml -o json > build.json
      ciopt ci summary --from-json build.json; ciopt ci annotate --junit junit.xml
    """


def _workspace_config() -> tuple[Path, Config]:
    from ciopt.cli.config_here import load_reporting
    from ciopt.workspace_root import find_workspace_root

    root = find_workspace_root(Path.cwd())
    return root, load_reporting(root)


def _warn(message: str) -> None:
    click.echo(f"ciopt: warning: {message}", err=True)


# -- base ----------------------------------------------------------------------------------------


@ci.command()
@click.option("--target-branch", metavar="BRANCH", default=None,
              help="The branch a pull/merge request goes into (default: from the CI: GITHUB_BASE_REF, "
                   "CI_MERGE_REQUEST_TARGET_BRANCH_NAME).")
@click.option("--before", metavar="SHA", default=None,
              help="The pushed branch's previous tip (default: from the CI: the push event's `before`, "
                   "CI_COMMIT_BEFORE_SHA).")
@output_option
def base(target_branch: str | None, before: str | None, output: str) -> None:
    """Print the base revision for test selection: `ciopt test --affected-since $(ciopt ci base)`.

    \b
    In order, the first that resolves:
      selection.base (config); the request's target branch (merge-base with HEAD);
      the push's `before` commit; the last green commit (BuildRecords, then the shared
      cache: `ciopt ci mark-green`); the merge-base with origin/HEAD, unless that is HEAD.
    The commit goes to stdout, the reason to stderr (-o json: {"base", "reason", "kind", ...}).

    \b
    Exit 2 when there is no base, saying why; most often a shallow clone, e.g. on GitHub:
      - uses: actions/checkout@...  with: {fetch-depth: 0}
    A CI should then run every test: `base=$(ciopt ci base) && args=(--affected-since "$base")`.
    """
    from ciopt.ci.base import find_base
    from ciopt.ci.provider import detect

    root, cfg = _workspace_config()
    env = os.environ
    ci_env = detect(env)
    remote_holder: list[object] = []

    def last_green() -> Iterator[tuple[str, str]]:
        from ciopt.ci import last_green as lg

        for commit in lg.from_records(cfg.analytics.path, root):
            yield commit, f"BuildRecords {cfg.analytics.path}"
        if not cfg.use_remote_cache:
            return
        from ciopt.workspace import Workspace

        ws = Workspace(root)
        remote = ws.open_remote_tier(_warn)
        if remote is None or ws.store is None:
            return
        remote_holder.append(remote)
        for branch in dict.fromkeys(b for b in (ci_env.branch, ci_env.default_branch) if b):
            commit = lg.from_remote(remote, ws.store, branch)
            if commit:
                yield commit, f"shared cache, branch {branch}"

    try:
        found = find_base(root, cfg.selection.base, env, target_branch=target_branch, before=before,
                          last_green=last_green)
    finally:
        for remote in remote_holder:
            remote.close()  # type: ignore[attr-defined]
    if output == "json":
        emit_json({"base": found.commit, "reason": found.source, "kind": found.kind, "shallow": found.shallow,
                   "provider": ci_env.provider, "event": ci_env.event})
    if found.commit is None:
        click.echo(f"ciopt: error: {found.source}", err=True)
        exit_with(EXIT_USAGE)
    if output != "json":
        click.echo(found.commit)
        click.echo(f"ciopt: base {found.commit[:12]}: {found.source}", err=True)


# -- summary -------------------------------------------------------------------------------------


@ci.command()
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A `ciopt test -o json` (or build) document; default: the newest BuildRecord of this workspace.")
@output_option
def summary(from_json: Path | None, output: str) -> None:
    """Summarize the last build in Markdown, for the job page.

    Wall time, time saved by the cache and by selection (from each skipped action's last
    real run in the BuildRecords), cache hit rates per tier, the slowest targets, failures
    with their log tails, flaky tests. Appended to $GITHUB_STEP_SUMMARY when it is set,
    printed otherwise; -o json prints the figures instead.

    \b
    Examples:
      ciopt test //... -o json > build.json; ciopt ci summary --from-json build.json
      ciopt ci summary                       # the newest recorded build, e.g. after `ciopt test`
    """
    from ciopt.ci import summary as s

    root, cfg = _workspace_config()
    records = cfg.analytics.path
    if from_json is not None:
        try:
            doc = json.loads(from_json.read_text(encoding="utf-8"))
            build = s.from_json(doc if isinstance(doc, dict) else {}, str(from_json))
        except OSError as e:
            fail(f"--from-json {from_json}: {e.strerror or e}")
        except ValueError as e:
            fail(f"--from-json {from_json}: {e}")
    else:
        import sqlite3

        try:
            found = s.from_records(records, root)
        except sqlite3.Error as e:
            fail(f"{records}: cannot read the BuildRecords: {e}")
        if found is None:
            fail(f"no build of {root} is recorded in {records}: run `ciopt test` first, or pass --from-json FILE")
        build = found
    result = s.summarize(build, s.history(records, {i.mnemonic for i in build.items if i.mnemonic}))
    if output == "json":
        emit_json(result.to_json())
        return
    text = s.to_markdown(result)
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text + "\n")
        click.echo(f"ciopt: summary appended to {target}", err=True)
    else:
        click.echo(text)


# -- annotate ------------------------------------------------------------------------------------


@ci.command()
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JUnit XML: `ciopt test --junit FILE` or `pytest --junitxml FILE`.")
@click.option("--base-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the tests ran, which the report's paths are relative to (default: here).")
@output_option
def annotate(junit: Path, base_dir: Path | None, output: str) -> None:
    """Print a GitHub annotation for every failed test (and a warning for every flaky one).

    The file and line come from the failure's traceback (the assertion in the test file,
    else the frame that raised); paths are made relative to the repository root, which is
    what GitHub resolves them against. Messages are escaped per GitHub's workflow command
    rules. Exit 0 whether or not tests failed: the test step decides the build.

    \b
    Example (a step after the tests, `if: failure()` or always):
      ciopt ci annotate --junit reports/junit.xml
      ::error file=tests/test_stock.py,line=16,title=tests.test_stock::test_broken failed::assert 10 == 11
    """
    import xml.etree.ElementTree as ET

    from ciopt.ci.annotate import annotations
    from ciopt.workspace_root import git_toplevel

    where = Path(os.path.abspath(base_dir or Path.cwd()))
    top = git_toplevel(where)
    try:
        found = annotations(junit, where, Path(os.path.abspath(top)) if top else None)
    except OSError as e:
        fail(f"--junit {junit}: {e.strerror or e}")
    except ET.ParseError as e:
        fail(f"--junit {junit}: not JUnit XML: {e}")
    if output == "json":
        emit_json({"junit": str(junit), "annotations": [a.to_json() for a in found]})
        return
    for a in found:
        click.echo(a.command())
    errors = sum(1 for a in found if a.level == "error")
    click.echo(f"ciopt: {errors} failed test(s), {len(found) - errors} flaky in {junit}", err=True)


# -- config --------------------------------------------------------------------------------------


@ci.command("config")
@click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE",
              help="A configuration key for this run, e.g. cache.remote.read_only=true; repeat. "
                   "An empty VALUE is null.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file to write; point CIOPT_CONFIG at it.")
@output_option
def config_command(pairs: tuple[str, ...], out: Path, output: str) -> None:
    """Write this run's configuration: the project's own with KEY=VALUE set on top.

    The configuration has no per-key environment variables; a CI step sets what differs per
    run (the shared cache's URL, read-only for forks) this way and exports CIOPT_CONFIG. The
    result is validated: a bad value fails here, naming its key (exit 2).

    \b
    Example (GitHub Actions):
      ciopt ci config --out "$RUNNER_TEMP/ciopt.yaml" --set enabled=true \\
          --set cache.remote.url="$CACHE_URL" --set cache.remote.read_only="$FORK"
      echo "CIOPT_CONFIG=$RUNNER_TEMP/ciopt.yaml" >> "$GITHUB_ENV"
    """
    from ciopt.ci.overlay import parse_settings, write_overlay
    from ciopt.workspace_root import find_workspace_root

    root = find_workspace_root(Path.cwd())
    settings = parse_settings(pairs, root)
    merged_onto = write_overlay(root, settings, out, os.environ)
    if output == "json":
        emit_json({"file": str(out), "merged_onto": str(merged_onto) if merged_onto else None, "set": settings})
        return
    click.echo(str(out))
    click.echo(f"ciopt: wrote {out} ({merged_onto or 'defaults'} + {len(settings)} key(s))", err=True)


# -- mark-green ----------------------------------------------------------------------------------


@ci.command("mark-green")
@click.option("--commit", "rev", default="HEAD", show_default=True, help="The commit whose tests passed.")
@click.option("--branch", default=None, help="Default: the branch the CI builds (GITHUB_REF_NAME, CI_COMMIT_BRANCH), "
                                              "else the checked-out branch.")
@output_option
def mark_green(rev: str, branch: str | None, output: str) -> None:
    """Remember a commit as its branch's last green one, in the shared cache.

    `ciopt ci base` falls back to it when the CI names no base (a scheduled or manual run,
    a branch's first push) on runners that keep no BuildRecords. Run it after the tests
    passed, on trusted (writing) runners only; with cache.remote.read_only nothing is written.
    """
    from ciopt.ci.base import commit_of, current_branch
    from ciopt.ci.last_green import remember
    from ciopt.ci.provider import detect
    from ciopt.workspace import Workspace

    ws = Workspace(Path.cwd())
    commit = commit_of(ws.root, rev)
    if commit is None:
        fail(f"--commit {rev}: not a commit in {ws.root}")
    branch = branch or detect(os.environ).branch or current_branch(ws.root)
    if not branch:
        fail("no branch name: HEAD is detached and the CI names none; pass --branch NAME")
    if not ws.config.use_remote_cache:
        fail("no shared cache: cache.remote.url is not set (or `enabled` is false, or the bypass is on)")
    if ws.config.cache.remote.read_only:
        fail("cache.remote.read_only is true: nothing can be written")
    remote = ws.open_remote_tier(_warn)
    if remote is None or ws.store is None:
        fail("the shared cache cannot be used (see the warning above)")
    try:
        remember(remote, ws.store, branch, commit)
    finally:
        remote.close()
    if remote.broken is not None:
        fail(f"remote cache {remote.backend.name}: {remote.broken}")
    if output == "json":
        emit_json({"branch": branch, "commit": commit, "cache": remote.backend.name})
        return
    click.echo(f"ciopt: {commit[:12]} is the last green commit of {branch} in {remote.backend.name}", err=True)
