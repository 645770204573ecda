"""Remote execution benchmarks: dispatch rate, a remote build against a local one, failover, cost.

Run:  .venv/bin/python benches/remote_bench.py [--quick] [--only NAME] [--json FILE]

Every line reads `name: ours X, peer Y, ratio Z (target ...)`; targets are printed, never asserted.
Everything runs on 127.0.0.1 with real `ciopt scheduler` / `ciopt executor` processes, except the
no-op executors of `dispatch_throughput`, which answer each assignment at once without running
anything (what is measured there is the scheduler's dispatch, not process creation).

  dispatch_throughput   no-op actions through a real scheduler to 8 executor slots (2 executors x
                        4): actions/s with 1,024 in flight, and submit-to-result latency p50/p99
                        with 8 in flight (no queueing). Peer: a bare ROUTER relay in Python that
                        forwards the same frames without queue, matching or bookkeeping.
                        Target >= 10,000 actions/s.
  remote_vs_local_build the 1,000-genrule workspace of graph_bench.py (its generator, imported),
                        cold: `ciopt build //... --remote -j6` on two local executors of one slot
                        each vs `ciopt build //... -j2`: two actions run at a time on either side
                        (remotely -j is how many the client keeps submitted; the extra ones wait
                        at the scheduler, or prefetched on an executor). Target ratio <= 1.3.
  failover              time from SIGKILL of the executor running an action to the action
                        running again on the other executor, vs the heartbeat timeout.
                        Target <= heartbeat timeout + 1 s.
  mixed_pool_cost       the same 48 actions (40 CPU, 8 GPU, 0.25 s each) on cpu1 (cost 1), cpu2
                        (cost 2) and gpu1 (fake A100 through the fake NVML, cost 10), 4 in flight:
                        cost (sum of run time x cost per hour) under cost-aware routing vs
                        round-robin. Lower is better.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
sys.path.insert(0, str(BENCHES))
sys.path.insert(0, str(REPO / "tests"))

import zmq  # noqa: E402

import corpus  # noqa: E402
import graph_bench  # noqa: E402  - the 1,000-genrule generator
import harness  # noqa: E402
from ciopt.hardware import Capabilities  # noqa: E402
from ciopt.remote import protocol as P  # noqa: E402
from ciopt.remote.transport import Channel  # noqa: E402
from harness import Result, emit  # noqa: E402

PY = sys.executable
WORK = corpus.CORPUS / "remote"
FAKE_NVML = REPO / "tests" / "fakes" / "fake_pynvml.py"
A100 = {"driver": "550.54.15", "cuda": "12.4", "gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}]}


# -- processes -------------------------------------------------------------------------------------

class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                 module: bool = True) -> None:
        full = {k: v for k, v in os.environ.items() if k not in ("CIOPT_CONFIG", "CIOPT_DISABLE")}
        full.update(env or {})
        self.log = log
        argv = [PY, "-m", "ciopt", *args] if module else args
        self.p = subprocess.Popen(argv, cwd=cwd or WORK, env=full, stdout=subprocess.PIPE,
                                  stderr=open(log, "ab"), start_new_session=True, text=True)

    def line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().strip()

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)


def start_scheduler(state: Path, *extra: str) -> tuple[Proc, str]:
    s = Proc(["scheduler", "--bind", "tcp://127.0.0.1:*", "--state-dir", str(state), "--log-level", "warning",
              *extra], state.with_suffix(".log"))
    line = s.line()
    if "listening on" not in line:
        s.stop()
        raise RuntimeError(f"scheduler did not start: {line!r} {s.log.read_text()[-2000:]}")
    return s, line.rsplit(" ", 1)[1]


def start_executor(address: str, eid: str, cost: float, slots: int, root: Path,
                   gpu: dict[str, Any] | None = None) -> Proc:
    env = {"CIOPT_GPU_DETECTION": "none"}
    if gpu is not None:
        spec = root / f"{eid}-gpus.json"
        spec.write_text(json.dumps(gpu))
        env = {"CIOPT_GPU_DETECTION": "nvml", "CIOPT_NVML_MODULE": str(FAKE_NVML), "CIOPT_FAKE_NVML": str(spec)}
    return Proc(["executor", "--scheduler", address, "--id", eid, "--cost", str(cost), "--slots", str(slots),
                 "--state-dir", str(root / f"{eid}-state"), "--log-level", "warning"], root / f"{eid}.log", env=env)


def status(ctx: zmq.Context, address: str) -> dict[str, Any]:
    chan = Channel(ctx, address, idle_timeout_s=10)
    try:
        chan.send("status", req=1)
        return chan.wait_for(lambda m: m["type"] == "status", "status")["status"]
    finally:
        chan.close()


def wait_executors(ctx: zmq.Context, address: str, n: int | set[str], limit_s: float = 30) -> None:
    """Until n executors (or these ids) are registered."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ids = {e["id"] for e in status(ctx, address)["executors"]}
        if (ids >= n) if isinstance(n, set) else len(ids) >= n:
            return
        time.sleep(0.1)
    raise RuntimeError(f"executors {n} did not register at {address}")


