"""`ciopt dashboard`: one self-contained HTML file over the BuildRecords (templates/dashboard.html).

Nothing is fetched when the page is viewed: plotly's bundled JavaScript and the figures are
inside the file. The figures are metrics.summary() for every combination of the page's two
filters: branch (all, or one of the MAX_BRANCHES most used) and date range (RANGES, whole UTC
days up to today), computed here, so the numbers on the page are the metrics' own and the
page's script only draws the chosen view. Aggregates only, never rows per action: 10,000
invocations make a page of about 6 MB, 5 of them plotly.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Mapping
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ciopt import __version__
from ciopt.analytics import metrics

__all__ = ["MAX_BRANCHES", "RANGES", "DashboardServer", "dashboard_data", "render", "write_dashboard"]

MAX_BRANCHES = 8
RANGES: tuple[tuple[str, str, int | None], ...] = (
    ("all", "all recorded", None),
    ("90d", "last 90 days", 90),
    ("30d", "last 30 days", 30),
    ("7d", "last 7 days", 7),
)
ALL_BRANCHES = "*"
LIMIT = 12  # rows per table
WATERFALL_STEPS = 60  # the longest critical paths are cut to their slowest steps


def view_key(branch_key: str, range_key: str) -> str:
    return f"{branch_key}|{range_key}"


def dashboard_data(path: Path, *, costs: Mapping[str, float] | None = None, invocation: int | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """Everything the page shows, JSON-ready: one view per (branch, range) and the waterfalls."""
    now = time.time() if now is None else now
    r = metrics.Records.load(path, now=now)
    branches = r.branches()[:MAX_BRANCHES]
    branch_options = [{"key": ALL_BRANCHES, "label": "all branches", "branch": None}]
    branch_options += [{"key": f"b{n}", "label": b or "(no branch)", "branch": b, "invocations": c}
                       for n, (b, c) in enumerate(branches)]
    ranges = [{"key": k, "label": label, "since": None if days is None else metrics.days_ago(days, now)}
              for k, label, days in RANGES]
    views: dict[str, Any] = {}
    waterfalls: dict[str, Any] = {}
    if invocation is not None and invocation not in r.by_id:
        raise LookupError(f"no invocation {invocation} in {path}")
    for b in branch_options:
        for rg in ranges:
            f = metrics.Filter(since=rg["since"], branch=b["branch"])
            view = metrics.summary(r, f, costs, LIMIT)
            w = metrics.waterfall(r, f, invocation) if invocation is not None else metrics.waterfall(r, f)
            if w is not None:
                key = str(w["invocation"]["id"])
                if key not in waterfalls:
                    w["steps"] = _cut(w["steps"])
                    waterfalls[key] = w
                view["waterfall"] = key
            else:
                view["waterfall"] = None
            views[view_key(b["key"], rg["key"])] = view
    return {
        "version": __version__,
        "generated_at": now,
        "generated_day": metrics.day_of(now),
        "records": str(path),
        "invocations": len(r.ciopt),
        "imported": len(r.imported),
        "chosen_invocation": invocation,
        "branches": branch_options,
        "ranges": ranges,
        "default_view": view_key(ALL_BRANCHES, "all"),
        "views": views,
        "waterfalls": waterfalls,
    }


def _cut(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(steps) <= WATERFALL_STEPS:
        return steps
    keep = sorted(sorted(range(len(steps)), key=lambda i: -steps[i]["duration_s"])[:WATERFALL_STEPS])
    return [steps[i] for i in keep]


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


@lru_cache(maxsize=1)
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("ciopt.analytics", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("dashboard.html")


def render(data: Mapping[str, Any]) -> str:
    """The page for `data` (dashboard_data)."""
    # In a <script> element only "</" can end it early; JSON never needs a raw one.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_json_default).replace("</", "<\\/")
    return _template().render(data=data, data_json=payload, plotly_js=_plotly_js(),
                              title=f"ciopt CI analytics: {html.escape(str(data['records']))}")


def _json_default(x: object) -> object:
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def write_dashboard(path: Path, out_dir: Path, **kw: Any) -> Path:
    """Writes out_dir/index.html; returns its path."""
    page = render(dashboard_data(path, **kw))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "index.html"
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target


class DashboardServer:
    """`ciopt dashboard --serve`: the page over HTTP, rebuilt when the records change.

    GET /  the page (?invocation=ID: that invocation's waterfall); GET /data.json  its figures."""

    def __init__(self, records: Path, host: str, port: int, *, costs: Mapping[str, float] | None = None) -> None:
        self.records = Path(records)
        self.costs = dict(costs or {})
        self._lock = threading.Lock()
        self._cache: dict[tuple[object, ...], tuple[str, str]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._get(self)

            def do_HEAD(self) -> None:
                server._get(self, head=True)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _stamp(self) -> tuple[object, ...]:
        # The WAL file changes on every write; the database file only at checkpoints.
        out: list[object] = []
        for suffix in ("", "-wal"):
            try:
                st = Path(f"{self.records}{suffix}").stat()
                out += [st.st_mtime_ns, st.st_size]
            except OSError:
                out += [None, None]
        return tuple(out)

    def page(self, invocation: int | None) -> tuple[str, str]:
        """(html, json) for the records as they are now."""
        key = (*self._stamp(), invocation)
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                data = dashboard_data(self.records, costs=self.costs, invocation=invocation)
                hit = (render(data), json.dumps(data, allow_nan=False))
                self._cache = {key: hit}
            return hit

    def _get(self, req: BaseHTTPRequestHandler, head: bool = False) -> None:
        parts = urlsplit(req.path)
        query = parse_qs(parts.query)
        invocation = None
        if "invocation" in query:
            try:
                invocation = int(query["invocation"][0])
            except ValueError:
                return _send(req, HTTPStatus.BAD_REQUEST, "text/plain", b"invocation must be a number\n", head)
        if parts.path not in ("/", "/index.html", "/data.json"):
            return _send(req, HTTPStatus.NOT_FOUND, "text/plain", b"not found: try /\n", head)
        try:
            page, data = self.page(invocation)
        except LookupError as e:
            return _send(req, HTTPStatus.NOT_FOUND, "text/plain", f"{e.args[0]}\n".encode(), head)
        except Exception as e:  # a broken database: say so in the browser, keep serving
            return _send(req, HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain",
                         f"cannot read the records: {type(e).__name__}: {e}\n".encode(), head)
        if parts.path == "/data.json":
            return _send(req, HTTPStatus.OK, "application/json", data.encode(), head)
        _send(req, HTTPStatus.OK, "text/html; charset=utf-8", page.encode(), head)


def _send(req: BaseHTTPRequestHandler, status: HTTPStatus, ctype: str, body: bytes, head: bool) -> None:
    req.send_response(status)
    req.send_header("Content-Type", ctype)
    req.send_header("Content-Length", str(len(body)))
    req.send_header("Cache-Control", "no-store")
    req.end_headers()
    if not head:
        req.wfile.write(body)
