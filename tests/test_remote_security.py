"""CurveZMQ admission and a live scheduler under a barrage of bad frames."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth

from buildws import write_files
from remote_pool import REMOTE_CONFIG, Pool, wait_for
from ciopt.remote import protocol as P
from ciopt.remote.auth import ClientSecurity

pytestmark = pytest.mark.timeout(240)


def ciopt(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("CIOPT_CONFIG", "CIOPT_DISABLE")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "ciopt", *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=120)




def test_keygen_writes_zmq_certificates(tmp_path: Path) -> None:
    proc = ciopt(tmp_path, "keygen", "keys", "--name", "runner1", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    public, secret = zmq.auth.load_certificate(tmp_path / "keys/runner1.key_secret")
    assert zmq.auth.load_certificate(tmp_path / "keys/runner1.key") == (public, None)
    assert doc["public_key"] == public.decode() and len(secret) == 40
    assert stat.S_IMODE(os.stat(tmp_path / "keys/runner1.key_secret").st_mode) == 0o600
    again = ciopt(tmp_path, "keygen", "keys", "--name", "runner1")
    assert again.returncode == 2 and again.stderr.count("ciopt: error:") == 1 and "--force" in again.stderr


def test_only_allowlisted_keys_are_admitted(pool: Pool, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("scheduler", "runner", "ci", "intruder"):
        assert ciopt(tmp_path, "keygen", str(keys), "--name", name).returncode == 0
    allow = tmp_path / "allowed"
    allow.mkdir()
    for name in ("runner", "ci"):
        (allow / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    pool.start_scheduler("--curve-secret", str(keys / "scheduler.key_secret"), "--allow", str(allow))
    pool.security = ClientSecurity.from_files(keys / "ci.key_secret", keys / "scheduler.key")
    curve = ("--curve-secret", str(keys / "runner.key_secret"), "--server-key", str(keys / "scheduler.key"))
    pool.start_executor("runner", cost=1, extra=curve)

    bad = ("--curve-secret", str(keys / "intruder.key_secret"), "--server-key", str(keys / "scheduler.key"))
    intruder = pool.start_executor("intruder", cost=0, extra=bad, wait=False)
    assert intruder.proc.wait(60) == 2, intruder.log()
    assert "refused our CurveZMQ key" in intruder.log()
    intruder_key = zmq.auth.load_certificate(keys / "intruder.key")[0].decode()
    assert wait_for(lambda: f"refused a connection with CURVE key {intruder_key}" in pool.scheduler.log())

    plain = pool.start_executor("plain", cost=0, wait=False)  # no keys at all
    assert plain.proc.wait(60) == 2, plain.log()
    assert "requires CurveZMQ" in plain.log()
    assert pool.executor_ids() == {"runner"}

    # A client with an admitted key builds; one without keys is refused and falls back to local.
    ws = tmp_path / "ws"
    write_files(ws, {"config/ci-optimization.yaml": REMOTE_CONFIG, "in.txt": "x\n",
                     "BUILD": 'genrule(name = "g", srcs = ["in.txt"], outs = ["g.txt"], cmd = "cat $< > $@")\n'})
    env = {"CIOPT_CACHE_DIR": str(tmp_path / "s1"), "CIOPT_CURVE_SECRET": str(keys / "ci.key_secret"),
           "CIOPT_SERVER_KEY": str(keys / "scheduler.key")}
    ok = ciopt(ws, "build", "//:g", "--remote", pool.address, "-o", "json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["actions"][0]["executor"] == "runner"
    refused = ciopt(ws, "build", "//:g", "--remote", pool.address, "-o", "json",
                    env={"CIOPT_CACHE_DIR": str(tmp_path / "s2")})
    assert refused.returncode == 0 and "requires CurveZMQ" in refused.stderr, refused.stderr
    assert json.loads(refused.stdout)["actions"][0]["executor"].startswith("local:")


# -- fuzzing a live scheduler ------------------------------------------------------------------------

_VALUES: list[object] = [None, True, False, 0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, float("nan"), float("inf"),
                         "", "x", "../../etc/passwd", "/abs", "a" * 300, b"", b"\x00" * 64, [], [1, "a"], ["a"] * 5,
                         {}, {"a": 1}, {"label": "//:x", "argv": ["true"]},
                         "0" * 64 + "/1", "f" * 64 + "/18446744073709551615", "zz/1"]


def _random_value(rng: random.Random, depth: int = 0) -> object:
    if depth < 2 and rng.random() < 0.2:
        if rng.random() < 0.5:
            return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(["id", "role", "caps", "x", "label"]): _random_value(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    return rng.choice(_VALUES)


def _plausible(rng: random.Random) -> dict[str, object]:
    """A frame of a real message type whose fields are drawn at random, mostly of the right names."""
    msg_type = rng.choice(list(P.MESSAGES) + ["nope"])
    required, optional = P.MESSAGES.get(msg_type, ({}, {}))
    fields = {name: _random_value(rng) for name in [*required, *optional] if rng.random() < 0.85}
    fields.update({"v": rng.choice([P.VERSION, P.VERSION, 0, "1", None]), "type": msg_type})
    return fields


def _valid_frames() -> list[bytes]:
    action = {"label": "//:x", "mnemonic": "Genrule", "argv": ["/bin/true"], "env": [], "inputs": [],
              "outputs": ["x.txt"], "timeout_s": None, "is_test": False, "flaky": False, "tags": []}
    return [
        P.encode("status", req=1), P.encode("find_missing", req=2, digests=["0" * 64 + "/3"]),
        P.encode("submit", id="fuzz-1", action=action, requires={"gpu": 99}, priority=1),
        P.encode("upload", req=3, digest="0" * 64 + "/3", offset=0, data=b"abc", last=True),
        P.encode("hello", role="executor", id="ghost", caps={"cpus": "many"}, slots=1),
        P.encode("result", id="nobody", exit_code=0, executor="ghost", outputs=[["../x", "0" * 64 + "/1", False]]),
    ]


def test_a_live_scheduler_survives_random_and_truncated_frames(pool: Pool, tmp_path: Path) -> None:
    pool.start_scheduler()
    pool.start_executor("cpu1", cost=1)
    rng = random.Random(20261124)
    ctx = zmq.Context()
    host, port = pool.address.removeprefix("tcp://").rsplit(":", 1)
    try:
        dealers = [ctx.socket(zmq.DEALER) for _ in range(4)]
        for d in dealers:
            d.linger = 0
            d.connect(pool.address)
        sent = 0
        for round_ in range(1500):
            d = rng.choice(dealers)
            kind = rng.random()
            if kind < 0.25:
                frame = rng.randbytes(rng.randint(0, 600))
            elif kind < 0.55:
                whole = rng.choice(_valid_frames())
                frame = whole[:rng.randint(0, len(whole) - 1)]  # truncated
            else:
                frame = msgpack.packb(_plausible(rng), use_bin_type=True)
            if rng.random() < 0.03:
                d.send_multipart([frame, rng.randbytes(8)])  # too many frames
            else:
                d.send(frame)
            sent += 1
        # A frame over MAX_FRAME: libzmq drops the connection that sent it.
        big = ctx.socket(zmq.DEALER)
        big.linger = 0
        big.connect(pool.address)
        big.send(b"\x00" * (P.MAX_FRAME + 1))
        # Garbage below ZeroMQ: raw TCP bytes, a truncated greeting, a half-open connection.
        for i in range(20):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(rng.randbytes(rng.randint(1, 300)) if i % 2 else b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")
        time.sleep(0.5)
        # Still serving: status answers, the executor is still registered, and a build runs.
        assert wait_for(lambda: pool.executor_ids() == {"cpu1"}, 30), pool.logs()
        status = pool.status()
        assert status["totals"]["bad_frames"] > 100
        ws = tmp_path / "ws"
        write_files(ws, {"config/ci-optimization.yaml": REMOTE_CONFIG, "in.txt": "x\n",
                         "BUILD": 'genrule(name = "g", srcs = ["in.txt"], outs = ["g.txt"], cmd = "cat $< > $@")\n'})
        proc = ciopt(ws, "build", "//:g", "--remote", pool.address, "-o", "json",
                     env={"CIOPT_CACHE_DIR": str(tmp_path / "store")})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["actions"][0]["executor"] == "cpu1"
        log = pool.scheduler.log()
        assert "dropped a bad frame" in log
        assert "internal error" not in log, log[-5000:]  # every bad frame was refused by validation
        assert pool.scheduler.alive()
    finally:
        ctx.destroy(linger=0)
