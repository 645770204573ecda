"""`ciopt dashboard`: the BuildRecords as one self-contained HTML page, written or served."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from ciopt.cli.analytics import _require_records, records_location, records_option
from ciopt.cli.errors import fail
from ciopt.cli.output import emit_json, output_option


def _bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        fail(f"--serve {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any free port)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _default_out() -> Path:
    """ciopt-out/dashboard at the workspace root (ciopt-out is ignored by git and by ciopt)."""
    from ciopt.own_outputs import mark_ignored
    from ciopt.workspace_root import WorkspaceNotFound, find_workspace_root

    try:
        root = find_workspace_root(Path.cwd())
    except WorkspaceNotFound:
        return Path.cwd() / "ciopt-dashboard"
    out = root / "ciopt-out"
    out.mkdir(exist_ok=True)
    mark_ignored(out)
    return out / "dashboard"


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write index.html into (default: ciopt-out/dashboard in the workspace).")
@click.option("--serve", "serve", default=None, metavar="HOST:PORT",
              help="Serve the page live from the records instead (rebuilt when they change).")
@click.option("--invocation", type=int, default=None,
              help="Show the critical path of this invocation (its id in the records) instead of the latest.")
@records_option
@output_option
def dashboard(out_dir: Path | None, serve: str | None, invocation: int | None, records_path: Path | None,
              output: str) -> None:
    """Write (or serve) the CI analytics dashboard: one HTML file, no network needed to view it.

    It shows time saved, cache hit rate and wall-time trend; where the wall time goes; the
    critical path of the latest (or --invocation) build as a waterfall and the targets most
    often on it; the slowest targets (p50/p95); flaky tests; executors (busy time,
    utilization, cost, GPU vs CPU); tests run vs skipped by selection; and imported pre-ciopt
    history against the runs since. Filters: branch and date range.

    \b
      ciopt dashboard --out site/               writes site/index.html
      ciopt dashboard --serve 127.0.0.1:8080    live at http://127.0.0.1:8080/
      ciopt analytics pull && ciopt dashboard   a team's records, pulled from the shared cache first
    """
    from ciopt.analytics.dashboard import DashboardServer, write_dashboard

    if out_dir is not None and serve is not None:
        fail("--out and --serve exclude each other: write a file, or serve the page")
    path, costs, _ = records_location(records_path)
    _require_records(path)
    if serve is not None:
        host, port = _bind(serve)
        try:
            server = DashboardServer(path, host, port, costs=costs)
        except OSError as e:
            fail(f"--serve {serve}: {e.strerror or e}")
        click.echo(f"ciopt dashboard: serving {path} at {server.url} (Ctrl-C stops)", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
        return
    if out_dir is None:
        out_dir = _default_out()
    try:
        target = write_dashboard(path, out_dir, costs=costs, invocation=invocation)
    except LookupError as e:
        fail(f"--invocation {invocation}: {e.args[0]}")
    except sqlite3.Error as e:
        fail(f"{path}: cannot read the build records: {e}")
    size = target.stat().st_size
    if output == "json":
        emit_json({"path": str(target), "bytes": size, "records": str(path)})
    else:
        click.echo(f"wrote {target} ({size / 1e6:.1f} MB): open it in a browser")
