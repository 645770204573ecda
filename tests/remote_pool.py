"""Real schedulers and executors on 127.0.0.1 for the remote execution tests.

Every daemon is a real `python -m ciopt ...` process in its own session with its log in a file;
`Pool.close()` stops them all (SIGTERM, then SIGKILL) together with the actions they started.
The scheduler binds port * and prints the port it got, so no two tests race for a port.
GPUs are simulated with the hardware helper's fake NVML (tests/fakes/fake_pynvml.py): the
executor runs the real NVML code path against it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq

from buildws import wait_for
from ciopt.remote.auth import ClientSecurity
from ciopt.remote.transport import Channel, Unreachable

FAKES = Path(__file__).parent / "fakes"
FAKE_NVML = FAKES / "fake_pynvml.py"
A100 = {"driver": "550.54.15", "cuda": "12.4",
        "gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "uuid": "GPU-fake-a100-0"}]}

# Fast failure detection for tests; the client tolerates a longer silence (scheduler restarts).
HEARTBEAT_S = 0.2
HEARTBEAT_TIMEOUT_S = 1.5
REMOTE_CONFIG = """\
enabled: true
remote_execution:
  heartbeat_s: 0.2
  heartbeat_timeout_s: 8
"""


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (read from /proc, so no psutil is needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pids: Iterable[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Daemon:
    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")
        full_env = {**os.environ, **(env or {})}
        for k in ("CIOPT_CONFIG", "CIOPT_DISABLE"):
            full_env.pop(k, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "ciopt", *args], cwd=cwd or log.parent, env=full_env,
                                     stdout=subprocess.PIPE, stderr=self._log, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout_s: float = 20.0) -> str:
        """The next stdout line (the scheduler prints its bound address there)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                ch = os.read(self.proc.stdout.fileno(), 1)
                if not ch:
                    break
                if ch == b"\n":
                    return buf.decode()
                buf += ch
        raise AssertionError(f"{self.name} printed no line in {timeout_s}s; log:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL; the actions it started go too."""
        below = descendants(self.pid) if self.alive() else []
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        _kill(below)
        self._log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def sigkill(self) -> list[int]:
        """SIGKILL the daemon alone (as a crash would); returns the orphans it leaves, for cleanup."""
        below = descendants(self.pid)
        self.proc.kill()
        self.proc.wait(5)
        return below


class Pool:
    """A scheduler and its executors; `close()` stops everything."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.scheduler: Daemon | None = None
        self.address = ""
        self.executors: dict[str, Daemon] = {}
        self.orphans: list[int] = []
        self.security: ClientSecurity | None = None
        self._ctx = zmq.Context()

    def start_scheduler(self, *extra: str, port: str = "*", heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
                        ) -> Daemon:
        d = Daemon("scheduler", ["scheduler", "--bind", f"tcp://127.0.0.1:{port}", "--state-dir",
                                 str(self.root / "scheduler-state"), "--heartbeat", str(HEARTBEAT_S),
                                 "--heartbeat-timeout", str(heartbeat_timeout_s), "--log-level", "debug", *extra],
                   self.root / "scheduler.log")
        line = d.read_line()
        assert "listening on" in line, line
        self.address = line.rsplit(" ", 1)[1]
        self.scheduler = d
        return d

    def start_executor(self, eid: str, *, cost: float, slots: int = 2, gpu: dict[str, Any] | None = None,
                       extra: tuple[str, ...] = (), wait: bool = True) -> Daemon:
        env = {"CIOPT_GPU_DETECTION": "none"}
        if gpu is not None:
            spec = self.root / f"{eid}-gpus.json"
            spec.write_text(json.dumps(gpu))
            env = {"CIOPT_GPU_DETECTION": "nvml", "CIOPT_NVML_MODULE": str(FAKE_NVML), "CIOPT_FAKE_NVML": str(spec)}
        d = Daemon(eid, ["executor", "--scheduler", self.address, "--id", eid, "--cost", str(cost), "--slots",
                         str(slots), "--state-dir", str(self.root / f"{eid}-state"), "--log-level", "debug", *extra],
                   self.root / f"{eid}.log", env=env)
        self.executors[eid] = d
        if wait:
            assert wait_for(lambda: eid in self.executor_ids(), 30), f"{eid} never registered:\n{d.log()}"
        return d

    def status(self, timeout_s: float = 5.0) -> dict[str, Any]:
        chan = Channel(self._ctx, self.address, self.security, idle_timeout_s=timeout_s)
        try:
            chan.send("status", req=7)
            return chan.wait_for(lambda m: m["type"] == "status" and m.get("req") == 7, "status")["status"]
        finally:
            chan.close()

    def executor_ids(self) -> set[str]:
        try:
            return {e["id"] for e in self.status(2.0)["executors"]}
        except Unreachable:
            return set()

    def close(self) -> None:
        for d in self.executors.values():
            d.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        _kill(self.orphans)
        self._ctx.term()

    def logs(self) -> str:
        parts = []
        for d in [*([self.scheduler] if self.scheduler else []), *self.executors.values()]:
            parts.append(f"==== {d.name}\n{d.log()[-4000:]}")
        return "\n".join(parts)

