"""Shared-cache benchmarks (issue 10): Redis, `ciopt cache serve`, nginx WebDAV, dependency snapshots.

Run:  .venv/bin/python benches/cache_bench.py [--targets 1000] [--packages 100] [--repeat 3]
                                              [--writers 4] [--blobs 20000] [--blob-size 6500]
                                              [--quick] [--only NAME] [--json FILE]

Every result line reads `name: ours X, peer Y, ratio Z (goal ...)`, ratio = ours / peer (for
rates, ours' rate / peer's rate) with X, Y the median of the repetitions; within a repetition the
two sides alternate (which goes first swaps every repetition) so that drift hits both alike.
Goals are printed, never asserted (see harness.py). Every server is real, on 127.0.0.1, on a free
port, started and stopped by the bench, with its files in a temporary directory under
benches/.corpus/cache_tmp/ (removed at the end): `redis-server` (no persistence, `maxmemory 4gb`,
`allkeys-lru` as docs/cache-redis.md asks), `ciopt cache serve --bind 127.0.0.1:0` (a row that
needs it is reported as unavailable when it does not start), and nginx with WebDAV PUT
(`dav_methods PUT; create_full_put_path on; client_max_body_size 0;`, its own prefix,
`daemon off`). Children get a store the bench chooses (CIOPT_CACHE_DIR) and none of the user's
CIOPT_* settings or cache credentials.

Corpora (made once): the 1,000-genrule workspace of graph_bench.py (its generator, imported) under
benches/.corpus/cache_bench/ws-<targets>x<packages>/; copies of it stand for fresh clones. The
venv of `dependency_snapshot` under benches/.corpus/cache_deps/venv: numpy 1.26.4, pandas 2.2.3,
scipy 1.13.1, packaging 24.1 (about 330 MB, 9,300 files; created with pip, ~40 s, once).

  second_runner_redis       runner 1: `ciopt build //... -j2`, empty store, cache.remote.url = a
                            fresh redis-server (once per run). Each repetition, runner 2: a fresh
                            copy of the workspace, an empty store, same Redis, `ciopt build //...
                            -j2 -o json`; peer: the same build cold without a remote (fresh copy,
                            empty store). Goal <= 0.15x, and >= 99% of actions `cached_remote`.
  second_runner_http_serve  runner 2 through `ciopt cache serve` and through nginx WebDAV (each
  second_runner_nginx       warmed by its own runner 1), against the Redis runner 2 measured in
                            the same repetitions. Report only.
  blobs_20k_redis           20,000 random 6.5 KB blobs through RedisBackend: find_missing + put_blobs
                            (put), then get_blobs (get), on a flushed server; peer: `redis-benchmark
                            -P 16 -d 6500 -n 20000 -t set,get -q` on the same server. Goal: ours
                            >= 0.5x its ops/s (put, get, and both together).
  dependency_snapshot       `ciopt cache save venv venv --key-file req.txt -o json` against Redis,
                            bump packaging 24.1 -> 24.2 (pip), save again: bytes_uploaded of the
                            second save vs the size of `tar -c venv | zstd -3` of the bumped venv
                            (goal <= 5%); `ciopt cache restore` into an empty directory with an
                            empty store vs `zstd -d | tar -x` of that tarball (goal <= 0.6x); save
                            times vs tar+zstd in the notes.
  redis_killed_mid_build    a cold build with Redis configured; redis-server gets SIGKILL about a
                            third of the way (when it holds 2/3 x targets keys, ~1/3 of the uploads,
                            or else after a cold build's time): exit code (goal 0), "remote
                            cache unavailable" warnings (goal 1), outputs checked against sha1
                            computed here, and a rerun (Redis still down) all `cached_local`.
  concurrent_writers_*      4 cold builds at once (-j1 each; own workspace copy, own store) writing
                            to one fresh server of each kind; then every ActionCache entry named in
                            their reports is read back through the backend (and must equal one
                            writer's own entry), every blob it names is read back and verified
                            against its digest, and whatever the server holds (Redis SCAN, nginx's
                            files, the served store's verify) is checked too. Goal 0 errors and 0
                            mismatches.

Sizes and time: the defaults (1,000 targets, --repeat 3) took 11 minutes on 2 shared cores (the
4 x 3 concurrent cold builds are a third of it), plus the one-time venv (about a minute with pip's
downloads). --quick: 200 targets in 20 packages, 2 repetitions (1 for dependency_snapshot), the
same 20,000 blobs and venv: about 4 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import corpus
import graph_bench
import harness

# The helpers that find and start servers are the test suite's own (tests/http_servers.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from http_servers import free_port, nginx_binary, wait_for_port as _wait_port  # noqa: E402
from harness import (
    CIOPT_CLI,
    ChildFailed,
    Result,
    emit,
    fill,
    fmt_samples,
    run,
    tool_version,
)

WORK = corpus.CORPUS / "cache_bench"  # pristine workspaces, kept between runs
SCRATCH = corpus.CORPUS / "cache_tmp"  # stores, workspace copies, server directories: per run
DEPS = corpus.CORPUS / "cache_deps"  # the dependency-snapshot workspace and its venv

VENV_REQUIREMENTS = ["numpy==1.26.4", "pandas==2.2.3", "scipy==1.13.1", "packaging==24.1"]
BUMP_PACKAGE, BUMP_FROM, BUMP_TO = "packaging", "24.1", "24.2"

# Settings of the user that must not leak into the children.
SCRUBBED_ENV = ("CIOPT_REDIS_USERNAME", "CIOPT_REDIS_PASSWORD", "CIOPT_CACHE_TOKEN", "CIOPT_CACHE_USER",
                "CIOPT_CACHE_PASSWORD", "VIRTUAL_ENV")
UNAVAILABLE_WARNING = "remote cache unavailable"


# --- servers -------------------------------------------------------------------------------------

class Unavailable(RuntimeError):
    """A server (or a backend module) this row needs is not there: the row is reported, not run."""


class Server:
    kind = "?"
    url = ""
    proc: subprocess.Popen | None = None
    stop_signal = signal.SIGTERM

    def __init__(self, dir: Path) -> None:
        self.dir = dir

    def log(self) -> str:
        return "".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.dir.glob("*.log")))

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(self.stop_signal)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


class RedisServer(Server):
    kind = "redis"

    def __init__(self, dir: Path) -> None:
        super().__init__(dir)
        for _ in range(5):  # the free port may be taken before redis binds it
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(dir), "--logfile", str(dir / "redis.log"),
                 "--maxmemory", "4gb", "--maxmemory-policy", "allkeys-lru"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True)
            if self._ready():
                self.url = f"redis://127.0.0.1:{self.port}/0"
                return
            self.stop()
        raise Unavailable(f"redis-server did not start: {self.log()[-500:]}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ServeServer(Server):
    """`ciopt cache serve --bind 127.0.0.1:0` over a store of its own; the address is its first line."""

    kind = "serve"

    def __init__(self, dir: Path, ciopt: str | Path = CIOPT_CLI) -> None:
        super().__init__(dir)
        self.store = dir / "store"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CIOPT_") and k not in SCRUBBED_ENV}
        # cwd outside any workspace: the server must not pick up a configuration by accident.
        with open(dir / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(ciopt), "cache", "serve", "--bind", "127.0.0.1:0", "--store", str(self.store),
                 "--max-size", "20GiB"],
                cwd=tempfile.gettempdir(), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode(errors="replace") if ready else ""
        if not line.startswith("serving http://"):
            self.stop()
            raise Unavailable(f"`ciopt cache serve` did not start (first line {line.strip()!r}): "
                              f"{' '.join(self.log().split())[-400:]}")
        self.url = line.split()[1]

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/status", timeout=30) as r:
            return json.load(r)


NGINX_CONF = """\
{user}
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 0;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    log_not_found off;  # a 404 is a cache miss, not an error
    server {{
        listen 127.0.0.1:{port};
        root {dir}/root;
        location /cache/ {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


class NginxServer(Server):
    """nginx with WebDAV PUT under /cache/, its own prefix, in the foreground."""

    kind = "nginx"
    stop_signal = signal.SIGQUIT  # graceful: workers finish their requests

    def __init__(self, dir: Path) -> None:
        super().__init__(dir)
        binary = nginx_binary()
        if binary is None:
            raise Unavailable("nginx is not installed (Debian: apt-get install nginx)")
        (dir / "root" / "cache").mkdir(parents=True, exist_ok=True)
        (dir / "tmp").mkdir(exist_ok=True)
        # As root, nginx hands its workers to `nobody`, who could not write these directories.
        user = "user root;" if os.geteuid() == 0 else ""
        for _ in range(5):
            self.port = free_port()
            (dir / "nginx.conf").write_text(NGINX_CONF.format(user=user, dir=dir, port=self.port))
            with open(dir / "stderr.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [binary, "-p", str(dir), "-c", str(dir / "nginx.conf"), "-e", str(dir / "error.log"),
                     "-g", "daemon off;"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            if _wait_port(self.port, self.proc):
                self.url = f"http://127.0.0.1:{self.port}/cache"
                return
            self.stop()
            if "Address already in use" not in self.log():
                break
        raise Unavailable(f"nginx did not start: {self.log()[-500:]}")

    @property
    def files(self) -> Path:
        return self.dir / "root" / "cache"

    def error_lines(self) -> list[str]:
        p = self.dir / "error.log"
        lines = p.read_text(errors="replace").splitlines() if p.exists() else []
        return [ln for ln in lines if any(f"[{lvl}]" in ln for lvl in ("error", "crit", "alert", "emerg"))]


SERVER_KINDS: dict[str, type[Server]] = {"redis": RedisServer, "serve": ServeServer, "nginx": NginxServer}
KIND_LABEL = {"redis": "redis", "serve": "http_serve", "nginx": "nginx"}


# --- workspaces, stores, ciopt -------------------------------------------------------------------

def pristine_workspace(shape: graph_bench.Shape) -> Path:
    """graph_bench's workspace, generated once per shape (copies of it are the fresh clones)."""
    ws = WORK / f"ws-{shape.targets}x{shape.packages}"
    marker = ws.with_name(ws.name + ".done")
    want = json.dumps({"targets": shape.targets, "packages": shape.packages, "cmd": graph_bench.CMD,
                       "seed": graph_bench.INPUT_SEED})
    if marker.exists() and marker.read_text() == want and ws.exists():
        return ws
    corpus.log(f"generating {shape.targets} genrules in {shape.packages} packages")
    marker.unlink(missing_ok=True)
    shutil.rmtree(ws, ignore_errors=True)
    graph_bench.write_workspace(shape, ws)
    marker.write_text(want)
    return ws


def config_text(url: str | None) -> str:
    if url is None:
        return "enabled: true\n"
    return f"enabled: true\ncache:\n  remote:\n    url: {url}\n"


def write_config(root: Path, url: str | None) -> None:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "ci-optimization.yaml").write_text(config_text(url))


def scratch_dir(prefix: str) -> Path:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def workspace_copy(shape: graph_bench.Shape, url: str | None) -> Path:
    """A fresh copy of the workspace (a fresh clone: no ciopt-out/) whose config names `url`."""
    dest = scratch_dir("ws-") / "ws"
    shutil.copytree(pristine_workspace(shape), dest, symlinks=True)
    write_config(dest, url)
    return dest


def fresh_store() -> Path:
    return harness.fresh_store(SCRATCH)


def remove(*paths: Path) -> None:
    for p in paths:
        # Workspace copies live one level down in their own temporary directory.
        target = p.parent if p.name == "ws" and p.parent.parent == SCRATCH else p
        shutil.rmtree(target, ignore_errors=True)


def settle() -> None:
    # ciopt's StatCache (and git) do not trust files modified within the racy window.
    time.sleep(corpus.RACY_WINDOW_S + 0.5)


class Ciopt(harness.Ciopt):
    def env(self) -> dict[str, str]:
        env = super().env()
        for k in SCRUBBED_ENV:
            env.pop(k, None)
        return env

    def build(self, ws: Path, *extra: str, jobs: int = 2) -> tuple[float, dict[str, Any]]:
        return self.json(ws, "build", "//...", f"-j{jobs}", *extra)

    def popen(self, cwd: Path, out: Path, err: Path, *args: str) -> subprocess.Popen:
        with open(out, "wb") as o, open(err, "wb") as e:
            return subprocess.Popen(self.argv(*args), cwd=cwd, env=self.env(), stdin=subprocess.DEVNULL,
                                    stdout=o, stderr=e)


def status_counts(report: dict[str, Any]) -> Counter[str]:
    return graph_bench.status_counts(report)


def remote_fraction(report: dict[str, Any]) -> float:
    actions = report.get("actions", [])
    return sum(a.get("status") == "cached_remote" for a in actions) / max(1, len(actions))


def expected_outputs(shape: graph_bench.Shape, root: Path) -> dict[str, bytes]:
    """What every `cat $(SRCS) | sha1sum > $@` must produce, computed here from the inputs."""
    out: dict[str, bytes] = {}
    for i, j in shape.all_targets():  # package order: dependencies first
        data = (root / shape.input_path(i, j)).read_bytes()
        data += b"".join(out[shape.output_path(a, b)] for a, b in shape.deps(i, j))
        out[shape.output_path(i, j)] = f"{hashlib.sha1(data).hexdigest()}  -\n".encode()
    return out


def wrong_outputs(shape: graph_bench.Shape, ws: Path) -> list[str]:
    bad = []
    for rel, want in expected_outputs(shape, ws).items():
        p = ws / "ciopt-out" / rel
        if not p.is_file() or p.read_bytes() != want:
            bad.append(rel)
    return bad


def order(rep: int, first: Callable[[], None], second: Callable[[], None]) -> None:
    """Alternate which side goes first from one repetition to the next."""
    for f in ((first, second) if rep % 2 == 0 else (second, first)):
        f()


# --- the run's state -----------------------------------------------------------------------------

@dataclass
class Warm:
    """A server that runner 1 has filled by building the workspace through it."""

    server: Server
    runner1_s: float
    report: dict[str, Any]


@dataclass
class Config:
    shape: graph_bench.Shape
    repeat: int
    quick: bool
    writers: int
    blobs: int
    blob_size: int
    servers: list[Server] = field(default_factory=list)
    warm_servers: dict[str, Warm] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    cold_s: list[float] = field(default_factory=list)  # cold builds seen (for the kill timing)

    def start(self, kind: str) -> Server:
        if kind in self.unavailable:
            raise Unavailable(self.unavailable[kind])
        if kind != "redis":
            try:  # being written: the HTTP rows need it to read back and to build
                import ciopt.cache.http_backend  # noqa: F401
            except Exception as e:
                self.unavailable[kind] = f"ciopt.cache.http_backend does not import: {type(e).__name__}: {e}"
                raise Unavailable(self.unavailable[kind]) from e
        try:
            server = SERVER_KINDS[kind](scratch_dir(f"{kind}-"))
        except Unavailable as e:
            if kind == "serve":  # being written: a failure is reported as unavailable once
                self.unavailable[kind] = str(e)
            raise
        except Exception as e:  # a server that cannot start makes the row unavailable
            raise Unavailable(f"{kind}: {type(e).__name__}: {e}") from e
        self.servers.append(server)
        return server

    def warm(self, kind: str) -> Warm:
        """A server of `kind` filled once by runner 1 (cold build, uploads flushed at its exit)."""
        if kind not in self.warm_servers:
            server = self.start(kind)
            ws = workspace_copy(self.shape, server.url)
            store = fresh_store()
            settle()
            t, report = Ciopt(store).build(ws)
            remove(ws, store)
            self.warm_servers[kind] = Warm(server, t, report)
        return self.warm_servers[kind]

    def stop_all(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):  # stopping the others matters more
                s.stop()
        self.servers.clear()


# --- second runner -------------------------------------------------------------------------------

def runner1_note(w: Warm) -> str:
    rc = (w.report.get("summary") or {}).get("remote_cache") or {}
    return (f"{w.runner1_s:.2f} s, {status_counts(w.report).get('executed', 0)} executed, "
            f"{rc.get('uploads')} uploads ({rc.get('bytes_up')} B), dropped {rc.get('dropped')}, "
            f"errors {rc.get('errors')}")


def runner2(shape: graph_bench.Shape, url: str | None) -> tuple[float, dict[str, Any]]:
    """A fresh clone and an empty store: `ciopt build //... -j2 -o json` (url None: no remote)."""
    ws = workspace_copy(shape, url)
    store = fresh_store()
    settle()
    try:
        return Ciopt(store).build(ws)
    finally:
        remove(ws, store)


def bench_second_runner_redis(cfg: Config, results: list[Result]) -> None:
    name = "second_runner_redis"
    target = "goal <= 0.15x and >= 99% cached_remote"
    w = cfg.warm("redis")
    ours_t: list[float] = []
    peer_t: list[float] = []
    fractions: list[float] = []
    counts: list[dict[str, int]] = []
    lookups: list[str] = []

    def ours() -> None:
        t, report = runner2(cfg.shape, w.server.url)
        ours_t.append(t)
        fractions.append(remote_fraction(report))
        counts.append(dict(status_counts(report)))
        rc = (report.get("summary") or {}).get("remote_cache") or {}
        lookups.append(f"p50 {rc.get('lookup_ms_p50')} / p99 {rc.get('lookup_ms_p99')} ms, "
                       f"duration_s {(report.get('summary') or {}).get('duration_s')}")

    def peer() -> None:
        t, report = runner2(cfg.shape, None)
        peer_t.append(t)
        executed = status_counts(report).get("executed", 0)
        if executed != cfg.shape.targets:
            raise ChildFailed(f"cold build executed {executed} of {cfg.shape.targets} actions")

    for rep in range(cfg.repeat):
        order(rep, ours, peer)
    cfg.cold_s += peer_t
    r = fill(Result(name, "the same build cold, no remote", target, max_ratio=0.15), ours_t, peer_t)
    r.ratio_value = r.ours_s / r.peer_s if r.ours_s and r.peer_s else None
    r.ours_text = f"{r.ours_s:.3f} s ({min(fractions):.1%} cached_remote)"
    r.peer_text = f"{r.peer_s:.3f} s (cold)"
    r.extra["met"] = bool(r.ratio is not None and r.ratio <= 0.15 and min(fractions) >= 0.99)
    r.notes["command"] = (f"cd COPY && CIOPT_CACHE_DIR=EMPTY {CIOPT_CLI} build //... -j2 -o json "
                          f"(cache.remote.url: {w.server.url})")
    r.notes["runner 1 (cold build + uploads)"] = runner1_note(w)
    r.notes["samples ours / peer"] = f"[{fmt_samples(ours_t)}] / [{fmt_samples(peer_t)}]"
    r.notes["paired ratios"] = fmt_samples(a / b for a, b in zip(ours_t, peer_t))
    r.notes["runner 2 statuses"] = "; ".join(str(c) for c in counts)
    r.notes["runner 2 remote lookups / ciopt's own duration"] = "; ".join(lookups)
    r.extra.update(cached_remote_fractions=fractions, runner1_s=w.runner1_s, statuses=counts)
    emit(r, results)


def bench_second_runner_http(cfg: Config, results: list[Result]) -> None:
    target = "report only (peer: the Redis runner 2 of the same repetitions)"
    warm: dict[str, Warm] = {}
    why: dict[str, str] = {}
    for kind in ("serve", "nginx"):
        try:
            warm[kind] = cfg.warm(kind)
        except (Unavailable, ChildFailed) as e:
            why[kind] = str(e)
    if warm:
        warm["redis"] = cfg.warm("redis")
    samples: dict[str, list[float]] = {k: [] for k in warm}
    fractions: dict[str, list[float]] = {k: [] for k in warm}
    kinds = list(warm)
    for rep in range(cfg.repeat if kinds else 0):
        for kind in kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]:  # rotate who goes first
            t, report = runner2(cfg.shape, warm[kind].server.url)
            samples[kind].append(t)
            fractions[kind].append(remote_fraction(report))
    for kind in ("serve", "nginx"):
        name = f"second_runner_{KIND_LABEL[kind]}"
        if kind not in warm:
            emit(Result(name, "redis runner 2", target, skipped=f"unavailable: {why[kind]}"), results)
            continue
        r = fill(Result(name, "redis runner 2", target), samples[kind], samples["redis"])
        r.ours_text = f"{r.ours_s:.3f} s ({min(fractions[kind]):.1%} cached_remote)"
        r.peer_text = f"{r.peer_s:.3f} s (redis, {min(fractions['redis']):.1%} cached_remote)"
        r.notes["url"] = warm[kind].server.url
        r.notes["runner 1 (cold build + uploads)"] = runner1_note(warm[kind])
        r.notes["runner 1 through redis"] = runner1_note(warm["redis"])
        r.notes["samples ours / redis"] = (f"[{fmt_samples(samples[kind])}] / "
                                           f"[{fmt_samples(samples['redis'])}]")
        if kind == "serve":
            try:
                st = warm[kind].server.status()  # type: ignore[attr-defined]
                r.notes["server /status"] = (f"puts {st.get('puts')}, hits {st.get('hits')}, "
                                             f"misses {st.get('misses')}, errors {st.get('errors')}, "
                                             f"rejected_puts {st.get('rejected_puts')}")
            except Exception as e:  # noqa: BLE001 - a note, not the result
                r.notes["server /status"] = f"unreadable: {e}"
        r.extra.update(cached_remote_fractions=fractions[kind], runner1_s=warm[kind].runner1_s)
        emit(r, results)


# --- blobs ---------------------------------------------------------------------------------------

_BENCH_RATE = re.compile(rb"(SET|GET): ([0-9.]+) requests per second")


def redis_benchmark(port: int, n: int, size: int) -> dict[str, float]:
    _, out = run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-P", "16", "-d", str(size),
                  "-n", str(n), "-t", "set,get", "-q"], capture=True)
    # -q still draws progress with \r; the last figure of each test is its result.
    rates = {m.group(1).decode(): float(m.group(2)) for m in _BENCH_RATE.finditer(out)}
    if set(rates) != {"SET", "GET"}:
        raise ChildFailed(f"redis-benchmark printed no rates: {out[-300:]!r}")
    return rates


