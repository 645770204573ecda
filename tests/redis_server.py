"""Real `redis-server` processes on 127.0.0.1 for the cache tests (the Debian package).

    (registered for every module in tests/conftest.py: pytest_plugins)

`redis_server` is a fresh server per test: no persistence, a free TCP port, and a unix socket in
a short /tmp directory (socket paths are limited to about 100 bytes, pytest's tmp_path may not
be). Where redis-server is not installed, the tests that use it are skipped, naming the package.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_LIMIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process; `url` and `unix_url` reach it (database 0)."""

    def __init__(self, workdir: Path, args: tuple[str, ...]) -> None:
        self.workdir = workdir
        self.socket = workdir / "redis.sock"
        self.log = workdir / "redis.log"
        self.port = 0
        self._args = args
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> None:
        # A free port can be taken between the probe and the bind: try a few.
        for _ in range(5):
            self.port = free_port()
            cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.log),
                   "--unixsocket", str(self.socket), "--unixsocketperm", "700", *self._args]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready():
                return
            self.kill()
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"redis-server did not start ({' '.join(self._args)}):\n{log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if self._answers_ping():
                return True
            time.sleep(0.02)
        return False

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return False
        # A server with --requirepass answers NOAUTH: up all the same.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections (the kernel does) and never answers."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused server would never see SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")


class Servers:
    """Starts servers for one test and stops them all after it."""

    def __init__(self) -> None:
        self._started: list[RedisServer] = []

    def __call__(self, *args: str) -> RedisServer:
        require_redis_server()
        server = RedisServer(Path(tempfile.mkdtemp(prefix="ciopt-redis-", dir="/tmp")), args)
        self._started.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in self._started:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def start_redis() -> Iterator[Servers]:
    """`start_redis(*extra_args)` starts another redis-server (e.g. "--requirepass", "pw")."""
    servers = Servers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def redis_server(start_redis: Servers) -> RedisServer:
    return start_redis()


__all__ = ["RedisServer", "free_port", "redis_server", "require_redis_server", "start_redis"]
