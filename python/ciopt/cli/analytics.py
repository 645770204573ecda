"""`ciopt analytics report|import|pull`: the BuildRecords of a team, as figures."""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from ciopt.cli.errors import EXIT_FAILURE, exit_with, fail
from ciopt.cli.output import emit_json

# analytics.retention_days when no workspace configures it (config.py's default).
DEFAULT_RETENTION_DAYS = 90

records_option = click.option(
    "--records", "records_path", type=click.Path(path_type=Path), default=None,
    help="The records database (default: analytics.path of the workspace, else records.sqlite beside the store).")


def records_location(records_path: Path | None) -> tuple[Path, dict[str, float], object | None]:
    """(records database, hardware.costs, config or None outside a workspace)."""
    from ciopt.cli.config_here import config_here

    cfg = config_here()
    if records_path is not None:
        path = records_path
    elif cfg is not None:
        path = Path(cfg.analytics.path)
    else:
        from ciopt.store_location import default_store_path

        path = Path(default_store_path()) / "records.sqlite"
    costs = dict(cfg.hardware.costs) if cfg is not None else {}
    return path, costs, cfg


def parse_since(value: str, now: float | None = None) -> float | None:
    """`7d` (today and the 6 days before, whole UTC days), `12h`, `2024-05-01`, or `all` (None)."""
    from ciopt.analytics.metrics import days_ago

    now = time.time() if now is None else now
    text = value.strip().lower()
    if text in ("all", ""):
        return None
    m = re.fullmatch(r"(\d+)\s*([dhw])", text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if n < 1:
            raise ValueError(f"{value!r}: must be at least 1")
        if unit == "h":
            return now - n * 3600
        return days_ago(n * (7 if unit == "w" else 1), now)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r}: expected Nd (days), Nw (weeks), Nh (hours), a date such as 2024-05-01, "
                         "or all") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _require_records(path: Path) -> None:
    if not path.is_file():
        fail(f"no build records at {path}: they are written by `ciopt build` and `ciopt test`; "
             "`ciopt analytics import` and `ciopt analytics pull` bring others (or pass --records PATH)")


@click.group()
def analytics() -> None:
    """Figures over the BuildRecords: report them, import CI history, pull a team's records.

    \b
      ciopt analytics report --since 7d      wall time, time saved, hit rates, slowest, flaky, cost
      ciopt analytics report -o markdown     the same as Markdown (a CI step summary)
      ciopt analytics import junit.xml runs.json jobs.json   a baseline from before ciopt
      ciopt analytics pull                   merge the records runners pushed to the shared cache
      ciopt dashboard --out DIR              the same figures as one HTML page

    Every `ciopt build`/`test` records what it did in records.sqlite beside the local store
    (`analytics.path`). With `analytics.enabled: true` and a Redis `cache.remote.url`, each
    record is also pushed to the shared cache, so that records outlive ephemeral runners.
    Definitions of every figure: docs/analytics.md.
    """


@analytics.command()
@click.option("--since", default="7d", show_default=True,
              help="Window start: Nd (today and the N-1 days before), Nw, Nh, a date (2024-05-01), or all.")
@click.option("--until", default=None, help="Window end (exclusive): a date such as 2024-06-01.")
@click.option("--branch", default=None, help="Only invocations on this branch (default: every branch).")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True, help="Rows per table.")
@records_option
@click.option("--output", "-o", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True,
              help="text for terminals; markdown for a CI step summary; json: one document on stdout.")
def report(since: str, until: str | None, branch: str | None, limit: int, records_path: Path | None,
           output: str) -> None:
    """Print the figures of the recorded builds and tests.

    Wall time (p50/p90, trend), time saved by the cache and by selection, cache hit rate per
    tier, where the wall time goes, tests run vs skipped, the targets most often on the
    critical path, the slowest targets (p50/p95), flaky tests, executor busy time and cost,
    and the comparison with imported pre-ciopt history.

    \b
      ciopt analytics report                     the last 7 days, every branch
      ciopt analytics report --since all --branch main -o json | jq .time_saved
    """
    from ciopt.analytics import metrics
    from ciopt.analytics.report import render_markdown, render_text, report_data

    try:
        start = parse_since(since)
    except ValueError as e:
        fail(f"--since {e}")
    try:
        end = parse_since(until) if until else None
    except ValueError as e:
        fail(f"--until {e}")
    path, costs, _ = records_location(records_path)
    _require_records(path)
    try:
        data = report_data(path, metrics.Filter(since=start, until=end, branch=branch), costs, limit)
    except sqlite3.Error as e:
        fail(f"{path}: cannot read the build records: {e}")
    if output == "json":
        emit_json(data)
    elif output == "markdown":
        click.echo(render_markdown(data), nl=False)
    else:
        click.echo(render_text(data), nl=False)


@analytics.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--baseline/--not-baseline", default=True, show_default=True,
              help="Mark the runs as pre-ciopt history (kept past retention; what later runs are compared with). "
                   "--not-baseline: CI runs since adopting ciopt, the like-for-like side of the comparison.")
