"""The wire protocol and the scheduler's logic, in process: frames, validation, blob transfer, queue
order, failover bookkeeping and result routing. (The daemons as real processes: test_remote_*.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from ciopt import Store, hash_bytes
from ciopt.hardware import Capabilities, Gpu
from ciopt.remote import protocol as P
from ciopt.remote.scheduler import Scheduler, SchedulerOptions
from ciopt.remote.transport import Channel

ACTION = {"label": "//pkg:t", "mnemonic": "Genrule", "argv": ["/bin/sh", "-c", "true"], "env": [["A", "1"]],
          "inputs": [["pkg/in.txt", str(hash_bytes(b"in")), False]], "outputs": ["pkg/out.txt"],
          "timeout_s": None, "is_test": False, "flaky": False, "tags": []}


# -- frames -----------------------------------------------------------------------------------------

def test_every_message_type_round_trips() -> None:
    samples: dict[str, dict[str, Any]] = {
        "hello": {"role": "executor", "id": "e1", "caps": {}, "slots": 2, "cost": 1.5, "running": []},
        "heartbeat": {"id": "e1", "running": ["a"], "draining": False},
        "submit": {"id": "j1", "action": ACTION, "requires": {"gpu": 1}, "priority": 3, "key": "k", "cacheable": True},
        "assign": {"id": "j1", "action": ACTION, "key": None, "cacheable": False, "attempt": 2},
        "find_missing": {"req": 1, "digests": [str(hash_bytes(b"x"))]},
        "missing": {"req": 1, "digests": []},
        "upload": {"req": 1, "digest": str(hash_bytes(b"x")), "offset": 0, "data": b"x", "last": True},
        "download": {"req": 1, "digests": [str(hash_bytes(b"x"))]},
        "blob": {"req": 1, "digest": str(hash_bytes(b"x")), "offset": 0, "data": b"x", "last": True, "found": True},
        "result": {"id": "j1", "exit_code": 0, "executor": "e1", "outputs": [], "log": None, "error": None},
        "cancel": {"id": "j1"},
        "status": {"req": 4},
        "error": {"code": P.E_UNSATISFIABLE, "message": "no", "id": "j1"},
        "bye": {"id": "e1", "role": "executor"},
    }
    assert set(samples) == set(P.MESSAGES)
    for msg_type, fields in samples.items():
        msg = P.decode(P.encode(msg_type, **fields))
        assert msg == {**fields, "v": P.VERSION, "type": msg_type}


@pytest.mark.parametrize("frame, why", [
    (b"", "undecodable"),
    (b"\x93\x01\x02\x03", "not a map"),
    (msgpack.packb({"type": "status"}), "protocol version"),
    (msgpack.packb({"v": 99, "type": "status"}), "protocol version"),
    (msgpack.packb({"v": P.VERSION, "type": "teleport"}), "unknown message type"),
    (msgpack.packb({"v": P.VERSION, "type": "cancel"}), "missing field 'id'"),
    (msgpack.packb({"v": P.VERSION, "type": "cancel", "id": 5}), "field 'id' has type int"),
    (msgpack.packb({"v": P.VERSION, "type": "result", "id": "a", "exit_code": True}), "exit_code"),
    (msgpack.packb({"v": P.VERSION, "type": "missing", "req": 1, "digests": [1, 2]}), "list of at most"),
    (msgpack.packb({"v": P.VERSION, "type": "missing", "req": 1, "digests": ["d"] * (P.MAX_DIGESTS + 1)}),
     "list of at most"),
    (b"\x00" * (P.MAX_FRAME + 1), "exceeds MAX_FRAME"),
])
def test_malformed_frames_raise_protocol_error(frame: bytes, why: str) -> None:
    with pytest.raises(P.ProtocolError, match=why):
        P.decode(frame)


def test_frames_over_the_limit_are_not_encoded() -> None:
    with pytest.raises(P.ProtocolError, match="MAX_FRAME"):
        P.encode("blob", req=1, digest="d", offset=0, data=b"x" * P.MAX_FRAME, last=True, found=True)


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "", "a\\b",
                                  "a\0b"])
def test_actions_with_paths_escaping_the_exec_root_are_rejected(path: str) -> None:
    for field in ("inputs", "outputs"):
        bad = dict(ACTION)
        bad[field] = [[path, str(hash_bytes(b"in")), False]] if field == "inputs" else [path]
        with pytest.raises(P.ProtocolError):
            P.action_from_wire(bad)


def test_action_wire_form_round_trips() -> None:
    action, inputs = P.action_from_wire(ACTION, {"gpu": 1, "tags": ["cuda"]})
    assert str(action.label) == "//pkg:t" and action.outputs == ("pkg/out.txt",)
    assert action.requires == (("gpu", 1), ("tags", ("cuda",)))
    assert P.action_to_wire(action, inputs) == ACTION
    assert P.requires_to_wire(action) == {"gpu": 1, "tags": ["cuda"]}
    with pytest.raises(P.ProtocolError, match="digest"):
        P.action_from_wire({**ACTION, "inputs": [["a", "zz/1", False]]})
    with pytest.raises(P.ProtocolError, match="timeout"):
        P.action_from_wire({**ACTION, "timeout_s": float("nan")})


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_decoding_random_bytes_only_ever_raises_protocol_error(data: bytes) -> None:
    try:
        msg = P.decode(data)
    except P.ProtocolError:
        return
    assert isinstance(msg, dict) and msg["type"] in P.MESSAGES


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["submit", "result", "upload", "hello"]), st.data())
def test_decoding_truncated_frames_only_ever_raises_protocol_error(msg_type: str, data: st.DataObject) -> None:
    fields = {"submit": {"id": "j", "action": ACTION}, "result": {"id": "j", "exit_code": 0},
              "upload": {"req": 1, "digest": "d", "offset": 0, "data": b"abc" * 40, "last": True},
              "hello": {"role": "executor", "id": "e", "caps": {"cpus": 2}}}[msg_type]
    frame = P.encode(msg_type, **fields)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    with pytest.raises(P.ProtocolError):
        P.decode(frame[:cut])


# -- the scheduler, stepped by hand -----------------------------------------------------------------

def caps(cost: float, gpus: int = 0) -> dict[str, Any]:
    return Capabilities(cpus=4, cpu_model="test", memory_gb=16.0, os="linux", arch="x86_64",
                        gpus=tuple(Gpu(i, "NVIDIA A100-SXM4-80GB", 80.0, "550", "12.4", None) for i in range(gpus)),
                        tags=(), cost=cost, cost_class="gpu" if gpus else "cpu", hostname="h").to_dict()


class Peer:
    """A DEALER that speaks the protocol to the scheduler under test."""

    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(address)
        self.inbox: list[dict[str, Any]] = []

    def send(self, msg_type: str, **fields: Any) -> None:
        self.sock.send(P.encode(msg_type, **fields))

    def take(self, msg_type: str) -> list[dict[str, Any]]:
        while self.sock.poll(0):
            self.inbox.append(P.decode(self.sock.recv()))
        got = [m for m in self.inbox if m["type"] == msg_type]
        self.inbox = [m for m in self.inbox if m["type"] != msg_type]
        return got

    def ids(self, msg_type: str, n: int, limit_s: float = 5.0) -> list[str]:
        """The ids of the next n messages of this type (waiting for them to arrive)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + limit_s
        while len(got) < n and time.monotonic() < deadline:
            self.sock.poll(20)
            got += self.take(msg_type)
        return [m["id"] for m in got]


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[tuple[Scheduler, zmq.Context]]:
    ctx = zmq.Context()
    s = Scheduler(SchedulerOptions(bind="tcp://127.0.0.1:*", state_dir=tmp_path / "state", heartbeat_s=0.1,
                                   heartbeat_timeout_s=1.0, retries=1, startup_grace_s=0.0, prefetch=0), ctx)
    try:
        yield s, ctx
    finally:
        s.close()
        ctx.destroy(linger=0)