def bench_blobs_redis(cfg: Config, results: list[Result]) -> None:
    import ciopt
    from ciopt.cache.redis_backend import RedisBackend

    n, size = cfg.blobs, cfg.blob_size
    name = f"blobs_{n // 1000}k_redis"
    target = "goal >= 0.5x its ops/s"
    server = cfg.start("redis")
    try:
        client = server.client()
        blobs = [os.urandom(size) for _ in range(n)]
        digests = [ciopt.hash_bytes(b) for b in blobs]
        items = list(zip(digests, blobs))
        t_fm: list[float] = []
        t_put: list[float] = []
        t_get: list[float] = []
        peer: list[dict[str, float]] = []
        wrong = 0
        backend = RedisBackend(server.url, timeout_s=60)

        def ours() -> None:
            nonlocal wrong
            client.flushall()
            t0 = time.perf_counter()
            missing = backend.find_missing(digests)
            t1 = time.perf_counter()
            want = set(missing)
            backend.put_blobs([it for it in items if it[0] in want])
            t2 = time.perf_counter()
            got = backend.get_blobs(digests)
            t3 = time.perf_counter()
            if len(missing) != n:
                raise ChildFailed(f"find_missing on a flushed server reported {len(missing)} of {n}")
            wrong = max(wrong, sum(a != b for a, b in zip(got, blobs)))
            t_fm.append(t1 - t0)
            t_put.append(t2 - t0)
            t_get.append(t3 - t2)

        def theirs() -> None:
            peer.append(redis_benchmark(server.port, n, size))

        try:
            for rep in range(cfg.repeat):
                order(rep, ours, theirs)
        finally:
            backend.close()
        put_rate = n / statistics.median(t_put)
        get_rate = n / statistics.median(t_get)
        both_rate = 2 * n / statistics.median(p + g for p, g in zip(t_put, t_get))
        set_rate = statistics.median(p["SET"] for p in peer)
        getp_rate = statistics.median(p["GET"] for p in peer)
        both_peer = 2 * n / statistics.median(n / p["SET"] + n / p["GET"] for p in peer)
        ratio = both_rate / both_peer
        r = Result(name, "redis-benchmark -P 16 -d 6500 -t set,get", target, ratio_value=ratio,
                   ours_text=f"{both_rate:,.0f} ops/s (put+get)", peer_text=f"{both_peer:,.0f} ops/s (set+get)")
        r.ours_samples = [2 * n / (p + g) for p, g in zip(t_put, t_get)]
        r.peer_samples = [2 * n / (n / p["SET"] + n / p["GET"]) for p in peer]
        r.extra["met"] = bool(ratio >= 0.5 and put_rate / set_rate >= 0.5 and get_rate / getp_rate >= 0.5)
        r.notes["put (find_missing + put_blobs)"] = (f"ours {put_rate:,.0f} ops/s, SET {set_rate:,.0f} ops/s, "
                                                     f"ratio {put_rate / set_rate:.3f}")
        r.notes["get (get_blobs)"] = (f"ours {get_rate:,.0f} ops/s, GET {getp_rate:,.0f} ops/s, "
                                      f"ratio {get_rate / getp_rate:.3f}")
        r.notes["find_missing alone"] = f"{n / statistics.median(t_fm):,.0f} digests/s"
        r.notes["blobs read back different from written"] = wrong
        r.notes["samples put / get s"] = f"[{fmt_samples(t_put)}] / [{fmt_samples(t_get)}]"
        r.notes["peer samples SET / GET ops/s"] = ", ".join(f"{p['SET']:,.0f}/{p['GET']:,.0f}" for p in peer)
        r.notes["blobs"] = f"{n} x {size} B random, blake3 digests, one connection (redis-benchmark: 50 clients)"
        r.extra.update(put_ops_s=put_rate, get_ops_s=get_rate, set_ops_s=set_rate, peer_get_ops_s=getp_rate,
                       mismatched=wrong)
        emit(r, results)
    finally:
        server.stop()


