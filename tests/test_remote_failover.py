"""Failures of the pool during a build: an executor SIGKILLed mid-action, the scheduler restarted
mid-build, an executor drained with SIGTERM. Real processes on 127.0.0.1; no timing asserts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buildws import write_files
from remote_pool import REMOTE_CONFIG, Pool, wait_for

pytestmark = pytest.mark.timeout(240)




def start_build(ws: Path, store: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("CIOPT_CONFIG", "CIOPT_DISABLE")}
    env["CIOPT_CACHE_DIR"] = str(store)
    # SIGINT back to its default, as buildws.spawn_ciopt does: under a suite run as a background job
    # it is inherited ignored, and the Ctrl-C test below would wait out the whole action.
    return subprocess.Popen([sys.executable, "-m", "ciopt", "build", *args, "-o", "json"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(build: subprocess.Popen, pool: Pool) -> dict:
    try:
        out, err = build.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(build.pid, signal.SIGKILL)
        out, err = build.communicate()
        raise AssertionError(f"build hung:\n{err}\n{pool.logs()}") from None
    assert build.returncode == 0, (build.returncode, out, err, pool.logs())
    doc = json.loads(out)
    doc["_stderr"] = err
    return doc


def busy(pool: Pool, eid: str) -> bool:
    return any(e["id"] == eid and e["busy"] > 0 for e in pool.status()["executors"])


def test_executor_killed_mid_action_reruns_it_elsewhere(pool: Pool, tmp_path: Path) -> None:
    pool.start_scheduler()
    cheap = pool.start_executor("cpu1", cost=1, slots=1)
    pool.start_executor("cpu2", cost=2, slots=1)
    ws = tmp_path / "ws"
    write_files(ws, {
        "config/ci-optimization.yaml": REMOTE_CONFIG,
        "BUILD": 'genrule(name = "slow", outs = ["slow.txt"], cmd = "sleep 2; echo finished > $@")\n',
    })
    build = start_build(ws, tmp_path / "store", "//:slow", "--remote", pool.address)
    try:
        assert wait_for(lambda: busy(pool, "cpu1"), 60), pool.logs()
        pool.orphans += cheap.sigkill()  # mid-action, no goodbye
    finally:
        doc = finish(build, pool)
    (a,) = doc["actions"]
    assert a["status"] == "executed" and a["executor"] == "cpu2", a
    assert (ws / "ciopt-out/slow.txt").read_text() == "finished\n"
    status = pool.status()
    assert [e["id"] for e in status["executors"]] == ["cpu2"]
    assert status["totals"]["executors_died"] == 1 and status["totals"]["requeued"] >= 1
    assert "executor cpu1 silent" in pool.scheduler.log()


def test_scheduler_restart_mid_build_executors_reconnect(pool: Pool, tmp_path: Path) -> None:
    first = pool.start_scheduler()
    port = pool.address.rsplit(":", 1)[1]
    pool.start_executor("cpu1", cost=1, slots=2)
    ws = tmp_path / "ws"
    chain = ['genrule(name = "s0", srcs = ["in.txt"], outs = ["s0.txt"], cmd = "sleep 0.3; cat $< > $@")']
    chain += [f'genrule(name = "s{i}", srcs = [":s{i - 1}"], outs = ["s{i}.txt"], '
              f'cmd = "sleep 0.3; cat $< > $@; echo {i} >> $@")' for i in range(1, 8)]
    write_files(ws, {"config/ci-optimization.yaml": REMOTE_CONFIG, "in.txt": "start\n", "BUILD": "\n".join(chain)})
    build = start_build(ws, tmp_path / "store", "//:s7", "--remote", pool.address)
    try:
        assert wait_for(lambda: pool.status()["totals"]["completed"] >= 2, 60), pool.logs()
        pool.orphans += first.sigkill()
        first.stop()
        pool.start_scheduler(port=port)  # same port, same state directory
    finally:
        doc = finish(build, pool)
    statuses = {a["label"]: a["status"] for a in doc["actions"]}
    assert len(statuses) == 8 and set(statuses.values()) <= {"executed", "cached_remote"}, statuses
    assert (ws / "ciopt-out/s7.txt").read_text() == "start\n" + "".join(f"{i}\n" for i in range(1, 8))
    # The executor found the new scheduler by itself.
    assert wait_for(lambda: "cpu1" in pool.executor_ids(), 30), pool.logs()
    log = pool.executors["cpu1"].log()
    assert "registering again" in log or "reconnecting" in log, log


def test_sigterm_drains_the_executor(pool: Pool, tmp_path: Path) -> None:
    pool.start_scheduler()
    draining = pool.start_executor("cpu1", cost=1, slots=1)
    pool.start_executor("cpu2", cost=2, slots=1)
    ws = tmp_path / "ws"
    write_files(ws, {
        "config/ci-optimization.yaml": REMOTE_CONFIG,
        "BUILD": 'genrule(name = "slow", outs = ["slow.txt"], cmd = "sleep 2; echo slow > $@")\n'
                 'genrule(name = "after", srcs = [":slow"], outs = ["after.txt"], cmd = "cat $< $< > $@")\n',
    })
    build = start_build(ws, tmp_path / "store", "//:after", "--remote", pool.address)
    try:
        assert wait_for(lambda: busy(pool, "cpu1"), 60), pool.logs()
        draining.proc.send_signal(signal.SIGTERM)
        assert draining.proc.wait(60) == 0, draining.log()
    finally:
        doc = finish(build, pool)
    executors = {a["label"]: a["executor"] for a in doc["actions"]}
    # The running action finished on the draining executor; the next one could not go there.
    assert executors == {"//:slow": "cpu1", "//:after": "cpu2"}, (executors, pool.logs())
    assert (ws / "ciopt-out/after.txt").read_text() == "slow\nslow\n"
    log = draining.log()
    assert "draining" in log and "bye" in log
    assert pool.executor_ids() == {"cpu2"}


def test_interrupting_the_client_cancels_its_remote_action(pool: Pool, tmp_path: Path) -> None:
    pool.start_scheduler()
    runner = pool.start_executor("cpu1", cost=1, slots=1)
    ws = tmp_path / "ws"
    marker = tmp_path / "started"
    write_files(ws, {
        "config/ci-optimization.yaml": REMOTE_CONFIG,
        "BUILD": f'genrule(name = "long", outs = ["l.txt"], cmd = "echo $$$$ > {marker}; sleep 60; echo > $@")\n',
    })
    build = start_build(ws, tmp_path / "store", "//:long", "--remote", pool.address)
    try:
        assert wait_for(lambda: marker.exists() and marker.read_text().strip(), 60), pool.logs()
        action_pid = int(marker.read_text())
        os.killpg(build.pid, signal.SIGINT)  # Ctrl-C
        _, err = build.communicate(timeout=60)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
    assert build.returncode == 130, err
    # The scheduler told the executor, which killed the action's process group.
    assert wait_for(lambda: not os.path.exists(f"/proc/{action_pid}") or
                    open(f"/proc/{action_pid}/stat").read().rpartition(")")[2].split()[0] == "Z", 30), pool.logs()
    assert wait_for(lambda: pool.status()["executors"][0]["busy"] == 0, 30)
    assert runner.alive()
