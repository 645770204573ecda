"""Real HTTP cache servers on 127.0.0.1 for the HTTP backend tests.

* `Nginx`: Debian's nginx with WebDAV PUT, the most common self-hosted Bazel cache, run in the
  foreground with its own prefix, config, temp directories, pid file and error log, so it
  touches nothing outside the test's directory. Three locations: `/cache` (open), `/basic`
  (basic auth) and `/bearer` (a Bearer token); and, where openssl can make a self-signed
  certificate, the same over TLS on a second port.
* `ServeProcess`: `python -m ciopt cache serve --bind 127.0.0.1:0`, a real process; the
  address is read from its first stdout line.

Fixtures: `nginx` (skipped with the reason when nginx is not installed) and `serve` (a factory;
every server it started is stopped at teardown).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

NGINX_USER = "ci"
NGINX_PASSWORD = "s3cret-basic"
NGINX_TOKEN = "s3cret-bearer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> bool:
    """True once 127.0.0.1:port accepts connections; False when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_request(url: str, method: str = "GET", body: bytes | None = None, token: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of one plain HTTP request; an error status is an answer, not an exception."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


NGINX_CONF = """\
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 0;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/root;
        dav_methods PUT;
        create_full_put_path on;
        dav_access user:rw;
        location /basic/ {{
            auth_basic "ciopt cache";
            auth_basic_user_file {dir}/htpasswd;
        }}
        location /bearer/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
        }}
    }}
{tls}
}}
"""
NGINX_TLS = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/tls/cert.pem;
        ssl_certificate_key {dir}/tls/key.pem;
        root {dir}/root;
        dav_methods PUT;
        create_full_put_path on;
        dav_access user:rw;
    }}
"""


def self_signed_cert(dir: Path) -> bool:
    """A certificate for 127.0.0.1 in dir/cert.pem (its own CA); False without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(dir / "key.pem"), "-out", str(dir / "cert.pem"), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, timeout=60, check=False,
    )
    return proc.returncode == 0


class Nginx:
    def __init__(self, binary: str, dir: Path) -> None:
        self.dir = dir
        self.proc: subprocess.Popen | None = None
        for sub in ("root/cache", "root/basic", "root/bearer", "tmp"):
            (dir / sub).mkdir(parents=True, exist_ok=True)
        # {PLAIN} is nginx's RFC 2307 scheme: no crypt() needed for a test password.
        (dir / "htpasswd").write_text(f"{NGINX_USER}:{{PLAIN}}{NGINX_PASSWORD}\n")
        # As root, nginx would hand its workers to `nobody`, who cannot write the test's directories.
        user = "user root;" if os.geteuid() == 0 else ""
        # A second server speaks TLS with a self-signed certificate (dir/tls/cert.pem).
        self.tls_port: int | None = None
        has_tls = self_signed_cert(dir / "tls")
        for _ in range(5):  # another process may take the free port before nginx binds it
            self.port = free_port()
            tls = ""
            if has_tls:
                self.tls_port = free_port()
                tls = NGINX_TLS.format(dir=dir, port=self.tls_port)
            (dir / "nginx.conf").write_text(
                NGINX_CONF.format(user=user, dir=dir, port=self.port, token=NGINX_TOKEN, tls=tls))
            self.proc = subprocess.Popen(
                [binary, "-p", str(dir), "-c", str(dir / "nginx.conf"), "-e", str(dir / "error.log"),
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(dir / "stderr.log", "ab"),
                start_new_session=True,
            )
            if wait_for_port(self.port, self.proc):
                return
            stop_process(self.proc)
            if "Address already in use" not in self.log():
                break
        raise RuntimeError(f"nginx did not start:\n{self.log()}")

    def url(self, location: str = "cache") -> str:
        return f"http://127.0.0.1:{self.port}/{location}"

    def tls_url(self, location: str = "cache") -> str | None:
        return None if self.tls_port is None else f"https://127.0.0.1:{self.tls_port}/{location}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "tls" / "cert.pem"

    def files(self, location: str = "cache") -> Path:
        return self.dir / "root" / location

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.dir / "error.log", self.dir / "stderr.log")
                       if p.exists())

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT)  # graceful: workers finish their requests


class ServeProcess:
    """`ciopt cache serve` as a real process."""

    def __init__(self, store: Path, *args: str, env: dict[str, str] | None = None, log: Path,
                 startup_timeout: float = 30.0) -> None:
        self.store = store
        self.log_path = log
        cmd = [sys.executable, "-m", "ciopt", "cache", "serve", "--bind", "127.0.0.1:0", "--store", str(store),
               *args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=open(log, "ab"),
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], startup_timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("serving http://"):
            stop_process(self.proc)
            raise RuntimeError(f"ciopt cache serve did not start ({line!r}):\n{self.log()}")
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def status(self, token: str | None = None) -> dict:
        req = urllib.request.Request(self.url + "/status")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def anon_rss_bytes(self) -> int:
        """The process's anonymous resident memory (heap, buffers): unlike VmRSS/VmHWM it leaves
        out file pages the process maps (the hashing mmaps whole files), which cost no memory."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no RssAnon")

    def stop(self) -> int:
        stop_process(self.proc)
        return self.proc.returncode


@pytest.fixture(name="nginx")
def nginx_fixture(tmp_path: Path) -> Iterator[Nginx]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-full); the WebDAV tests need it")
    server = Nginx(binary, tmp_path / "nginx")
    try:
        yield server
    finally:
        server.stop()


ServeFactory = Callable[..., ServeProcess]


@pytest.fixture(name="serve")
def serve_fixture(tmp_path: Path) -> Iterator[ServeFactory]:
    started: list[ServeProcess] = []

    def start(*args: str, store: Path | None = None, env: dict[str, str] | None = None) -> ServeProcess:
        n = len(started)
        p = ServeProcess(store or tmp_path / f"serve-store-{n}", *args, env=env, log=tmp_path / f"serve-{n}.log")
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()