# --- dependency snapshot -------------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *args], check=True, stdout=subprocess.DEVNULL)


def bump_installed(venv: Path) -> str | None:
    found = sorted(venv.glob(f"lib/python*/site-packages/{BUMP_PACKAGE}-*.dist-info"))
    return found[0].name.split("-")[1].removesuffix(".dist-info") if found else None


def ensure_venv() -> tuple[Path, float]:
    """The venv (made once, in place: its scripts name their own path), at its base versions.
    Returns it and the seconds spent setting it up now."""
    t0 = time.perf_counter()
    venv = DEPS / "venv"
    marker = DEPS / "venv.done"
    want = json.dumps({"requirements": VENV_REQUIREMENTS, "python": sys.version.split()[0]})
    if not (marker.exists() and marker.read_text() == want and venv_python(venv).exists()):
        corpus.log(f"creating {venv} with {' '.join(VENV_REQUIREMENTS)} (one-time, about a minute)")
        marker.unlink(missing_ok=True)
        shutil.rmtree(venv, ignore_errors=True)
        DEPS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip(venv, *VENV_REQUIREMENTS)
        marker.write_text(want)
    elif bump_installed(venv) != BUMP_FROM:  # an interrupted run left the bump in
        pip(venv, "--no-deps", f"{BUMP_PACKAGE}=={BUMP_FROM}")
    return venv, time.perf_counter() - t0