# -- dispatch throughput ---------------------------------------------------------------------------

def _caps(cost: float) -> dict[str, Any]:
    return Capabilities(cpus=4, cpu_model="noop", memory_gb=8.0, os="linux", arch="x86_64", gpus=(), tags=(),
                        cost=cost, cost_class="cpu", hostname="noop").to_dict()


def queued(sock: zmq.Socket[bytes]) -> Iterator[dict[str, Any]]:
    """The messages already waiting on a DEALER socket, decoded, without blocking for more."""
    while True:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        yield P.decode(frame)


def noop_executor(address: str, eid: str, slots: int, stop: Any) -> None:
    """Answers every assignment at once: exit 0, no outputs. Heartbeats so it is never declared dead."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    sock.send(P.encode("hello", role="executor", id=eid, caps=_caps(1), slots=slots, running=[]))
    beat = time.monotonic()
    while not stop.is_set():
        if sock.poll(100):
            for msg in queued(sock):
                if msg["type"] == "assign":
                    sock.send(P.encode("result", id=msg["id"], exit_code=0, executor=eid))
        if time.monotonic() - beat > 1.0:
            sock.send(P.encode("heartbeat", id=eid, running=[]))
            beat = time.monotonic()
    sock.close()
    ctx.term()


def relay_peer(bind_file: str, stop: Any) -> None:
    """The bare peer: a ROUTER that hands each submit to the next free executor slot and each
    result back to its client, decoding and encoding the same frames, with no queue order,
    matching, validation or bookkeeping."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    Path(bind_file).write_text(f"tcp://127.0.0.1:{port}")
    free: list[bytes] = []
    waiting: list[tuple[bytes, dict[str, Any]]] = []
    owner: dict[str, bytes] = {}
    while not stop.is_set():
        if not sock.poll(100):
            continue
        for _ in range(2000):
            try:
                ident, frame = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = P.decode(frame)
            t = msg["type"]
            if t == "hello":
                free.extend([ident] * msg.get("slots", 1))
            elif t == "submit":
                waiting.append((ident, msg))
            elif t == "result":
                free.append(ident)
                sock.send_multipart([owner.pop(msg["id"]), frame])
        while waiting and free:
            client, msg = waiting.pop(0)
            owner[msg["id"]] = client
            sock.send_multipart([free.pop(), P.encode("assign", id=msg["id"], action=msg["action"])])
    sock.close()
    ctx.term()


NOOP_ACTION = {"label": "//bench:noop", "mnemonic": "Genrule", "argv": ["true"], "env": [], "inputs": [],
               "outputs": [], "timeout_s": None, "is_test": False, "flaky": False, "tags": []}


