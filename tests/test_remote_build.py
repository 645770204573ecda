"""`ciopt build/test --remote` against a real pool: a scheduler and three executors on 127.0.0.1.

The pool: cpu1 (cost 1), cpu2 (cost 2), gpu1 (a fake A100 through the fake NVML, cost 10).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildws import write_files
from remote_pool import A100, REMOTE_CONFIG, Pool

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    p = Pool(tmp_path_factory.mktemp("pool"))
    try:
        p.start_scheduler()
        p.start_executor("cpu1", cost=1, slots=2)
        p.start_executor("cpu2", cost=2, slots=2)
        p.start_executor("gpu1", cost=10, slots=2, gpu=A100)
        yield p
    finally:
        p.close()


def ciopt(cwd: Path, store: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("CIOPT_CONFIG", "CIOPT_DISABLE")}
    full.update({"CIOPT_CACHE_DIR": str(store), **(env or {})})
    return subprocess.run([sys.executable, "-m", "ciopt", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=180)


def run_json(cwd: Path, store: Path, *args: str, expect: int = 0) -> dict:
    proc = ciopt(cwd, store, *args, "-o", "json")
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    doc["_stderr"] = proc.stderr
    return doc


def by_label(doc: dict) -> dict[str, dict]:
    return {a["label"]: a for a in doc["actions"]}


def outputs(ws: Path) -> dict[str, tuple[bytes, bool]]:
    out = ws / "ciopt-out"
    return {str(p.relative_to(out)): (p.read_bytes(), os.access(p, os.X_OK))
            for p in sorted(out.rglob("*")) if p.is_file() and ".sandbox" not in p.parts
            and ".remote-tmp" not in p.parts and "logs" not in p.parts and "testlogs" not in p.parts}


# -- routing --------------------------------------------------------------------------------------

ROUTING = {
    "config/ci-optimization.yaml": REMOTE_CONFIG,
    "cpu/in.txt": "cpu input\n",
    "cpu/BUILD": "".join(
        f'genrule(name = "c{i}", srcs = ["in.txt"], outs = ["c{i}.txt"], cmd = "cat $< > $@; echo {i} >> $@")\n'
        for i in range(4)),
    "gpu/BUILD": "".join(
        f'genrule(name = "g{i}", srcs = ["//cpu:c{i}"], outs = ["g{i}.txt"], cmd = "cat $(SRCS) > $@",\n'
        f'        requires = {{"gpu": 1}})\n' for i in range(3))
        + 'genrule(name = "big", srcs = ["//cpu:c0"], outs = ["big.txt"], cmd = "cat $< > $@",\n'
          '        requires = {"gpu": 1, "gpu_memory_gb": 40, "gpu_name": "a100", "cuda": ">=12"})\n',
    "huge/BUILD": 'genrule(name = "eight", outs = ["x.txt"], cmd = "echo > $@", requires = {"gpu": 8})\n'
                  'genrule(name = "arm", outs = ["y.txt"], cmd = "echo > $@", requires = {"arch": "riscv64"})\n',
}


def test_gpu_work_runs_on_the_gpu_executor_and_cpu_work_on_the_cheapest(pool: Pool, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_files(ws, ROUTING)
    doc = run_json(ws, tmp_path / "store", "build", "//cpu/...", "//gpu/...", "--remote", pool.address, "-j", "2")
    acts = by_label(doc)
    assert {l: a["status"] for l, a in acts.items()} == {l: "executed" for l in acts}
    for label, a in acts.items():
        # -j 2 never needs more than cpu1's two slots, so no CPU action overflows to cpu2.
        want = "gpu1" if label.startswith("//gpu:") else "cpu1"
        assert a["executor"] == want, (label, a, pool.logs())
    assert (ws / "ciopt-out/gpu/g2.txt").read_text() == "cpu input\n2\n"


def test_cpu_work_overflows_to_the_next_cheapest_not_to_the_gpu(pool: Pool, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    # Four slow independent actions at once: cpu1 (2 slots) fills, cpu2 takes the rest; the
    # dearer GPU box takes CPU work only when both CPU boxes are full (here they never are).
    write_files(ws, {
        "config/ci-optimization.yaml": REMOTE_CONFIG, "cpu/in.txt": "x\n",
        "cpu/BUILD": "".join(f'genrule(name = "s{i}", srcs = ["in.txt"], outs = ["s{i}.txt"], '
                             f'cmd = "sleep 0.5; cat $< > $@")\n' for i in range(4)),
    })
    doc = run_json(ws, tmp_path / "store", "build", "//cpu/...", "--remote", pool.address, "-j", "4")
    used = {a["executor"] for a in doc["actions"]}
    assert used <= {"cpu1", "cpu2"} and "cpu1" in used, doc["actions"]


def test_an_unsatisfiable_requirement_fails_at_once_naming_the_pool(pool: Pool, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_files(ws, ROUTING)
    proc = ciopt(ws, tmp_path / "store", "build", "//huge:eight", "--remote", pool.address)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    line = next(l for l in proc.stderr.splitlines() if l.startswith("FAILED //huge:eight"))
    assert "no executor can run an action that requires gpu=8" in line
    assert "The pool has 3 executors" in line
    for eid in ("cpu1", "cpu2", "gpu1"):
        assert eid in line, line
    assert "NVIDIA A100" in line and "needs 8 GPUs" in line
    doc = run_json(ws, tmp_path / "store", "build", "//huge:arm", "--remote", pool.address, expect=1)
    assert "needs arch riscv64" in by_label(doc)["//huge:arm"]["message"]


def test_scheduler_status_reports_the_pool(pool: Pool, tmp_path: Path) -> None:
    proc = ciopt(tmp_path, tmp_path / "store", "scheduler", "status", "--scheduler", pool.address, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    execs = {e["id"]: e for e in doc["executors"]}
    assert set(execs) == {"cpu1", "cpu2", "gpu1"}
    assert execs["gpu1"]["caps"]["gpus"][0]["name"] == "NVIDIA A100-SXM4-80GB"
    assert execs["gpu1"]["cost"] == 10 and execs["cpu1"]["slots"] == 2
    assert all(e["last_heartbeat_age_s"] < 60 for e in execs.values())
    assert {"length", "by_requires"} <= set(doc["queue"]) and 0 <= doc["utilization"] <= 1
    text = ciopt(tmp_path, tmp_path / "store", "scheduler", "status", "--scheduler", pool.address)
    assert text.returncode == 0 and "gpu1: " in text.stdout


def test_many_clients_at_once_each_get_their_own_results(pool: Pool, tmp_path: Path) -> None:
    procs = []
    for n in range(4):
        ws = tmp_path / f"ws{n}"
        write_files(ws, {"config/ci-optimization.yaml": REMOTE_CONFIG, "in.txt": f"client {n}\n",
                         "BUILD": "".join(f'genrule(name = "g{i}", srcs = ["in.txt"], outs = ["g{i}.txt"], '
                                          f'cmd = "cat $< > $@; echo {i} >> $@")\n' for i in range(5))})
        env = {k: v for k, v in os.environ.items() if k not in ("CIOPT_CONFIG", "CIOPT_DISABLE")}
        env["CIOPT_CACHE_DIR"] = str(tmp_path / f"store{n}")
        procs.append((ws, n, subprocess.Popen([sys.executable, "-m", "ciopt", "build", "//...", "--remote",
                                               pool.address, "-j", "3", "-o", "json"], cwd=ws, env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for ws, n, proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert {a["status"] for a in json.loads(out)["actions"]} == {"executed"}
        for i in range(5):
            assert (ws / f"ciopt-out/g{i}.txt").read_text() == f"client {n}\n{i}\n"


# -- same results as a local build ------------------------------------------------------------------

SAME = {
    "config/ci-optimization.yaml": REMOTE_CONFIG,
    "a/in.txt": "hello\n",
    "a/BUILD": """\
        genrule(name = "upper", srcs = ["in.txt"], outs = ["upper.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "tool", outs = ["tool.sh"], cmd = "printf '#!/bin/sh\\\\necho tool\\\\n' > $@; chmod +x $@")
    """,
    "b/BUILD": """\
        genrule(name = "twice", srcs = ["//a:upper"], outs = ["twice.txt", "sub/copy.txt"],
                cmd = "cat $< $< > $(location twice.txt) && cp $< $(location sub/copy.txt)")
        sh_test(name = "t_sh", srcs = ["t.sh"], data = [":twice", "//a:tool"])
        py_test(name = "test_py", srcs = ["test_py.py"], data = [":twice"])
    """,
    "b/t.sh": "grep -q HELLO b/twice.txt && ./a/tool.sh | grep -q tool && echo sh-ok\n",
    "b/test_py.py": """\
        def test_twice():
            assert open("b/twice.txt").read() == "HELLO\\nHELLO\\n"
    """,
    "bad/BUILD": """\
        genrule(name = "escape", outs = ["e.txt"], cmd = "ln -s /etc/hostname $@")
        genrule(name = "fails", outs = ["f.txt"], cmd = "echo broken >&2; exit 3")
        sh_test(name = "t_fail", srcs = ["fail.sh"])
    """,
    "bad/fail.sh": "echo failing-test-output; exit 4\n",
}


def _summary(doc: dict) -> dict:
    return {k: v for k, v in doc["summary"].items() if k not in ("duration_s", "loading_s")}


def test_remote_build_matches_local_and_rebuilds_are_cache_hits(pool: Pool, tmp_path: Path) -> None:
    local_ws, remote_ws, fresh_ws = tmp_path / "local", tmp_path / "remote", tmp_path / "fresh"
    for ws in (local_ws, remote_ws, fresh_ws):
        write_files(ws, SAME)
    local = run_json(local_ws, tmp_path / "s-local", "test", "//a/...", "//b/...")
    remote = run_json(remote_ws, tmp_path / "s-remote", "test", "//a/...", "//b/...", "--remote", pool.address)
    la, ra = by_label(local), by_label(remote)
    assert {l: a["status"] for l, a in ra.items()} == {l: a["status"] for l, a in la.items()}
    assert {l: a["key"] for l, a in ra.items()} == {l: a["key"] for l, a in la.items()}
    assert {l: a["outputs"] for l, a in ra.items()} == {l: a["outputs"] for l, a in la.items()}
    assert _summary(remote) == _summary(local)
    assert outputs(remote_ws) == outputs(local_ws) and outputs(local_ws)
    assert all(a["executor"] == "cpu1" for a in ra.values()), ra
    assert all(a["executor"].startswith("local:") for a in la.values())
    assert [(t["label"], t["outcome"], t["status"]) for t in remote["tests"]] == \
           [(t["label"], t["outcome"], t["status"]) for t in local["tests"]]
    assert (remote_ws / "ciopt-out/testlogs/b/t_sh/test.log").read_text() == "sh-ok\n"

    again = run_json(remote_ws, tmp_path / "s-remote", "test", "//a/...", "//b/...", "--remote", pool.address)
    assert {a["status"] for a in again["actions"]} == {"cached_local"}
    assert again["summary"]["executed"] == 0

    # Another client with an empty store: the scheduler answers from its ActionCache.
    other = run_json(fresh_ws, tmp_path / "s-fresh", "test", "//a/...", "//b/...", "--remote", pool.address)
    assert {a["status"] for a in other["actions"]} == {"cached_remote"}, other["actions"]
    assert other["summary"]["cached_remote"] == len(other["actions"])
    assert all(t["cached"] and t["outcome"] == "passed" for t in other["tests"])
    assert outputs(fresh_ws) == outputs(local_ws)
    assert (fresh_ws / "ciopt-out/testlogs/b/t_sh/test.log").read_text() == "sh-ok\n"


def test_failures_and_escaping_outputs_are_reported_as_locally(pool: Pool, tmp_path: Path) -> None:
    local_ws, remote_ws = tmp_path / "local", tmp_path / "remote"
    for ws in (local_ws, remote_ws):
        write_files(ws, SAME)
    local = run_json(local_ws, tmp_path / "s-local", "build", "//bad/...", "-k", expect=1)
    remote = run_json(remote_ws, tmp_path / "s-remote", "build", "//bad/...", "-k", "--remote", pool.address,
                      expect=1)
    la, ra = by_label(local), by_label(remote)
    for label in ("//bad:escape", "//bad:fails"):
        assert ra[label]["status"] == la[label]["status"] == "failed"
        assert ra[label]["message"] == la[label]["message"], (ra[label], la[label])
    assert "symlink escaping the exec root" in ra["//bad:escape"]["message"]
    assert "broken" in (remote_ws / "ciopt-out/logs/bad/fails.log").read_text()
    t_local = run_json(local_ws, tmp_path / "s-local", "test", "//bad:t_fail", expect=1)
    t_remote = run_json(remote_ws, tmp_path / "s-remote", "test", "//bad:t_fail", "--remote", pool.address, expect=1)
    assert t_remote["tests"][0]["outcome"] == t_local["tests"][0]["outcome"] == "failed"
    assert by_label(t_remote)["//bad:t_fail"]["message"] == "exit code 4"
    assert "failing-test-output" in t_remote["_stderr"]


# -- an unreachable scheduler ------------------------------------------------------------------------

def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_scheduler_falls_back_to_local_with_a_warning(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_files(ws, SAME)
    doc = run_json(ws, tmp_path / "store", "build", "//a:upper", "--remote", _dead_address())
    assert "ciopt: warning: no answer from the scheduler" in doc["_stderr"]
    assert "building locally" in doc["_stderr"]
    assert by_label(doc)["//a:upper"]["executor"].startswith("local:")
    assert (ws / "ciopt-out/a/upper.txt").read_text() == "HELLO\n"


def test_unreachable_scheduler_without_fallback_is_a_one_line_error(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_files(ws, {**SAME, "config/ci-optimization.yaml": REMOTE_CONFIG + "  fallback_to_local: false\n"})
    proc = ciopt(ws, tmp_path / "store", "build", "//a:upper", "--remote", _dead_address())
    assert proc.returncode == 2, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("ciopt: error:")]
    assert len(errors) == 1 and "fallback_to_local is off" in errors[0], proc.stderr
    assert not (ws / "ciopt-out/a/upper.txt").exists()


def test_remote_execution_from_config(pool: Pool, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    config = f"enabled: true\nremote_execution:\n  enabled: true\n  scheduler: {pool.address}\n"
    write_files(ws, {**SAME, "config/ci-optimization.yaml": config})
    doc = run_json(ws, tmp_path / "store", "build", "//a:upper")
    assert by_label(doc)["//a:upper"]["executor"] == "cpu1"
    again = run_json(ws, tmp_path / "store", "build", "//a:upper", "--remote", pool.address)
    assert by_label(again)["//a:upper"]["status"] == "cached_local"
    # The emergency bypass turns remote execution off along with the cache.
    proc = ciopt(ws, tmp_path / "store2", "build", "//a:upper", "-o", "json", env={"CIOPT_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["actions"][0]["executor"].startswith("local:")


@pytest.mark.parametrize("args, message", [
    (["scheduler"], "--bind ADDR is required"),
    (["scheduler", "--bind", "localhost:5555"], "expected tcp://HOST:PORT"),
    (["scheduler", "--bind", "tcp://127.0.0.1:*", "--curve-secret", "x.key_secret"], "go together"),
    (["scheduler", "--bind", "tcp://127.0.0.1:*", "--heartbeat", "5", "--heartbeat-timeout", "2"],
     "must be greater than --heartbeat"),
    (["executor"], "--scheduler ADDR is required"),
    (["executor", "--scheduler", "tcp://127.0.0.1:1", "--curve-secret", "nope.key_secret", "--server-key", "s.key"],
     "not a readable CurveZMQ certificate"),
    (["scheduler", "status"], "--scheduler ADDR is required"),
    (["scheduler", "status", "--scheduler", "tcp://127.0.0.1:1", "--timeout", "0.5"], "no answer from the scheduler"),
])
def test_daemon_usage_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = ciopt(tmp_path, tmp_path / "store", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("ciopt: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_executors_offer_their_pythons_and_a_missing_version_fails_clearly(pool: Pool, tmp_path: Path) -> None:
    """Executors advertise `python=X.Y` for each interpreter they have; a py_test needs the
    project's version (or the one its target asks for), and no executor having it is a clear error."""
    ws = tmp_path / "ws"
    write_files(ws, {
        "config/ci-optimization.yaml": REMOTE_CONFIG,
        "p/BUILD": """\
            py_test(name = "test_here", srcs = ["test_here.py"])
            py_test(name = "test_future", srcs = ["test_future.py"], requires = {"python": "3.99"})
        """,
        "p/test_here.py": "import sys\n\ndef test_version():\n    assert sys.version_info[:2] == (3, 11) or True\n",
        "p/test_future.py": "def test_never():\n    pass\n",
    })
    status = subprocess.run([sys.executable, "-m", "ciopt", "scheduler", "status", "--scheduler", pool.address,
                             "-o", "json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    minor = "%d.%d" % sys.version_info[:2]
    assert f"python={minor}" in status.stdout
    doc = run_json(ws, tmp_path / "store", "test", "//p:test_here", "--remote", pool.address)
    assert by_label(doc)["//p:test_here"]["status"] == "executed"
    assert by_label(doc)["//p:test_here"]["executor"] in ("cpu1", "cpu2", "gpu1")
    doc = run_json(ws, tmp_path / "store", "test", "//p:test_future", "--remote", pool.address, expect=1)
    message = by_label(doc)["//p:test_future"]["message"]
    assert "python=3.99" in message and f"python={minor}" in message, message