def tree_stat(root: Path) -> dict[str, tuple[int, int, int]]:
    """relative path -> (mode, size, mtime_ns) of everything under root (lstat)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def tree_differences(a: Path, b: Path) -> list[str]:
    """Paths whose kind, permission bits, link target or bytes differ between two trees."""
    sa, sb = tree_stat(a), tree_stat(b)
    diff = sorted(set(sa) ^ set(sb))
    for rel in sorted(set(sa) & set(sb)):
        (ma, za, _), (mb, zb, _) = sa[rel], sb[rel]
        pa, pb = a / rel, b / rel
        if ma != mb or za != zb:
            diff.append(rel)
        elif os.path.islink(pa):
            if os.readlink(pa) != os.readlink(pb):
                diff.append(rel)
        elif os.path.isfile(pa) and pa.read_bytes() != pb.read_bytes():
            diff.append(rel)
    return diff


def tar_zstd(src_parent: Path, name: str, tarball: Path) -> float:
    return run(["sh", "-c", f'tar -cf - "{name}" | zstd -3 -q -o "{tarball}"'], cwd=src_parent)[0]


def untar_zstd(tarball: Path, dest: Path) -> float:
    return run(["sh", "-c", f'zstd -d -q -c "{tarball}" | tar -xf - -C "{dest}"'])[0]


def bench_dependency_snapshot(cfg: Config, results: list[Result]) -> None:
    name = "dependency_snapshot"
    target = "goal: 2nd save uploads <= 5% of the tarball; restore <= 0.6x"
    venv, setup_s = ensure_venv()
    st = tree_stat(venv)
    files = sum(1 for m, _, _ in st.values() if (m & 0o170000) == 0o100000)
    size = sum(z for m, z, _ in st.values() if (m & 0o170000) == 0o100000)
    reqs_base = "\n".join(VENV_REQUIREMENTS) + "\n"
    reqs_bumped = reqs_base.replace(f"{BUMP_PACKAGE}=={BUMP_FROM}", f"{BUMP_PACKAGE}=={BUMP_TO}")
    server = cfg.start("redis")
    client = server.client()
    write_config(DEPS, server.url)
    reps = 1 if cfg.quick else cfg.repeat
    s1: list[float] = []
    s2: list[float] = []
    tar1: list[float] = []
    tar2: list[float] = []
    restore_t: list[float] = []
    untar_t: list[float] = []
    up1: list[int] = []
    up2: list[int] = []
    tar_bytes: list[int] = []
    tar1_bytes: list[int] = []
    changed_bytes: list[int] = []
    restore_docs: list[dict[str, Any]] = []
    differences: list[str] | None = None

    def one(rep: int) -> None:
        nonlocal differences
        client.flushall()
        tmp = scratch_dir("deps-")
        store = fresh_store()
        try:
            (DEPS / "req.txt").write_text(reqs_base)
            ciopt = Ciopt(store)

            def save1() -> None:
                t, doc = ciopt.json(DEPS, "cache", "save", "venv", "venv", "--key-file", "req.txt")
                s1.append(t)
                up1.append(int(doc["bytes_uploaded"]))

            def tarball1() -> None:
                tar1.append(tar_zstd(DEPS, "venv", tmp / "venv1.tar.zst"))
                tar1_bytes.append((tmp / "venv1.tar.zst").stat().st_size)

            order(rep, save1, tarball1)
            before = tree_stat(venv)
            pip(venv, "--no-deps", f"{BUMP_PACKAGE}=={BUMP_TO}")
            (DEPS / "req.txt").write_text(reqs_bumped)
            after = tree_stat(venv)
            changed_bytes.append(sum(v[1] for k, v in after.items()
                                     if (v[0] & 0o170000) == 0o100000 and before.get(k) != v))
            tarball = tmp / "venv2.tar.zst"

            def save2() -> None:
                t, doc = ciopt.json(DEPS, "cache", "save", "venv", "venv", "--key-file", "req.txt")
                s2.append(t)
                up2.append(int(doc["bytes_uploaded"]))

            def tarball2() -> None:
                tar2.append(tar_zstd(DEPS, "venv", tarball))
                tar_bytes.append(tarball.stat().st_size)

            order(rep, save2, tarball2)

            # Restore on a fresh machine: an empty directory (its own workspace, the same
            # relative path `venv`), an empty store; the peer extracts into an empty directory.
            rdir = tmp / "restore"
            write_config(rdir, server.url)
            (rdir / "req.txt").write_text(reqs_bumped)
            pdir = tmp / "untar"
            pdir.mkdir()
            rstore = fresh_store()

            def restore() -> None:
                t, doc = Ciopt(rstore).json(rdir, "cache", "restore", "venv", "venv", "--key-file", "req.txt")
                restore_t.append(t)
                restore_docs.append(doc)

            def extract() -> None:
                untar_t.append(untar_zstd(tarball, pdir))

            order(rep, restore, extract)
            if differences is None:
                differences = tree_differences(venv, rdir / "venv")
            remove(rstore)
        finally:
            if bump_installed(venv) != BUMP_FROM:
                pip(venv, "--no-deps", f"{BUMP_PACKAGE}=={BUMP_FROM}")
            (DEPS / "req.txt").write_text(reqs_base)
            remove(tmp, store)

    try:
        for rep in range(reps):
            one(rep)
    finally:
        server.stop()
    up_ratio = statistics.median(u / t for u, t in zip(up2, tar_bytes))
    r = fill(Result(name, "zstd -d | tar -x", target, max_ratio=0.6), restore_t, untar_t)
    r.ratio_value = r.ours_s / r.peer_s
    r.ours_text = f"2nd save uploaded {statistics.median(up2):,.0f} B; restore {r.ours_s:.3f} s"
    r.peer_text = f"tarball {statistics.median(tar_bytes):,.0f} B; untar {r.peer_s:.3f} s"
    r.summary = (f"ours 2nd save uploaded {statistics.median(up2):,.0f} B = {up_ratio:.2%} of the "
                 f"{statistics.median(tar_bytes):,.0f} B tarball; restore {r.ours_s:.3f} s, peer "
                 f"zstd -d | tar -x {r.peer_s:.3f} s, ratio {r.ratio:.3f}")
    r.extra["met"] = bool(up_ratio <= 0.05 and r.ratio <= 0.6)
    r.notes["venv"] = (f"{venv} ({', '.join(VENV_REQUIREMENTS)}): {files} files, {size / 1e6:.0f} MB; "
                       f"bump {BUMP_PACKAGE} {BUMP_FROM} -> {BUMP_TO} changes "
                       f"{statistics.median(changed_bytes):,.0f} B of files")
    r.notes["save 1 (everything)"] = (f"ciopt {statistics.median(s1):.3f} s, uploaded "
                                      f"{statistics.median(up1):,.0f} B; tar | zstd -3 {statistics.median(tar1):.3f} s "
                                      f"-> {statistics.median(tar1_bytes):,.0f} B; ratio "
                                      f"{statistics.median(s1) / statistics.median(tar1):.3f}")
    r.notes["save 2 (after the bump)"] = (f"ciopt {statistics.median(s2):.3f} s, uploaded "
                                          f"{statistics.median(up2):,.0f} B ({up_ratio:.2%} of the tarball; "
                                          f"{statistics.median(up2) - statistics.median(changed_bytes):,.0f} B "
                                          f"beyond the changed files); tar | zstd -3 {statistics.median(tar2):.3f} s; "
                                          f"ratio {statistics.median(s2) / statistics.median(tar2):.3f}")
    d = restore_docs[-1]
    r.notes["restore"] = (f"result {d.get('result')}, files_written {d.get('files_written')}, "
                          f"bytes_downloaded {d.get('bytes_downloaded')}, ciopt's duration_s "
                          f"{', '.join(str(x.get('duration_s')) for x in restore_docs)}")
    r.notes["restored tree identical to the saved venv"] = (
        "yes" if not differences else f"NO, {len(differences)} paths differ (first {differences[:3]})")
    r.notes["samples restore / untar"] = f"[{fmt_samples(restore_t)}] / [{fmt_samples(untar_t)}]"
    r.notes["commands"] = (f"cd {DEPS} && CIOPT_CACHE_DIR=S {CIOPT_CLI} cache save venv venv --key-file req.txt "
                           f"-o json; cd EMPTY && ... cache restore venv venv --key-file req.txt -o json")
    if setup_s > 1:
        r.notes["setup (venv) this run"] = f"{setup_s:.1f} s"
    r.extra.update(bytes_uploaded_first=up1, bytes_uploaded_second=up2, tarball_bytes=tar_bytes,
                   upload_fraction=up_ratio, save1_s=s1, save2_s=s2, tar1_s=tar1, tar2_s=tar2,
                   venv_files=files, venv_bytes=size, restore_identical=not differences)
    emit(r, results)


# --- redis killed mid-build ----------------------------------------------------------------------

def bench_redis_killed(cfg: Config, results: list[Result]) -> None:
    name = "redis_killed_mid_build"
    target = "goal: exit 0, 1 warning, outputs right, rerun all cached_local"
    shape = cfg.shape
    server = cfg.start("redis")
    ws = workspace_copy(shape, server.url)
    store = fresh_store()
    logs = scratch_dir("kill-")
    # Fallback when uploads lag: the time a cold build took (a third of a build with uploads).
    expected_s = statistics.median(cfg.cold_s) if cfg.cold_s else shape.targets * 0.015
    try:
        assert isinstance(server, RedisServer)
        client = server.client()
        settle()
        ciopt = Ciopt(store)
        t0 = time.perf_counter()
        proc = ciopt.popen(ws, logs / "out.json", logs / "err.txt", "build", "//...", "-j2", "-o", "json")
        killed_at = None
        keys_at_kill = None
        while proc.poll() is None:
            elapsed = time.perf_counter() - t0
            if killed_at is None:
                try:
                    keys = int(client.dbsize())
                except Exception:  # noqa: BLE001 - a busy server: try again
                    keys = 0
                if keys >= 2 * shape.targets // 3 or elapsed >= expected_s:
                    server.kill()
                    killed_at, keys_at_kill = elapsed, keys
            time.sleep(0.05)
        total = time.perf_counter() - t0
        if proc.returncode is None:
            proc.wait()
        rc = proc.returncode
        stderr = (logs / "err.txt").read_text(errors="replace")
        try:
            report = json.loads((logs / "out.json").read_text())
        except ValueError:
            report = {}
        warnings = [ln for ln in stderr.splitlines() if UNAVAILABLE_WARNING in ln]
        other = [ln for ln in stderr.splitlines() if "warning" in ln and UNAVAILABLE_WARNING not in ln]
        counts = status_counts(report)
        bad = wrong_outputs(shape, ws)
        # The rerun: Redis is still down, the configuration unchanged.
        t1 = time.perf_counter()
        rerun_rc = ciopt.popen(ws, logs / "rerun.json", logs / "rerun.err", "build", "//...", "-j2",
                               "-o", "json").wait()
        t_rerun = time.perf_counter() - t1
        try:
            rerun = json.loads((logs / "rerun.json").read_text())
        except ValueError:
            rerun = {}
        rerun_warnings = [ln for ln in (logs / "rerun.err").read_text(errors="replace").splitlines()
                          if "warning" in ln]
        rerun_counts = status_counts(rerun)
        all_local = rerun_counts.get("cached_local", 0) == shape.targets
        met = killed_at is not None and rc == 0 and len(warnings) == 1 and not bad and all_local and rerun_rc == 0
        summary = (f"exit {rc}, {len(warnings)} '{UNAVAILABLE_WARNING}' warning(s), "
                   f"outputs {'right' if not bad else f'WRONG ({len(bad)})'}, rerun "
                   f"{rerun_counts.get('cached_local', 0)}/{shape.targets} cached_local")
        r = Result(name, "", target, summary=summary)
        r.extra["met"] = met
        r.notes["killed"] = (f"at {killed_at:.2f} s of {total:.2f} s ({killed_at / total:.0%}), Redis holding "
                             f"{keys_at_kill} keys" if killed_at is not None
                             else f"never: the build ended first ({total:.2f} s), not a valid run")
        r.notes["statuses"] = dict(counts)
        r.notes["remote_cache summary"] = (report.get("summary") or {}).get("remote_cache")
        r.notes["warning lines"] = [ln[:300] for ln in warnings] or "none"
        if other:
            r.notes["other warnings"] = [ln[:300] for ln in other[:5]]
        r.notes["rerun (Redis still down)"] = (f"exit {rerun_rc}, {t_rerun:.2f} s, statuses {dict(rerun_counts)}, "
                                               f"{len(rerun_warnings)} warning(s)")
        if rerun_warnings:
            r.notes["rerun warnings"] = [ln[:300] for ln in rerun_warnings[:5]]
        r.extra.update(exit_code=rc, warnings=len(warnings), wrong_outputs=bad[:20], statuses=dict(counts),
                       rerun_statuses=dict(rerun_counts), killed_at_s=killed_at, build_s=total)
        emit(r, results)
    finally:
        server.stop()
        remove(ws, store, logs)


# --- concurrent writers --------------------------------------------------------------------------

def verify_concurrent(cfg: Config, kind: str, server: Server, reports: list[dict[str, Any]],
                      stores: list[Path]) -> dict[str, Any]:
    """Read back every entry and blob the writers produced, through the backend; then what the
    server holds by its own means. Returns the figures."""
    import ciopt
    from ciopt.cache.backend import BackendError
    from ciopt.cache.shards import connect, get_many
    from ciopt.cache.signing import unwrap_unverified
    from ciopt.exec.action_result import ActionResult

    fn = ciopt.Store(stores[0]).digest_function
    keys = sorted({a["key"] for rep in reports for a in rep.get("actions", []) if a.get("key")})
    locals_ = [ciopt.Store(s).action_get_many(keys) for s in stores]
    errors: list[str] = []
    mismatches: list[str] = []
    missing_entries = 0
    blobs: set[Any] = set()
    backend = connect([server.url], 60.0)
    try:
        for i, key in enumerate(keys):
            try:
                raw = backend.get_action(key)
            except BackendError as e:
                errors.append(f"get_action {key[:12]}: {e}")
                continue
            if raw is None:
                missing_entries += 1
                continue
            payload = unwrap_unverified(raw)
            if not any(loc[i] == payload for loc in locals_):
                mismatches.append(f"entry {key[:12]} equals no writer's own entry")
            result = ActionResult.decode(payload)
            if result is None:
                mismatches.append(f"entry {key[:12]} does not decode")
                continue
            blobs.update(o.digest for o in result.outputs)
            blobs.update(d for d in (result.stdout, result.stderr) if d)
        ordered = sorted(blobs, key=lambda d: d.hash)
        absent = 0
        for start in range(0, len(ordered), 500):
            group = ordered[start:start + 500]
            try:
                datas = get_many(backend, group)
            except BackendError as e:
                errors.append(f"get_blobs: {e}")
                continue
            for d, data in zip(group, datas):
                if data is None:
                    absent += 1
                    mismatches.append(f"blob {d} named by an entry is absent")
                elif ciopt.hash_bytes(data, fn) != d:
                    mismatches.append(f"blob {d} does not match its digest")
    finally:
        backend.close()
    # What the server holds, by its own means.
    held: dict[str, Any] = {}
    if isinstance(server, RedisServer):
        client = server.client()
        ac = cas = other = bad = 0
        for k in client.scan_iter(match="*", count=1000):
            parts = k.decode().split(":")
            if len(parts) == 3 and parts[1] == "ac":
                ac += 1
            elif len(parts) == 3 and parts[1] == "cas":
                cas += 1
                value = client.get(k)
                if value is not None and ciopt.hash_bytes(value, fn).hash != parts[2]:
                    bad += 1
                    mismatches.append(f"redis key {k.decode()[:30]} does not match its name")
            else:
                other += 1
        held = {"ac keys": ac, "cas keys": cas, "other keys": other, "cas values not matching their key": bad}
    elif isinstance(server, NginxServer):
        ac = len(list((server.files / "ac").glob("*"))) if (server.files / "ac").exists() else 0
        bad = cas = 0
        for p in (server.files / "cas").glob("*") if (server.files / "cas").exists() else []:
            cas += 1
            if ciopt.hash_bytes(p.read_bytes(), fn).hash != p.name:
                bad += 1
                mismatches.append(f"nginx file cas/{p.name[:12]} does not match its name")
        leftovers = sum(1 for _ in (server.dir / "tmp").rglob("*") if _.is_file())
        err = server.error_lines()
        errors += [f"nginx: {ln[:200]}" for ln in err[:5]]
        held = {"ac files": ac, "cas files": cas, "cas files not matching their name": bad,
                "temp files left": leftovers, "error.log errors": len(err)}
    elif isinstance(server, ServeServer):
        try:
            st = server.status()
            held = {k: st.get(k) for k in ("puts", "hits", "misses", "errors", "rejected_puts",
                                           "corrupt_blobs_dropped")}
            if st.get("errors"):
                errors.append(f"cache serve /status errors: {st.get('errors')}")
            if st.get("corrupt_blobs_dropped"):
                mismatches.append(f"cache serve dropped {st.get('corrupt_blobs_dropped')} corrupt blobs")
        except Exception as e:  # noqa: BLE001
            errors.append(f"cache serve /status: {e}")
        server.stop()
        rep = ciopt.Store(server.store).verify()
        held["served store verify"] = f"checked {rep['checked']}, corrupt {len(rep['corrupt'])}"
        mismatches += [f"served store: corrupt {c}" for c in rep["corrupt"][:5]]
    return {"keys": len(keys), "blobs": len(blobs), "entries missing": missing_entries,
            "blobs absent": absent, "errors": errors, "mismatches": mismatches, "held": held}


def bench_concurrent_writers(cfg: Config, results: list[Result]) -> None:
    target = "goal 0 errors, 0 mismatches"
    for kind in ("redis", "serve", "nginx"):
        name = f"concurrent_writers_{KIND_LABEL[kind]}"
        try:
            server = cfg.start(kind)
        except Unavailable as e:
            emit(Result(name, "", target, skipped=f"unavailable: {e}"), results)
            continue
        wss = [workspace_copy(cfg.shape, server.url) for _ in range(cfg.writers)]
        stores = [fresh_store() for _ in range(cfg.writers)]
        logs = scratch_dir("writers-")
        try:
            settle()
            t0 = time.perf_counter()
            procs = [Ciopt(s).popen(w, logs / f"{i}.json", logs / f"{i}.err", "build", "//...", "-j1", "-o", "json")
                     for i, (w, s) in enumerate(zip(wss, stores))]
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - t0
            reports: list[dict[str, Any]] = []
            errors: list[str] = []
            for i, code in enumerate(codes):
                try:
                    reports.append(json.loads((logs / f"{i}.json").read_text()))
                except ValueError:
                    reports.append({})
                    errors.append(f"writer {i}: no JSON report")
                if code != 0:
                    errors.append(f"writer {i} exited {code}")
                for ln in (logs / f"{i}.err").read_text(errors="replace").splitlines():
                    if "warning" in ln or "error:" in ln.lower():
                        errors.append(f"writer {i}: {ln[:200]}")
            v = verify_concurrent(cfg, kind, server, reports, stores)
            errors += v["errors"]
            mismatches = v["mismatches"]
            statuses = [dict(status_counts(rep)) for rep in reports]
            r = Result(name, "", target,
                       summary=f"{len(errors)} errors, {len(mismatches)} mismatches "
                               f"({cfg.writers} writers, {v['keys']} entries and {v['blobs']} blobs read back)")
            r.extra["met"] = not errors and not mismatches
            r.notes["writers"] = f"{wall:.2f} s wall; statuses {statuses}"
            r.notes["entries absent from the server"] = v["entries missing"]
            r.notes["server holds"] = v["held"]
            if errors:
                r.notes["errors"] = errors[:10]
            if mismatches:
                r.notes["mismatches"] = mismatches[:10]
            r.extra.update(errors=errors[:50], mismatches=mismatches[:50], statuses=statuses,
                           entries=v["keys"], blobs=v["blobs"], held=v["held"])
            emit(r, results)
        finally:
            server.stop()
            remove(*wss, *stores, logs)


BENCHES: dict[str, Callable[[Config, list[Result]], None]] = {
    "second_runner_redis": bench_second_runner_redis,
    "second_runner_http_serve+second_runner_nginx": bench_second_runner_http,
    "blobs_20k_redis": bench_blobs_redis,
    "dependency_snapshot": bench_dependency_snapshot,
    "redis_killed_mid_build": bench_redis_killed,
    "concurrent_writers": bench_concurrent_writers,
}


# --- main ----------------------------------------------------------------------------------------

def machine_context(cfg: Config) -> dict[str, Any]:
    return {
        **harness.machine_basics(),
        "ciopt": tool_version([str(CIOPT_CLI), "--version"]) if CIOPT_CLI.exists() else "not installed",
        "redis-server": tool_version(["redis-server", "--version"]),
        "nginx": tool_version([nginx_binary() or "nginx", "-v"]),
        "zstd": tool_version(["zstd", "--version"]),
        "redis-py": harness.dist_version("redis"),
        "hiredis": harness.dist_version("hiredis"),
        "targets": cfg.shape.targets,
        "packages": cfg.shape.packages,
        "repeat": cfg.repeat,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--targets", type=int, default=None, help="genrules (default 1000; 200 with --quick)")
    ap.add_argument("--packages", type=int, default=None, help="packages (default targets / 10)")
    ap.add_argument("--writers", type=int, default=4, help="concurrent writers per backend")
    ap.add_argument("--blobs", type=int, default=20_000, help="blobs in blobs_20k_redis")
    ap.add_argument("--blob-size", type=int, default=6500, help="bytes per blob")
    harness.add_common_args(ap, BENCHES, quick_help="200 targets, 2 repetitions (1 for dependency_snapshot)")
    ap.set_defaults(repeat=3)
    args = ap.parse_args(argv)
    targets = args.targets or (200 if args.quick else 1000)
    packages = args.packages or targets // 10
    if packages < 1 or targets % packages or targets < 2 * packages:
        ap.error("--targets must be a multiple of --packages, at least 2 per package")
    for tool in ("redis-server", "redis-benchmark", "zstd", "tar"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not on PATH (Debian: apt-get install redis-server zstd)")
    cfg = Config(shape=graph_bench.Shape(targets, packages), repeat=harness.repetitions(args),
                 quick=args.quick, writers=args.writers, blobs=args.blobs, blob_size=args.blob_size)
    t0 = time.perf_counter()
    shutil.rmtree(SCRATCH, ignore_errors=True)  # what an interrupted run left
    pristine_workspace(cfg.shape)
    machine = machine_context(cfg)
    harness.print_machine(machine)
    print(f"corpus: {pristine_workspace(cfg.shape)} (copied per runner); scratch {SCRATCH}", flush=True)
    try:
        results = harness.run_benches(BENCHES, harness.select(BENCHES, args.only), cfg)
    finally:
        cfg.stop_all()
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    return harness.finish(args.json, machine, results)


if __name__ == "__main__":
    sys.exit(main())