@click.option("--branch", default=None, help="Branch of JUnit reports (they do not say).")
@click.option("--commit", default=None, help="Commit of JUnit reports.")
@records_option
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON document on stdout (messages go to stderr).")
def import_(files: tuple[Path, ...], baseline: bool, branch: str | None, commit: str | None,
            records_path: Path | None, output: str) -> None:
    """Import CI history: JUnit XML reports and GitHub Actions runs and jobs.

    Each FILE is read by its content:

    \b
      JUnit XML (<testsuites>/<testsuite>)      one test invocation per file
      gh api repos/O/R/actions/runs > runs.json one invocation per completed workflow run
      gh api repos/O/R/actions/runs/ID/jobs     its jobs, as the run's actions
      (gh api --paginate output, several documents in one file, is read too)

    Importing the same run or report again adds nothing. The exact shapes read:
    docs/analytics.md.
    """
    from ciopt.analytics.exchange import merge
    from ciopt.analytics.import_github import GithubHistory
    from ciopt.analytics.import_junit import read_junit

    path, _, cfg = records_location(records_path)
    history = GithubHistory(baseline=baseline)
    docs = []
    kinds = {"junit": 0, "github": 0}
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as e:
            fail(f"{file}: {e.strerror or e}")
        head = data.lstrip()[:1]
        if head == b"<":
            docs.append(read_junit(file, data, baseline=baseline, branch=branch, commit=commit))
            kinds["junit"] += 1
        elif head in (b"{", b"["):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                fail(f"{file}: not UTF-8 text: {e}")
            history.add_file(file, text)
            kinds["github"] += 1
        else:
            fail(f"{file}: neither JUnit XML (starts with '<') nor GitHub Actions JSON (starts with '{{')")
    gha = history.documents()
    retention = None if baseline else cfg.analytics.retention_days if cfg is not None else DEFAULT_RETENTION_DAYS
    try:
        result = merge(path, [*docs, *gha], origin="import", retention_days=retention, fill_actions=True)
    except (sqlite3.Error, ValueError) as e:
        fail(f"{path}: cannot write the build records: {e}")
    doc = {"records": str(path), "files": len(files), "junit_files": kinds["junit"], "github_files": kinds["github"],
           "runs": len(docs) + len(gha), "incomplete_skipped": history.incomplete, "baseline": baseline,
           **result.to_json()}
    if output == "json":
        emit_json(doc)
        return
    what = "baseline (pre-ciopt) history" if baseline else "history after ciopt (not baseline)"
    click.echo(f"imported {doc['runs']} runs from {len(files)} files into {path} as {what}: {result.added} added "
               f"({result.actions} actions), {result.duplicates} already there"
               + (f", {result.expired} older than analytics.retention_days" if result.expired else "")
               + (f"; {history.incomplete} runs or jobs not completed were skipped" if history.incomplete else ""))


@analytics.command()
@click.option("--from", "sources", multiple=True, metavar="URL",
              help="A Redis server or a `ciopt cache serve` URL to pull from (repeatable); default: the Redis URLs "
                   "of cache.remote.url, else its first http(s) one.")
@click.option("--from-start", is_flag=True, help="Read the whole stream again (duplicates are still skipped).")
@records_option
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON document on stdout (messages go to stderr).")
def pull(sources: tuple[str, ...], from_start: bool, records_path: Path | None, output: str) -> None:
    """Merge the records that runners pushed to the shared cache into the local records.

    Runners push each invocation's record when `analytics.enabled` is true and
    `cache.remote.url` names a Redis server or `ciopt cache serve`. Pull where the dashboard is made (a nightly job,
    a developer machine): only entries not pulled before are read, each invocation is added
    once (by its id), and records older than analytics.retention_days are left out.

    \b
      ciopt analytics pull && ciopt dashboard --out site/
    """
    from ciopt.analytics.pull import pull_from
    from ciopt.cache.backend import BackendError

    path, _, cfg = records_location(records_path)
    urls = list(sources)
    if not urls and cfg is not None:
        urls = [u for u in cfg.cache.remote.urls if u.split("://", 1)[0].lower() in ("redis", "rediss", "unix")]
        # With no Redis server, the HTTP cache: `ciopt cache serve` keeps records (POST/GET /records).
        urls = urls or [u for u in cfg.cache.remote.urls if u.split("://", 1)[0].lower() in ("http", "https")][:1]
    if not urls:
        fail("nothing to pull from: cache.remote.url names no Redis server and no HTTP cache (records travel "
             "through Redis or `ciopt cache serve`); give --from redis://HOST:PORT/DB or --from http://HOST:PORT")
    timeout = cfg.cache.remote.timeout_s if cfg is not None else 5.0
    retention = cfg.analytics.retention_days if cfg is not None else DEFAULT_RETENTION_DAYS
    results, failed = [], []
    for url in urls:
        try:
            results.append(pull_from(url, path, timeout_s=timeout, retention_days=retention, from_start=from_start))
        except ValueError as e:
            fail(f"--from: {e}")  # the message shows the URL without its credentials
        except BackendError as e:
            failed.append(str(e))
        except sqlite3.Error as e:
            fail(f"{path}: cannot write the build records: {e}")
    if output == "json":
        emit_json({"records": str(path), "sources": [r.to_json() for r in results], "errors": failed})
    else:
        for r in results:
            m = r.merged
            click.echo(f"{r.source}: {r.entries} entries read: {m.added} invocations added ({m.actions} actions), "
                       f"{m.duplicates} already here, {m.expired} older than retention"
                       + (f", {r.invalid} unreadable" if r.invalid else ""))
            for p in r.problems:
                click.echo(f"  unreadable: {p}", err=True)
    for e in failed:
        click.echo(f"ciopt: error: {e}", err=True)
    if failed:
        exit_with(EXIT_FAILURE)
