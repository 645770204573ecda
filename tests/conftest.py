"""Shared fixtures: a fresh store per test and a way to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ciopt

# Fixtures that start real servers (redis_server, start_redis, serve, nginx), for every module.
pytest_plugins = ["redis_server", "http_servers"]


@pytest.fixture
def store(tmp_path: Path) -> ciopt.Store:
    return ciopt.Store(tmp_path / "store")


CliRunner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    """Runs `python -m ciopt ARGS` as a real process, with its own cache directory."""

    def run(*args: str | os.PathLike, cwd: Path | None = None, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "CIOPT_CACHE_DIR": str(tmp_path / "cli-store"), **(env or {})}
        # py_test in fixture workspaces runs with this suite's venv (it has pytest) unless a test
        # names another project interpreter; without a venv, python3 on PATH as for any user.
        if sys.prefix != sys.base_prefix:
            full_env.setdefault("VIRTUAL_ENV", sys.prefix)
        proc = subprocess.run(
            [sys.executable, "-m", "ciopt", *map(str, args)],
            cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ciopt {args} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    return run


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2, contains: str = "") -> None:
    """Bad input: the given exit code and a single `ciopt: error:` line, never a traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("ciopt: error:")]
    assert len(errors) == 1, proc.stderr
    assert contains in errors[0], errors[0]


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[object]:
    """An empty remote pool per test (scheduler and executors started by the test); a module
    may override it with a shared one."""
    from remote_pool import Pool  # lazy: only remote tests pay for importing zmq

    p = Pool(tmp_path / "pool")
    try:
        yield p
    finally:
        p.close()