def pump(s: Scheduler, until: Any = None, limit_s: float = 5.0) -> None:
    """Run the scheduler's loop body by hand until `until()` holds (or briefly)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if s.sock.poll(20):
            s._drain()
        s.dispatch()
        s.flush()
        if until is None or until():
            return
    raise AssertionError("scheduler did not get there")


def _submit(s: Scheduler, client: Peer, jid: str, priority: int = 0, requires: dict | None = None) -> None:
    s.store.put(b"in")
    client.send("submit", id=jid, action=ACTION, requires=requires or {}, priority=priority)


def test_queue_order_is_longest_chain_first_and_cost_decides_placement(sched: tuple[Scheduler, zmq.Context]) -> None:
    s, ctx = sched
    client = Peer(ctx, s.address)
    for jid, prio in (("low", 1), ("high", 9), ("mid", 5)):
        _submit(s, client, jid, prio)
    pump(s, lambda: s.queued == 3)
    cheap, dear = Peer(ctx, s.address), Peer(ctx, s.address)
    dear.send("hello", role="executor", id="dear", caps=caps(5), slots=1)
    # The dear box, alone in the pool, gets the highest-priority action.
    pump(s, lambda: "dear" in s.executors and s.executors["dear"].running == {"high"})
    cheap.send("hello", role="executor", id="cheap", caps=caps(1), slots=1)
    pump(s, lambda: "cheap" in s.executors and s.executors["cheap"].running == {"mid"})
    assert s.queued == 1
    # Both free up: the cheap one takes the last action although the dear one is free as well.
    # (Both results over one connection, so that they are read in one batch before dispatching.)
    cheap.send("result", id="mid", exit_code=0, executor="cheap")
    cheap.send("result", id="high", exit_code=0, executor="dear")
    time.sleep(0.2)
    pump(s, lambda: s.executors["cheap"].running == {"low"})
    assert not s.executors["dear"].running
    assert dear.ids("assign", 1) == ["high"]
    assert cheap.ids("assign", 2) == ["mid", "low"]
    done: list[dict] = []
    pump(s, lambda: bool(done.extend(client.take("result")) or len(done) == 2))
    assert {m["id"] for m in done} == {"mid", "high"}


def test_prefetch_queues_on_the_cheapest_only_when_every_slot_is_taken(
        sched: tuple[Scheduler, zmq.Context]) -> None:
    s, ctx = sched
    s.opts.prefetch = 1
    client, cheap, dear = Peer(ctx, s.address), Peer(ctx, s.address), Peer(ctx, s.address)
    cheap.send("hello", role="executor", id="cheap", caps=caps(1), slots=1)
    dear.send("hello", role="executor", id="dear", caps=caps(5), slots=1)
    pump(s, lambda: {"cheap", "dear"} <= set(s.executors))
    for jid, prio in (("a", 5), ("b", 4), ("c", 3), ("d", 2), ("e", 1)):
        _submit(s, client, jid, prio)
    pump(s, lambda: s.queued == 1)
    # a: the cheap box; b: the dear one (it is free, so nothing waits on the busy cheap one);
    # c: both full, so it waits on the cheaper; d: on the dear one; e: no place left anywhere.
    assert s.executors["cheap"].running == {"a", "c"} and s.executors["dear"].running == {"b", "d"}
    status = {e["id"]: e for e in s.status()["executors"]}
    assert (status["cheap"]["busy"], status["cheap"]["waiting"]) == (1, 1)


def test_results_go_to_the_client_that_submitted(sched: tuple[Scheduler, zmq.Context]) -> None:
    s, ctx = sched
    a, b, e = Peer(ctx, s.address), Peer(ctx, s.address), Peer(ctx, s.address)
    e.send("hello", role="executor", id="e", caps=caps(1), slots=2)
    _submit(s, a, "from-a")
    _submit(s, b, "from-b")
    pump(s, lambda: len(s.executors.get("e").running if "e" in s.executors else ()) == 2)
    e.send("result", id="from-b", exit_code=0, executor="e")
    e.send("result", id="from-a", exit_code=3, executor="e")
    results: dict[str, list] = {"a": [], "b": []}

    def arrived() -> bool:
        results["a"] += a.take("result")
        results["b"] += b.take("result")
        return bool(results["a"] and results["b"])

    pump(s, arrived)
    assert [(m["id"], m["exit_code"]) for m in results["a"]] == [("from-a", 3)]
    assert [(m["id"], m["exit_code"]) for m in results["b"]] == [("from-b", 0)]


def test_a_dead_executors_action_goes_elsewhere_then_gives_up(sched: tuple[Scheduler, zmq.Context]) -> None:
    s, ctx = sched
    client, e1, e2 = Peer(ctx, s.address), Peer(ctx, s.address), Peer(ctx, s.address)
    e1.send("hello", role="executor", id="e1", caps=caps(1), slots=1)
    pump(s, lambda: "e1" in s.executors)
    _submit(s, client, "j")
    pump(s, lambda: s.executors["e1"].running == {"j"})
    e2.send("hello", role="executor", id="e2", caps=caps(2), slots=1)
    pump(s, lambda: "e2" in s.executors)
    s.executors["e1"].last_seen -= 10  # silent past the timeout
    s.tick()
    pump(s, lambda: "e2" in s.executors and s.executors["e2"].running == {"j"})
    assert "e1" not in s.executors and s.jobs["j"].excluded == {"e1"}
    # e1 comes back; e2 dies too: retries (1) are used up, and e1 is never tried again for it.
    e1.send("hello", role="executor", id="e1", caps=caps(1), slots=1)
    pump(s, lambda: "e1" in s.executors)
    s.executors["e2"].last_seen -= 10
    s.tick()
    errors: list[dict] = []
    pump(s, lambda: bool(errors.extend(client.take("error")) or errors))
    assert errors[0]["code"] == P.E_RETRIES and errors[0]["id"] == "j"
    assert "e2 died" in errors[0]["message"] and not s.executors["e1"].running


def test_unsatisfiable_actions_fail_with_the_pool_explained(sched: tuple[Scheduler, zmq.Context]) -> None:
    s, ctx = sched
    client, e = Peer(ctx, s.address), Peer(ctx, s.address)
    e.send("hello", role="executor", id="cpu", caps=caps(1), slots=1)
    pump(s, lambda: "cpu" in s.executors)
    s.tick()
    _submit(s, client, "g", requires={"gpu": 1})
    errors: list[dict] = []
    pump(s, lambda: bool(errors.extend(client.take("error")) or errors))
    assert errors[0]["code"] == P.E_UNSATISFIABLE and "needs 1 GPU, has none" in errors[0]["message"]
    assert not s.jobs


def test_a_submit_before_its_inputs_is_refused_and_a_cached_result_is_served(
        sched: tuple[Scheduler, zmq.Context]) -> None:
    s, ctx = sched
    client, e = Peer(ctx, s.address), Peer(ctx, s.address)
    client.send("submit", id="early", action=ACTION, requires={})  # its input was never uploaded
    errors: list[dict] = []
    pump(s, lambda: bool(errors.extend(client.take("error")) or errors))
    assert errors[0]["code"] == P.E_MISSING_INPUTS and errors[0]["id"] == "early"
    # Run it once (cacheable), then a second submission with the same key comes from the ActionCache.
    e.send("hello", role="executor", id="e", caps=caps(1), slots=1)
    out = s.cas.put(b"out")
    s.store.put(b"in")
    client.send("submit", id="first", action=ACTION, requires={}, key="ab" * 32, cacheable=True)
    pump(s, lambda: "e" in s.executors and s.executors["e"].running == {"first"})
    e.send("result", id="first", exit_code=0, executor="e", outputs=[["pkg/out.txt", str(out), False]])
    results: list[dict] = []
    pump(s, lambda: bool(results.extend(client.take("result")) or results))
    client.send("submit", id="second", action=ACTION, requires={}, key="ab" * 32, cacheable=True)
    pump(s, lambda: bool(results.extend(client.take("result")) or len(results) == 2))
    assert results[1]["id"] == "second" and results[1]["cached"] is True and results[1]["executor"] == "e"
    assert results[1]["outputs"] == [["pkg/out.txt", str(out), False]]


# -- blobs through a running scheduler ---------------------------------------------------------------

@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Scheduler, zmq.Context]]:
    ctx = zmq.Context()
    s = Scheduler(SchedulerOptions(bind="tcp://127.0.0.1:*", state_dir=tmp_path / "state"), ctx)
    t = threading.Thread(target=s.serve, daemon=True)
    t.start()
    try:
        yield s, ctx
    finally:
        s.stop()
        t.join(10)
        ctx.destroy(linger=0)


def test_blobs_are_sent_once_and_verified(served: tuple[Scheduler, zmq.Context], tmp_path: Path) -> None:
    s, ctx = served
    local = Store(tmp_path / "local")
    small = local.put(b"small blob")
    big = local.put(bytes(range(256)) * (P.CHUNK // 256 * 2 + 17))  # three chunks
    chan = Channel(ctx, s.address, idle_timeout_s=10)
    try:
        assert set(chan.find_missing([small, big])) == {small, big}
        assert chan.upload(local.get, [small, big]) == []
        assert chan.find_missing([small, big]) == []
        # A sender whose bytes do not match the digest is refused.
        liar = hash_bytes(b"the truth")
        assert chan.upload(lambda d: b"a lie....", [liar]) == [liar]
        assert chan.find_missing([liar]) == [liar]
        absent = hash_bytes(b"never uploaded")
        got, failed = chan.download([small, big, absent], tmp_path, "blake3")
        assert failed == [absent]
        assert got[small] == b"small blob"
        assert isinstance(got[big], Path) and got[big].read_bytes() == local.get(big)  # chunked: a file
    finally:
        chan.close()