def drive(address: str, n: int, window: int) -> tuple[float, list[float]]:
    """Submit n no-op actions keeping `window` in flight: (actions per second, latencies in s)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = 1_000_000
    sock.connect(address)
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    submitted = done = 0
    t0 = time.perf_counter()
    while done < n:
        while submitted < n and submitted - done < window:
            jid = f"j{submitted}"
            sent_at[jid] = time.perf_counter()
            sock.send(P.encode("submit", id=jid, action=NOOP_ACTION, requires={}, priority=0))
            submitted += 1
        if not sock.poll(10_000):
            raise RuntimeError(f"no result for 10 s ({done}/{n} done)")
        for msg in queued(sock):
            if msg["type"] == "result":
                lat.append(time.perf_counter() - sent_at.pop(msg["id"]))
                done += 1
            elif msg["type"] == "error":
                raise RuntimeError(f"scheduler error: {msg['message']}")
    elapsed = time.perf_counter() - t0
    sock.close()
    ctx.term()
    return n / elapsed, lat


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_dispatch(cfg: argparse.Namespace, out: list[Result]) -> None:
    n = 5_000 if cfg.quick else 20_000
    state = Path(tempfile.mkdtemp(prefix="sched-", dir=WORK))
    stop = mp.Event()
    sched, address = start_scheduler(state, "--heartbeat", "1", "--heartbeat-timeout", "30")
    execs = [mp.Process(target=noop_executor, args=(address, f"noop{i}", 4, stop)) for i in range(2)]
    try:
        for p in execs:
            p.start()
        ctx = zmq.Context()
        wait_executors(ctx, address, 2)
        ctx.term()
        drive(address, 1_000, 256)  # warm up
        rate, _ = drive(address, n, 1024)
        _, lat = drive(address, min(n, 5_000), 8)
    finally:
        stop.set()
        for p in execs:
            p.join(10)
        sched.stop()
    stop = mp.Event()
    bind_file = str(WORK / "relay.addr")
    relay = mp.Process(target=relay_peer, args=(bind_file, stop))
    relay.start()
    try:
        while not Path(bind_file).exists():
            time.sleep(0.05)
        raddr = Path(bind_file).read_text()
        execs = [mp.Process(target=noop_executor, args=(raddr, f"noop{i}", 4, stop)) for i in range(2)]
        for p in execs:
            p.start()
        time.sleep(0.5)
        drive(raddr, 1_000, 256)
        peer_rate, _ = drive(raddr, n, 1024)
        _, peer_lat = drive(raddr, min(n, 5_000), 8)
    finally:
        stop.set()
        for p in [*execs, relay]:
            p.join(10)
        Path(bind_file).unlink(missing_ok=True)
    emit(Result("dispatch_throughput", "bare ROUTER relay", "target: ours >= 10,000 actions/s",
                ours_text=f"{rate:,.0f} actions/s",
                peer_text=f"{peer_rate:,.0f} actions/s (bare ROUTER relay)", ratio_value=rate / peer_rate,
                notes={
                    "latency (8 in flight)": f"p50 {_pct(lat, .5) * 1e3:.3f} ms, p99 {_pct(lat, .99) * 1e3:.3f} ms; "
                                             f"relay p50 {_pct(peer_lat, .5) * 1e3:.3f} ms, "
                                             f"p99 {_pct(peer_lat, .99) * 1e3:.3f} ms",
                    "actions": n, "executor slots": 8,
                }), out)


# -- remote vs local build -------------------------------------------------------------------------

def generate_workspace(shape: graph_bench.Shape) -> Path:
    ws = WORK / "graph_ws"
    marker = WORK / "graph_ws.done"
    want = f"{shape.targets}/{shape.packages}/{graph_bench.CMD}/{graph_bench.INPUT_SEED}"
    if marker.exists() and marker.read_text() == want and ws.exists():
        return ws
    shutil.rmtree(ws, ignore_errors=True)
    graph_bench.write_workspace(shape, ws)
    time.sleep(corpus.RACY_WINDOW_S + 0.5)
    marker.write_text(want)
    return ws


def bench_remote_build(cfg: argparse.Namespace, out: list[Result]) -> None:
    shape = graph_bench.Shape(cfg.targets, cfg.targets // 10)
    ws = generate_workspace(shape)
    ours: list[float] = []
    peer: list[float] = []
    executors_used: set[str] = set()
    for _ in range(1 if cfg.quick else cfg.repeat):
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=WORK))
        # Local: -j2, a fresh store and no ciopt-out.
        shutil.rmtree(ws / "ciopt-out", ignore_errors=True)
        t, doc = harness.Ciopt(scratch / "local").json(ws, "build", "//...", "-j2")
        assert doc["summary"]["executed"] == shape.targets, doc["summary"]
        peer.append(t)
        # Remote: a fresh scheduler, two fresh executors of one slot each, a fresh client store.
        sched, address = start_scheduler(scratch / "sched")
        execs = [start_executor(address, f"e{i}", 1, 1, scratch) for i in range(2)]
        try:
            ctx = zmq.Context()
            wait_executors(ctx, address, 2)
            ctx.term()
            shutil.rmtree(ws / "ciopt-out", ignore_errors=True)
            t, doc = harness.Ciopt(scratch / "remote").json(ws, "build", "//...", "--remote", address,
                                                            "-j6")
            assert doc["summary"]["executed"] == shape.targets, doc["summary"]
            executors_used |= {a["executor"] for a in doc["actions"]}
            ours.append(t)
        finally:
            for e in execs:
                e.stop()
            sched.stop()
            shutil.rmtree(scratch, ignore_errors=True)
    o, p = statistics.median(ours), statistics.median(peer)
    # Each remote build runs right after its local one, so the ratio of a pair shares the load of
    # the moment (on a shared 2-CPU machine it swings from run to run); the median pair is the figure.
    pairs = [a / b for a, b in zip(ours, peer)]
    emit(Result("remote_vs_local_build", "ciopt build -j2, local", "median of paired ratios; target <= 1.3",
                ours_s=o, peer_s=p, ours_samples=ours, peer_samples=peer,
                ours_text=f"{o:.2f} s", peer_text=f"{p:.2f} s (ciopt build -j2, local)",
                ratio_value=statistics.median(pairs),
                notes={"targets": shape.targets, "executors used": ", ".join(sorted(executors_used)),
                       "samples ours": ", ".join(f"{x:.2f}" for x in ours),
                       "samples peer": ", ".join(f"{x:.2f}" for x in peer),
                       "paired ratios": ", ".join(f"{x:.3f}" for x in pairs),
                       "ratio of medians": f"{o / p:.3f}"}), out)


# -- failover --------------------------------------------------------------------------------------

def bench_failover(cfg: argparse.Namespace, out: list[Result]) -> None:
    heartbeat, timeout = 0.5, 2.0
    samples: list[float] = []
    scratch = Path(tempfile.mkdtemp(prefix="failover-", dir=WORK))
    sched, address = start_scheduler(scratch / "sched", "--heartbeat", str(heartbeat), "--heartbeat-timeout",
                                     str(timeout))
    ctx = zmq.Context()
    try:
        for rep in range(2 if cfg.quick else 5):
            marker = scratch / f"marker{rep}"
            first = start_executor(address, f"a{rep}", 1, 1, scratch)
            second = start_executor(address, f"b{rep}", 2, 1, scratch)
            wait_executors(ctx, address, {f"a{rep}", f"b{rep}"})
            action = dict(NOOP_ACTION, label=f"//bench:slow{rep}",
                          argv=["/bin/sh", "-c", f"echo $$ >> {marker}; sleep 30"])
            chan = Channel(ctx, address, idle_timeout_s=30)
            chan.send("submit", id=f"slow{rep}", action=action, requires={}, priority=0)
            deadline = time.monotonic() + 30
            while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(first.p.pid, signal.SIGKILL)  # the executor process alone, as a crash would
            killed = time.monotonic()
            while len(marker.read_text().split()) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            samples.append(time.monotonic() - killed)
            chan.send("cancel", id=f"slow{rep}")
            chan.close()
            for pid in marker.read_text().split():  # the orphaned sleep of the killed executor
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            first.stop()
            second.stop()
            time.sleep(0.3)
    finally:
        ctx.term()
        sched.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    med = statistics.median(samples)
    emit(Result("failover", "heartbeat timeout", f"target: ours <= {timeout + 1:.1f} s = heartbeat timeout + 1 s",
                ours_s=med, peer_s=timeout, ours_samples=samples,
                ours_text=f"{med:.2f} s", peer_text=f"{timeout:.2f} s (heartbeat timeout)",
                notes={"samples": ", ".join(f"{x:.2f}" for x in samples), "heartbeat": f"{heartbeat} s"}), out)


# -- cost-aware routing vs round robin -------------------------------------------------------------

def run_mixed(policy: str, scratch: Path, work_s: float) -> tuple[float, float, dict[str, int]]:
    sched, address = start_scheduler(scratch / f"sched-{policy}", "--policy", policy)
    pool = {"cpu1": (1.0, None), "cpu2": (2.0, None), "gpu1": (10.0, A100)}
    execs = [start_executor(address, eid, cost, 2, scratch, gpu=gpu) for eid, (cost, gpu) in pool.items()]
    ctx = zmq.Context()
    try:
        wait_executors(ctx, address, 3)
        chan = Channel(ctx, address, idle_timeout_s=60)
        jobs = [(f"c{i}", {}) for i in range(40)] + [(f"g{i}", {"gpu": 1}) for i in range(8)]
        jobs = jobs[::6] + [j for k, j in enumerate(jobs) if k % 6]  # interleave GPU work with CPU work
        in_flight: set[str] = set()
        results: list[dict[str, Any]] = []
        t0 = time.monotonic()
        while jobs or in_flight:
            while jobs and len(in_flight) < 4:
                jid, requires = jobs.pop(0)
                action = dict(NOOP_ACTION, label=f"//mix:{jid}-{policy}",
                              argv=["/bin/sh", "-c", f"sleep {work_s}"])
                chan.send("submit", id=f"{jid}-{policy}", action=action, requires=requires, priority=0)
                in_flight.add(f"{jid}-{policy}")
            msg = chan.wait_for(lambda m: m["type"] in ("result", "error"), "mixed pool results")
            if msg["type"] == "error":
                raise RuntimeError(msg["message"])
            in_flight.discard(msg["id"])
            results.append(msg)
        makespan = time.monotonic() - t0
        chan.close()
    finally:
        ctx.term()
        for e in execs:
            e.stop()
        sched.stop()
    caps = {eid: cost for eid, (cost, _) in pool.items()}
    total = sum((r["finished_at"] - r["started_at"]) * caps[r["executor"]] / 3600 for r in results)
    placed: dict[str, int] = {}
    for r in results:
        placed[r["executor"]] = placed.get(r["executor"], 0) + 1
    return total, makespan, placed


def bench_mixed_cost(cfg: argparse.Namespace, out: list[Result]) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="mixed-", dir=WORK))
    try:
        ours, ours_t, ours_placed = run_mixed("cost", scratch, 0.25)
        peer, peer_t, peer_placed = run_mixed("round_robin", scratch, 0.25)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    emit(Result("mixed_pool_cost", "round-robin", "lower is better; same 48 actions",
                ours_text=f"{ours * 1000:.3f} milli-units", peer_text=f"{peer * 1000:.3f} milli-units (round-robin)",
                ratio_value=ours / peer, extra={"ours_cost": ours, "peer_cost": peer},
                notes={
                    "placement ours": ours_placed, "placement round-robin": peer_placed,
                    "makespan": f"ours {ours_t:.2f} s, round-robin {peer_t:.2f} s",
                }), out)


BENCHES: dict[str, Callable[[argparse.Namespace, list[Result]], None]] = {
    "dispatch_throughput": bench_dispatch,
    "remote_vs_local_build": bench_remote_build,
    "failover": bench_failover,
    "mixed_pool_cost": bench_mixed_cost,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    harness.add_common_args(ap, BENCHES, repeat_help="repetitions of the remote build bench (median taken)",
                            quick_help="fewer actions and repetitions")
    ap.add_argument("--targets", type=int, default=1000, help="genrules in the remote build bench")
    cfg = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    machine = {**harness.machine_basics(), "cpus": os.cpu_count(), "zmq": zmq.zmq_version()}
    harness.print_machine(machine)
    results = harness.run_benches(BENCHES, harness.select(BENCHES, cfg.only), cfg)
    return harness.finish(cfg.json, machine, results)


if __name__ == "__main__":
    sys.exit(main())
