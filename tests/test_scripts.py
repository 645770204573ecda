"""scripts/: the classic entry points (issue 12) are thin wrappers over the CLI. Each runs as a
real executable (its shebang), answers --help, and gives exactly what the ciopt command gives:
same stdout, same exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
BIN = Path(sys.executable).parent

# script -> the ciopt commands it stands for (first word chooses when there are two)
CLASSIC = {
    "ci-cache-manager.py": ("cache",),
    "incremental-build-analyzer.py": ("affected", "graph"),
    "distributed-ci-coordinator.py": ("scheduler", "executor"),
    "ci-hardware-detector.py": ("hardware",),
}


def _env(tmp_path: Path, path: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "PATH": os.pathsep.join(path), "CIOPT_CACHE_DIR": str(tmp_path / "store")}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """`python3` on PATH is this venv's, which can import ciopt."""
    return _env(tmp_path, [str(BIN), *os.environ.get("PATH", "").split(os.pathsep)])


def run(argv: list[str | Path], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def ciopt(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "ciopt", *args], env, cwd)


@pytest.mark.parametrize("script", sorted(CLASSIC))
def test_each_script_is_an_executable_with_help(script: str, env: dict[str, str]) -> None:
    path = SCRIPTS / script
    assert os.access(path, os.X_OK) and path.read_text().startswith("#!/usr/bin/env python3\n")
    commands = CLASSIC[script]
    if len(commands) == 1:
        got = run([path, "--help"], env)
        assert got.returncode == 0, got.stderr
        assert got.stdout == ciopt([commands[0], "--help"], env).stdout
    else:
        got = run([path, "--help"], env)
        assert got.returncode == 0 and all(c in got.stdout for c in commands)
        for command in commands:
            sub = run([path, command, "--help"], env)
            assert sub.returncode == 0 and sub.stdout == ciopt([command, "--help"], env).stdout


def test_arguments_and_exit_codes_pass_through(tmp_path: Path, env: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "app.py").write_text("X = 1\n")
    (repo / "tests/test_app.py").write_text("import app\n\ndef test_x():\n    assert app.X == 1\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "i"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    (repo / "app.py").write_text("X = 1  # edited\n")

    analyzer = SCRIPTS / "incremental-build-analyzer.py"
    for args in (["affected", "--base", "HEAD", "-o", "json"], ["graph", "-o", "json"]):
        got, want = run([analyzer, *args], env, repo), ciopt(args, env, repo)
        assert (got.returncode, got.stdout) == (want.returncode, want.stdout) == (0, want.stdout)
    assert json.loads(run([analyzer, "affected", "--base", "HEAD", "-o", "json"], env, repo).stdout)[
        "test_files"] == ["tests/test_app.py"]

    # A usage error is ciopt's, exit 2 and all.
    bad = run([analyzer, "affected", "--base", "no-such-rev"], env, repo)
    assert bad.returncode == ciopt(["affected", "--base", "no-such-rev"], env, repo).returncode == 2

    cache = run([SCRIPTS / "ci-cache-manager.py", "stats", "-o", "json"], env, repo)
    assert cache.returncode == 0 and isinstance(json.loads(cache.stdout), dict)

    hardware = run([SCRIPTS / "ci-hardware-detector.py", "-o", "json"], env)
    assert hardware.returncode == 0 and json.loads(hardware.stdout)["cpus"] >= 1

    status = run([SCRIPTS / "distributed-ci-coordinator.py", "scheduler", "status", "--help"], env)
    assert status.returncode == 0 and "--scheduler" in status.stdout


def test_a_two_command_script_refuses_an_unknown_first_word(env: dict[str, str]) -> None:
    got = run([SCRIPTS / "distributed-ci-coordinator.py", "broker"], env)
    assert got.returncode == 2 and "one of scheduler, executor" in got.stderr
    assert run([SCRIPTS / "distributed-ci-coordinator.py"], env).returncode == 2


def test_with_ciopt_installed_by_pipx_the_script_runs_the_ciopt_on_path(tmp_path: Path) -> None:
    # python3 on PATH cannot import ciopt (pipx keeps it in its own venv); `ciopt` is on PATH.
    shim = tmp_path / "pipx-bin"
    shim.mkdir()
    (shim / "ciopt").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ciopt "$@"\n')
    (shim / "ciopt").chmod(0o755)
    plain_python = next((d for d in ("/usr/bin", "/bin") if Path(d, "python3").exists()), None)
    if plain_python is None or subprocess.run([f"{plain_python}/python3", "-c", "import ciopt"],
                                              capture_output=True).returncode == 0:
        pytest.skip("no system python3 without ciopt to play pipx's case")
    env = _env(tmp_path, [str(shim), plain_python, "/bin"])
    got = run([SCRIPTS / "ci-hardware-detector.py", "-o", "json"], env)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["cpus"] >= 1

    # And with no ciopt anywhere: one clear line, exit 2.
    env = _env(tmp_path, [plain_python, "/bin"])
    got = run([SCRIPTS / "ci-cache-manager.py", "stats"], env)
    assert got.returncode == 2 and "ciopt is not installed" in got.stderr
