"""Helpers for the build/test/query CLI tests: temporary workspaces and their JSON reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ciopt import Digest

CONFIG = "enabled: true\n"


def write_files(root: Path, files: Mapping[str, str | bytes]) -> None:
    """Write `{relative path: content}` under `root`; str content is dedented first."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))


def write_big_file(path: Path, size: int, seed: int | None = 0, digest: str = "blake3") -> "Digest":
    """A file of `size` random bytes, written 1 MiB at a time (never whole in memory); its Digest.
    A seed gives the same bytes every time; None, fresh ones."""
    import random

    from ciopt import hash_file

    rng = random.Random(seed) if seed is not None else None
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n) if rng is not None else os.urandom(n))
            left -= n
    return hash_file(path, digest=digest)


def make_workspace(tmp_path: Path, files: Mapping[str, str | bytes], config: str = CONFIG) -> Path:
    """A workspace at tmp_path/ws (the store of the `cli` fixture lives beside it, not in it)."""
    ws = tmp_path / "ws"
    write_files(ws, {"config/ci-optimization.yaml": config, **files})
    return ws


def run_json(cli: Callable[..., subprocess.CompletedProcess], cwd: Path, *args: str,
             env: dict[str, str] | None = None, expect: int | None = 0) -> dict:
    """Run `ciopt ARGS -o json` in `cwd`; check the exit code (unless expect is None); the parsed JSON."""
    proc = cli(*args, "-o", "json", cwd=cwd, env=env)
    if expect is not None:
        assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    doc["_stderr"] = proc.stderr
    doc["_rc"] = proc.returncode
    return doc


def statuses(doc: dict) -> dict[str, str]:
    return {a["label"]: a["status"] for a in doc["actions"]}


def action(doc: dict, label: str) -> dict:
    found = [a for a in doc["actions"] if a["label"] == label]
    assert len(found) == 1, (label, doc["actions"])
    return found[0]


def row_of_test(doc: dict, label: str) -> dict:
    found = [t for t in doc["tests"] if t["label"] == label]
    assert len(found) == 1, (label, doc["tests"])
    return found[0]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def pid_alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie nobody reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def wait_for(condition: Callable[[], bool], limit_s: float = 20.0) -> bool:
    """Poll until `condition()` holds or `limit_s` passes; whether it held. (A deadline, not a timing assert.)"""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def spawn_ciopt(cwd: Path, store: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m ciopt ARGS` in the background, in its own session, with the `cli` fixture's store."""
    full_env = {**os.environ, "CIOPT_CACHE_DIR": str(store), **(env or {})}
    # SIGINT back to its default: a background job of a non-interactive shell inherits it ignored,
    # and Python would then never turn it into KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-m", "ciopt", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def cli_store(tmp_path: Path) -> Path:
    """The CIOPT_CACHE_DIR the `cli` fixture of conftest.py gives its processes."""
    return tmp_path / "cli-store"
