"""The local executor: runs one command in a sandbox, with a timeout over its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Children of this process, by process group, so Ctrl-C can stop all of them.
_running: set[int] = set()
_running_lock = threading.Lock()
TERM_GRACE_S = 2.0


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    timed_out: bool
    started_at: float
    finished_at: float
    stdout: Path
    stderr: Path

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


def run_command(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float | None,
                log_dir: Path) -> RunResult:
    stdout, stderr = log_dir / "stdout", log_dir / "stderr"
    started = time.time()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        except OSError as e:
            err.write(f"ciopt: cannot start {argv[0]}: {e.strerror or e}\n".encode())
            return RunResult(127, False, started, time.time(), stdout, stderr)
        with _running_lock:
            _running.add(proc.pid)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, proc)
        finally:
            with _running_lock:
                _running.discard(proc.pid)
    return RunResult(proc.returncode, timed_out, started, time.time(), stdout, stderr)


def _kill_group(pgid: int, proc: subprocess.Popen) -> None:
    """SIGTERM the whole group, then SIGKILL what is left: no orphaned grandchildren."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:
                # The leader is gone; make sure nothing else of its group survives.
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        except subprocess.TimeoutExpired:
            continue


def kill_all() -> None:
    """Stop every running action (Ctrl-C)."""
    with _running_lock:
        groups = list(_running)
    for pgid in groups:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            time.sleep(0.05)
