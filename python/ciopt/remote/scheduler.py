"""The scheduler: a ZeroMQ ROUTER that queues actions and assigns them to executors.

One thread owns the socket and all state (no locks): it reads every frame that is waiting,
handles each, then dispatches. Dispatching takes queued actions in critical-path order (the
client sends the length of the longest chain an action heads as `priority`) and places each on
matching.choose's pick: the cheapest capable executor with a free slot, ties to the least loaded,
GPU boxes kept for GPU work when hardware.keep_gpu_for_gpu_work says so. Queued actions are
grouped by (requirements, excluded executors) so one placement looks at a handful of queue heads,
never at every queued action: dispatch stays cheap with thousands queued.

Failure handling:
  * an action no registered executor can ever run fails at once with matching.explain_pool's
    text (after a short grace period when the scheduler has just started, so that executors
    reconnecting after a restart are counted);
  * an executor silent for heartbeat_timeout_s is dead: its actions go back to the queue with it
    excluded, up to `retries` times, after which the client gets `retries_exhausted`;
  * the first result for an action wins; a second copy still running elsewhere is cancelled.

Blobs in transit live in a ciopt Store under the state directory (CAS and ActionCache), so a
blob is uploaded once however many executors need it, and a restarted scheduler still has them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from ciopt import Digest, Store
from ciopt.exec.action_result import ActionResult
from ciopt.hardware import Capabilities
from ciopt.remote import matching
from ciopt.remote import protocol as P
from ciopt.remote.auth import KeyPair, apply_server, start_authenticator
from ciopt.remote.cas import WriteBehindCAS

log = logging.getLogger("ciopt.remote.scheduler")

RECENT_RESULTS = 20_000  # results kept to answer a client that resubmits after missing one
PARTIAL_UPLOAD_TTL_S = 600.0
BATCH = 2000  # frames handled before dispatching, so a flood of submissions is placed in bulk


@dataclass
class SchedulerOptions:
    bind: str
    state_dir: Path
    heartbeat_s: float = 5.0
    heartbeat_timeout_s: float = 30.0
    retries: int = 3
    keep_gpu_for_gpu_work: bool = False
    curve_secret: KeyPair | None = None
    allow_dir: Path | None = None
    # How long after start the pool is not judged complete (executors reconnecting after a restart).
    startup_grace_s: float | None = None
    # A client not heard from for this long has gone; its queued actions are dropped.
    client_timeout_s: float | None = None
    # "cost" (matching.choose) or "round_robin" (matching.RoundRobin: the naive policy the cost
    # benchmark compares against; ignores cost and GPU keeping).
    policy: str = "cost"
    # Actions an executor may hold beyond its slots when every capable executor is full: their
    # inputs are fetched while its slots are busy, and they start without a round trip.
    prefetch: int = 1

    @property
    def grace_s(self) -> float:
        return self.startup_grace_s if self.startup_grace_s is not None else 2 * self.heartbeat_s + 1.0


@dataclass(eq=False)
class Job:
    id: str
    client: bytes
    action: dict[str, Any]
    requires: dict[str, Any]
    priority: int
    key: str | None
    cacheable: bool
    seq: int
    submitted_at: float
    attempt: int = 1
    excluded: frozenset[str] = frozenset()
    executor: str | None = None  # where it runs now; None while queued
    assigned_at: float = 0.0


@dataclass(eq=False)
class ExecutorState:
    id: str
    identity: bytes
    caps: Capabilities
    slots: int
    cand: matching.Candidate
    last_seen: float  # monotonic
    last_heartbeat: float  # wall clock, for status
    registered_at: float
    running: set[str] = field(default_factory=set)  # job ids we assigned to it
    foreign: set[str] = field(default_factory=set)  # ids it runs that we never assigned (after our restart)
    draining: bool = False
    completed: int = 0
    busy_s: float = 0.0

    def refresh_busy(self) -> None:
        self.cand.busy = len(self.running) + len(self.foreign)


class _BadFrameLog:
    """Logs bad frames without letting a flood of them flood the log."""

    def __init__(self, per_minute: int = 20) -> None:
        self.per_minute = per_minute
        self.window = 0.0
        self.count = 0
        self.suppressed = 0
        self.total = 0

    def __call__(self, peer: bytes, why: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self.window > 60:
            if self.suppressed:
                log.warning("dropped %d more bad frames in the last minute", self.suppressed)
            self.window, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count <= self.per_minute:
            log.warning("dropped a bad frame from peer %s: %s", peer.hex() or "?", why)
        else:
            self.suppressed += 1


class Scheduler:
    def __init__(self, options: SchedulerOptions, ctx: zmq.Context | None = None) -> None:
        self.opts = options
        self.ctx = ctx or zmq.Context.instance()
        options.state_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = options.state_dir / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        for stale in self.tmp_dir.iterdir():
            stale.unlink(missing_ok=True)
        self.store = Store(options.state_dir / "cas")
        self.cas = WriteBehindCAS(self.store)  # the loop never waits on an fsync
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.auth = None
        self.allowlist = None
        if options.curve_secret is not None:
            if options.allow_dir is None:
                raise ValueError("a CURVE secret needs an allowlist directory")
            self.auth, self.allowlist = start_authenticator(self.ctx, options.allow_dir)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_FRAME)
        self.sock.sndhwm = self.sock.rcvhwm = 200_000
        if options.curve_secret is not None:
            apply_server(self.sock, options.curve_secret)
        self.sock.bind(options.bind)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        # With CURVE on, failed handshakes are logged with the peer's address: ZeroMQ itself drops
        # them silently, and a peer without keys never reaches the allowlist callback.
        self.monitor = (self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
                        if options.curve_secret is not None else None)

        self.executors: dict[str, ExecutorState] = {}
        self.jobs: dict[str, Job] = {}
        self.queues: dict[tuple[bytes, frozenset[str]], list[tuple[int, int, str]]] = {}
        self.sig_requires: dict[tuple[bytes, frozenset[str]], dict[str, Any]] = {}
        self.queued = 0
        self.seq = itertools.count()
        self.recent: OrderedDict[str, bytes] = OrderedDict()  # job id -> result frame
        self.clients: dict[bytes, float] = {}  # identity -> last heard (monotonic)
        self.partial: dict[tuple[bytes, str], tuple[Path, Any, float]] = {}
        self.outbox: dict[bytes, list[Any]] = {}  # peer -> [bytes queued, frame, frame, ...]
        self.bad_frame = _BadFrameLog()
        self.pool_changed = True
        self.grace_over = False
        self.stats = {"submitted": 0, "completed": 0, "failed": 0, "cached": 0, "requeued": 0,
                      "bad_frames": 0, "executors_died": 0, "refused_handshakes": 0}
        self._stop = threading.Event()
        self._choose = matching.RoundRobin().choose if options.policy == "round_robin" else matching.choose
        self._welcome = P.encode("hello", role="scheduler", scheduler=self.name, heartbeat_s=options.heartbeat_s,
                                 heartbeat_timeout_s=options.heartbeat_timeout_s,
                                 digest=self.store.digest_function)

    # -- the loop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        log.info("scheduler %s listening on %s (heartbeat %gs, dead after %gs, retries %d, CURVE %s)",
                 self.name, self.address, self.opts.heartbeat_s, self.opts.heartbeat_timeout_s,
                 self.opts.retries, "on" if self.auth else "off")
        tick_every = max(0.05, min(self.opts.heartbeat_s / 2, 0.5))
        next_tick = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
                ready = dict(poller.poll(min(wait_ms, 200)))
                if self.monitor is not None and self.monitor in ready:
                    self._handshake_events()
                if self.sock in ready:
                    self._drain()
                    self.dispatch()
                if time.monotonic() >= next_tick:
                    self.tick()
                    self.dispatch()
                    next_tick = time.monotonic() + tick_every
                self.flush()
        finally:
            self.close()

    def _handshake_events(self) -> None:
        assert self.monitor is not None
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            peer = event.get("endpoint", b"")
            peer = peer.decode(errors="replace") if isinstance(peer, bytes) else str(peer)
            self.stats["refused_handshakes"] += 1
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                log.warning("refused a connection on %s: its CurveZMQ key is not in the allowlist", peer)
            else:
                log.warning("refused a connection on %s: failed CurveZMQ handshake (no keys, or a wrong "
                            "server key; code %s)", peer, event.get("value"))

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        for path, f, _ in self.partial.values():
            f.close()
            path.unlink(missing_ok=True)
        self.partial.clear()
        self.cas.close()
        log.info("scheduler stopped")

    def _drain(self) -> None:
        """Handle what is waiting. A ZeroMQ message may carry several frames: each is one protocol
        message, handled in order (peers batch an upload with the submit or result it precedes)."""
        for _ in range(BATCH):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            identity = parts[0]
            if len(parts) < 2:
                self.stats["bad_frames"] += 1
                self.bad_frame(identity, "a message with no frame")
                continue
            for frame in parts[1:]:
                try:
                    msg = P.decode(frame)
                    self.handle(identity, msg, frame)
                except P.ProtocolError as e:
                    self.stats["bad_frames"] += 1
                    self.bad_frame(identity, str(e))
                except Exception:  # noqa: BLE001 - a bug in one handler must not stop the pool
                    log.exception("internal error handling a frame from peer %s; dropped", identity.hex())

    def send(self, identity: bytes, frame: bytes) -> None:
        """Queued per peer and sent by flush() after the batch in hand is handled: one ZeroMQ
        message (several frames) per peer per batch instead of one per reply."""
        out = self.outbox.get(identity)
        if out is None:
            out = self.outbox[identity] = [0]
        out.append(frame)
        out[0] += len(frame)
        if out[0] >= P.CHUNK:
            # A ZeroMQ message is delivered whole: blob chunks go out as they are made.
            self._send_now(identity, self.outbox.pop(identity))

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, {}
        for identity, out in outbox.items():
            self._send_now(identity, out)

    def _send_now(self, identity: bytes, out: list[Any]) -> None:
        frames = out[1:]
        try:
            self.sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("send queue to peer %s is full; dropped %d frame(s)", identity.hex(), len(frames))
        except zmq.ZMQError as e:
            log.debug("send to peer %s failed: %s", identity.hex(), e)

    def reply(self, identity: bytes, msg_type: str, **fields: Any) -> None:
        self.send(identity, P.encode(msg_type, **fields))

    def error(self, identity: bytes, code: str, message: str, **fields: Any) -> None:
        self.reply(identity, "error", code=code, message=message, **fields)

    # -- messages ---------------------------------------------------------------------------------

    def handle(self, identity: bytes, msg: dict[str, Any], frame: bytes) -> None:
        t = msg["type"]
        if t == "submit":
            self.on_submit(identity, msg)
        elif t == "result":
            self.on_result(identity, msg, frame)
        elif t == "heartbeat":
            self.on_heartbeat(identity, msg)
        elif t == "find_missing":
            digests = [P.parse_digest(d) for d in msg["digests"]]
            self.reply(identity, "missing", req=msg["req"], digests=[str(d) for d in self.cas.find_missing(digests)])
        elif t == "upload":
            self.on_upload(identity, msg)
        elif t == "download":
            self.on_download(identity, msg)
        elif t == "hello":
            self.on_hello(identity, msg)
        elif t == "cancel":
            self.on_cancel(identity, msg)
        elif t == "status":
            self.reply(identity, "status", req=msg.get("req", 0), status=self.status())
        elif t == "bye":
            self.on_bye(identity, msg)
        else:  # assign, missing, blob, error: only the scheduler sends those
            raise P.ProtocolError(f"{t} is not a message a scheduler accepts")

    def on_hello(self, identity: bytes, msg: dict[str, Any]) -> None:
        role = msg["role"]
        if role == "client":
            self.clients[identity] = time.monotonic()
            self.send(identity, self._welcome)
            return
        if role != "executor":
            raise P.ProtocolError(f"hello from unknown role {role!r}")
        eid, slots = msg.get("id"), msg.get("slots", 1)
        if not eid or not isinstance(slots, int) or slots < 1 or slots > 10_000:
            raise P.ProtocolError("executor hello needs an id and 1..10000 slots")
        try:
            caps = Capabilities.from_dict(msg.get("caps") or {})
        except (ValueError, TypeError) as e:
            raise P.ProtocolError(f"executor {eid}: bad capabilities: {e}") from None
        reported = set(msg.get("running") or [])
        now = time.monotonic()
        e = self.executors.get(eid)
        if e is not None:
            # The same executor on a new connection (its reconnect, or our socket's): keep its jobs,
            # requeue the ones it no longer knows about.
            lost = e.running - reported
            for jid in lost:
                e.running.discard(jid)
                self._requeue(jid, penalize=False, why=f"executor {eid} reconnected without it")
            e.identity, e.caps, e.slots = identity, caps, slots
            e.cand = matching.Candidate(eid, caps, slots, 0)
            e.foreign = reported - e.running
            e.last_seen, e.last_heartbeat = now, time.time()
            e.draining = bool(msg.get("draining", False))
            log.info("executor %s reconnected (%s)", eid, caps.summary())
        else:
            e = ExecutorState(eid, identity, caps, slots, matching.Candidate(eid, caps, slots, 0), now, time.time(),
                              time.time(), foreign=reported, draining=bool(msg.get("draining", False)))
            self.executors[eid] = e
            log.info("executor %s registered: %d slots, %s", eid, slots, caps.summary())
        e.refresh_busy()
        self.pool_changed = True
        self.send(identity, self._welcome)

    def on_heartbeat(self, identity: bytes, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        if msg.get("role") == "client" or "pending" in msg:
            self.clients[identity] = now
            unknown = []
            for jid in msg.get("pending") or []:
                if jid in self.jobs:
                    continue
                frame = self.recent.get(jid)
                if frame is not None:
                    self.send(identity, frame)  # the client missed this result
                else:
                    unknown.append(jid)
            self.reply(identity, "heartbeat", role="scheduler", unknown=unknown)
            return
        eid = msg.get("id")
        e = self.executors.get(eid) if eid else None
        if e is None:
            self.error(identity, P.E_UNKNOWN_EXECUTOR, f"executor {eid!r} is not registered here; say hello")
            return
        e.identity = identity
        e.last_seen, e.last_heartbeat = now, time.time()
        draining = bool(msg.get("draining", False))
        if draining and not e.draining:
            log.info("executor %s is draining: no new actions for it", e.id)
            self.pool_changed = True
        e.draining = draining
        if e.foreign:
            e.foreign &= set(msg.get("running") or [])
            e.refresh_busy()
        self.reply(identity, "heartbeat", role="scheduler")

    def on_submit(self, identity: bytes, msg: dict[str, Any]) -> None:
        jid = msg["id"]
        self.clients[identity] = time.monotonic()
        known = self.jobs.get(jid)
        if known is not None:
            if known.client != identity:
                # The same client on a new connection (its socket was rebuilt): results go there now.
                known.client = identity
            return
        frame = self.recent.get(jid)
        if frame is not None:
            self.send(identity, frame)
            return
        requires = msg.get("requires") or {}
        try:
            _, inputs = P.action_from_wire(msg["action"], requires)
            key = P.check_key(msg.get("key"))
        except P.ProtocolError as e:
            self.error(identity, P.E_BAD_REQUEST, f"bad action: {e}", id=jid)
            return
        self.stats["submitted"] += 1
        if inputs:
            missing = self.cas.find_missing([d for _, d, _ in inputs])
            if missing:
                self.error(identity, P.E_MISSING_INPUTS,
                           f"{len(missing)} input blob(s) not uploaded, e.g. {missing[0]}", id=jid)
                return
        if key and self._answer_from_cache(identity, jid, key):
            return
        job = Job(jid, identity, msg["action"], requires, int(msg.get("priority", 0)), key,
                  bool(msg.get("cacheable", True)), next(self.seq), time.time())
        if self.grace_over:
            pool = self._pool()
            if not matching.can_ever_run(requires, pool):
                self.stats["failed"] += 1
                self.error(identity, P.E_UNSATISFIABLE, matching.explain_pool(requires, pool), id=jid)
                return
        self.jobs[jid] = job
        self._enqueue(job)

    def _answer_from_cache(self, identity: bytes, jid: str, key: str) -> bool:
        raw = self.cas.action_get(key)
        result = ActionResult.decode(raw) if raw else None
        if result is None:
            return False
        needed = [o.digest for o in result.outputs] + ([result.stdout] if result.stdout else [])
        if self.cas.find_missing(needed):
            return False
        self.stats["cached"] += 1
        self.send(identity, P.encode(
            "result", id=jid, exit_code=result.exit_code, executor=result.executor, timed_out=False,
            started_at=result.started_at, finished_at=result.finished_at,
            outputs=[[o.path, str(o.digest), o.is_executable] for o in result.outputs],
            log=str(result.stdout) if result.stdout else None, error=None, cached=True, key=key))
        return True

    def on_result(self, identity: bytes, msg: dict[str, Any], frame: bytes) -> None:
        jid = msg["id"]
        eid = msg.get("executor")
        e = self.executors.get(eid) if eid else None
        if e is not None:
            e.last_seen = time.monotonic()
            if jid in e.running or jid in e.foreign:
                e.completed += 1
            e.running.discard(jid)
            e.foreign.discard(jid)
            e.refresh_busy()
        job = self.jobs.get(jid)
        ok = msg["exit_code"] == 0 and not msg.get("timed_out") and not msg.get("error")
        outputs = P.outputs_from_wire(msg.get("outputs") or [])
        log_digest = msg.get("log")
        needed = [o.digest for o in outputs.values()] + ([P.parse_digest(log_digest)] if log_digest else [])
        if needed and self.cas.find_missing(needed):
            # The executor said it uploaded these; without them the client could not materialize.
            frame = P.encode("result", **{**{k: v for k, v in msg.items() if k not in ("v", "type")},
                                          "exit_code": msg["exit_code"] or 1,
                                          "error": "executor returned outputs it did not upload"})
            ok = False
        cacheable = job.cacheable if job is not None else bool(msg.get("cacheable", False))
        key = job.key if job is not None else P.check_key(msg.get("key"))
        if ok and cacheable and key:
            action = job.action if job is not None else {}
            self._cache(key, msg, outputs, log_digest, bool(action.get("is_test", False)))
        if job is None:
            log.debug("result for unknown action %s from %s (after a restart or a cancel)", jid, eid)
            return
        if job.executor is not None and job.executor != eid:
            # A copy that was reassigned after its executor went silent: the first result wins.
            other = self.executors.get(job.executor)
            if other is not None:
                other.running.discard(jid)
                other.refresh_busy()
                self.reply(other.identity, "cancel", id=jid)
        if e is not None and job.assigned_at:
            e.busy_s += max(0.0, time.time() - job.assigned_at)
        del self.jobs[jid]
        self.stats["completed"] += 1
        if not ok:
            self.stats["failed"] += 1
        self.recent[jid] = frame
        if len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)
        self.send(job.client, frame)

    def _cache(self, key: str, msg: dict[str, Any], outputs: dict[str, Any], log_digest: str | None,
               is_test: bool) -> None:
        result = ActionResult(
            exit_code=0, outputs=tuple(outputs.values()),
            stdout=Digest.parse(log_digest) if log_digest else None, stderr=None,
            started_at=float(msg.get("started_at") or 0.0), finished_at=float(msg.get("finished_at") or 0.0),
            executor=str(msg.get("executor") or ""), test_outcome="passed" if is_test else None,
        )
        self.cas.action_put(key, result.encode())

    def on_cancel(self, identity: bytes, msg: dict[str, Any]) -> None:
        jid = msg["id"]
        job = self.jobs.get(jid)
        if job is None:
            return
        executor = next((e for e in self.executors.values() if e.identity == identity), None)
        if executor is not None and job.executor == executor.id:
            # The executor gives the assignment back (it is draining): run it elsewhere, no penalty.
            executor.running.discard(jid)
            executor.refresh_busy()
            self._requeue(jid, penalize=False, why=f"executor {executor.id} gave it back")
            return
        if job.client != identity:
            return
        self._drop(job, "cancelled by its client")

    def _drop(self, job: Job, why: str) -> None:
        del self.jobs[job.id]
        if job.executor is not None:
            e = self.executors.get(job.executor)
            if e is not None:
                e.running.discard(job.id)
                e.refresh_busy()
                self.reply(e.identity, "cancel", id=job.id)
        else:
            self.queued -= 1  # its heap entry is skipped lazily
        log.debug("dropped action %s: %s", job.id, why)

    def on_bye(self, identity: bytes, msg: dict[str, Any]) -> None:
        if msg.get("role") == "client":
            for job in [j for j in self.jobs.values() if j.client == identity]:
                self._drop(job, "its client said bye")
            self.clients.pop(identity, None)
            return
        eid = msg.get("id")
        e = self.executors.get(eid) if eid else None
        if e is None or e.identity != identity:
            return
        self._remove_executor(e, penalize=False, why=f"executor {eid} left")
        log.info("executor %s said bye", eid)

    # -- blobs ------------------------------------------------------------------------------------

    def on_upload(self, identity: bytes, msg: dict[str, Any]) -> None:
        d = P.parse_digest(msg["digest"])
        data, offset, last = msg["data"], msg["offset"], msg["last"]
        if offset < 0 or offset + len(data) > d.size:
            self.error(identity, P.E_BAD_REQUEST, f"upload of {d}: bytes beyond its size", req=msg["req"])
            return
        pkey = (identity, msg["digest"])
        if offset == 0 and last and pkey not in self.partial:
            ok = self.cas.put_verified(data, d)
        else:
            entry = self.partial.get(pkey)
            if entry is None:
                path = self.tmp_dir / f"upload.{len(self.partial)}.{time.monotonic_ns()}"
                entry = (path, open(path, "wb"), time.monotonic())
            path, f, _ = entry
            f.seek(offset)
            f.write(data)
            self.partial[pkey] = (path, f, time.monotonic())
            if not last:
                return
            f.close()
            del self.partial[pkey]
            try:
                ok = self.cas.put_file(path) == d
            finally:
                path.unlink(missing_ok=True)
        if not ok:
            log.warning("upload of %s did not match its digest; dropped", d)
        if not ok or msg.get("ack", True):
            self.reply(identity, "missing", req=msg["req"], digests=[] if ok else [msg["digest"]])

    def on_download(self, identity: bytes, msg: dict[str, Any]) -> None:
        req = msg["req"]
        for text in msg["digests"]:
            d = P.parse_digest(text)
            data = self.cas.get(d)
            if data is None:
                self.reply(identity, "blob", req=req, digest=text, offset=0, data=b"", last=True, found=False)
                continue
            for off in range(0, max(len(data), 1), P.CHUNK):
                self.reply(identity, "blob", req=req, digest=text, offset=off, data=data[off:off + P.CHUNK],
                           last=off + P.CHUNK >= len(data), found=True)

    # -- queue and placement ----------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        sig = (msgpack.packb(sorted(job.requires.items()), use_bin_type=True), job.excluded)
        heap = self.queues.get(sig)
        if heap is None:
            heap = self.queues[sig] = []
            self.sig_requires[sig] = job.requires
        heapq.heappush(heap, (-job.priority, job.seq, job.id))
        job.executor = None
        self.queued += 1

    def _live_head(self, heap: list[tuple[int, int, str]]) -> Job | None:
        while heap:
            job = self.jobs.get(heap[0][2])
            if job is not None and job.executor is None:
                return job
            heapq.heappop(heap)  # cancelled, finished or already placed
        return None

    def _pool(self, excluded: frozenset[str] = frozenset()) -> list[matching.Candidate]:
        if not excluded:
            return [e.cand for e in self.executors.values() if not e.draining]
        return [replace(e.cand, excluded=e.id in excluded) for e in self.executors.values() if not e.draining]

    def dispatch(self) -> None:
        if not self.queued:
            return
        room = self.opts.prefetch
        free = sum(max(0, e.slots + room - e.cand.busy) for e in self.executors.values() if not e.draining)
        while free > 0 and self.queued > 0:
            heads = []
            for sig, heap in self.queues.items():
                job = self._live_head(heap)
                if job is not None:
                    heads.append((heap[0][0], heap[0][1], sig, job))
            if not heads:
                self.queued = 0
                return
            heads.sort(key=lambda h: (h[0], h[1]))
            for _, _, sig, job in heads:
                chosen = self._place(job)
                if chosen is None:
                    continue
                heapq.heappop(self.queues[sig])
                self.queued -= 1
                self._assign(job, self.executors[chosen.id])
                free -= 1
                break
            else:
                return  # nothing queued fits a free slot now
        for sig in [s for s, h in self.queues.items() if not h]:
            del self.queues[sig]
            del self.sig_requires[sig]

    def _place(self, job: Job) -> matching.Candidate | None:
        keep_gpu = self.opts.keep_gpu_for_gpu_work
        pool = self._pool(job.excluded)
        chosen = self._choose(job.requires, pool, keep_gpu)
        if chosen is None and self.opts.prefetch > 0:
            # Every capable executor is full: queue it on one, chosen the same way but counting
            # `prefetch` more places each, so that it starts there as soon as a slot frees up.
            deeper = [replace(c, slots=c.slots + self.opts.prefetch) for c in pool]
            chosen = self._choose(job.requires, deeper, keep_gpu)
        return chosen

    def _assign(self, job: Job, e: ExecutorState) -> None:
        job.executor = e.id
        job.assigned_at = time.time()
        e.running.add(job.id)
        e.cand.busy += 1
        self.reply(e.identity, "assign", id=job.id, action=job.action, key=job.key, cacheable=job.cacheable,
                   attempt=job.attempt, requires=job.requires)

    def _requeue(self, jid: str, penalize: bool, why: str, dead: str | None = None) -> None:
        job = self.jobs.get(jid)
        if job is None:
            return
        if penalize:
            job.attempt += 1
            if dead is not None:
                job.excluded = job.excluded | {dead}
            if job.attempt > self.opts.retries + 1:
                del self.jobs[jid]
                self.stats["failed"] += 1
                self.error(job.client, P.E_RETRIES,
                           f"{why}; gave up after {job.attempt - 1} executor failure(s) "
                           f"(remote_execution.retries = {self.opts.retries})", id=jid)
                return
        self.stats["requeued"] += 1
        log.info("action %s (%s) back in the queue: %s", jid, job.action.get("label"), why)
        self._enqueue(job)
        self.pool_changed = True

    def _remove_executor(self, e: ExecutorState, penalize: bool, why: str) -> None:
        del self.executors[e.id]
        self.pool_changed = True
        for jid in list(e.running):
            self._requeue(jid, penalize=penalize, why=why, dead=e.id if penalize else None)

    # -- periodic work ----------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        for e in list(self.executors.values()):
            silent = now - e.last_seen
            if silent > self.opts.heartbeat_timeout_s:
                self.stats["executors_died"] += 1
                log.warning("executor %s silent for %.1fs: dead; %d running action(s) go elsewhere",
                            e.id, silent, len(e.running))
                self._remove_executor(e, penalize=True, why=f"executor {e.id} died (silent {silent:.1f}s)")
        if not self.grace_over and now - self.started >= self.opts.grace_s:
            self.grace_over = True
            self.pool_changed = True
        if self.grace_over and self.pool_changed:
            self.pool_changed = False
            self._fail_unrunnable()
        client_timeout = self.opts.client_timeout_s or 3 * self.opts.heartbeat_timeout_s
        for identity, seen in list(self.clients.items()):
            if now - seen > client_timeout:
                del self.clients[identity]
                for job in [j for j in self.jobs.values() if j.client == identity]:
                    self._drop(job, "its client went silent")
        for pkey, (path, f, touched) in list(self.partial.items()):
            if now - touched > PARTIAL_UPLOAD_TTL_S:
                f.close()
                path.unlink(missing_ok=True)
                del self.partial[pkey]

    def _fail_unrunnable(self) -> None:
        """Queued actions that no executor left in the pool can ever run fail now, never hang."""
        for sig, heap in list(self.queues.items()):
            requires = self.sig_requires[sig]
            excluded = sig[1]
            pool = self._pool(excluded)
            if matching.can_ever_run(requires, [c for c in pool if not c.excluded]):
                continue
            message = matching.explain_pool(requires, pool)
            if excluded:
                message = (f"executor(s) {', '.join(sorted(excluded))} died running it and no other can: "
                           + message)
            for _, _, jid in heap:
                job = self.jobs.get(jid)
                if job is None or job.executor is not None:
                    continue
                del self.jobs[jid]
                self.queued -= 1
                self.stats["failed"] += 1
                self.error(job.client, P.E_UNSATISFIABLE, message, id=jid)
            heap.clear()

    # -- reporting --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        wall = time.time()
        executors = []
        slots = busy = 0
        for e in sorted(self.executors.values(), key=lambda x: x.id):
            slots += e.slots
            busy += min(e.slots, e.cand.busy)
            executors.append({
                "id": e.id, "caps": e.caps.to_dict(), "summary": e.caps.summary(), "cost": e.caps.cost,
                "slots": e.slots, "busy": min(e.slots, e.cand.busy), "waiting": max(0, e.cand.busy - e.slots),
                "running": sorted(e.running | e.foreign),
                "draining": e.draining, "completed": e.completed,
                "last_heartbeat": e.last_heartbeat, "last_heartbeat_age_s": round(now - e.last_seen, 3),
                "registered_at": e.registered_at,
                "utilization": round(e.busy_s / max(1e-9, wall - e.registered_at), 4),
            })
        by_requires = []
        for sig, heap in self.queues.items():
            n = sum(1 for _, _, jid in heap if jid in self.jobs and self.jobs[jid].executor is None)
            if n:
                by_requires.append({"requires": self.sig_requires[sig], "excluded": sorted(sig[1]), "queued": n})
        return {
            "scheduler": {
                "id": self.name, "address": self.address, "started_at": self.started_wall,
                "uptime_s": round(now - self.started, 3), "heartbeat_s": self.opts.heartbeat_s,
                "heartbeat_timeout_s": self.opts.heartbeat_timeout_s, "retries": self.opts.retries,
                "keep_gpu_for_gpu_work": self.opts.keep_gpu_for_gpu_work, "curve": self.auth is not None,
                "policy": self.opts.policy, "prefetch": self.opts.prefetch,
                "digest": self.store.digest_function, "state_dir": str(self.opts.state_dir),
            },
            "executors": executors,
            "queue": {"length": self.queued, "by_requires": by_requires},
            "running": sum(1 for j in self.jobs.values() if j.executor is not None),
            "slots": slots,
            "busy": busy,
            "utilization": round(busy / slots, 4) if slots else 0.0,
            "clients": len(self.clients),
            "totals": dict(self.stats),
            "refused_keys": self.allowlist.refused if self.allowlist is not None else 0,
        }


__all__ = ["Job", "Scheduler", "SchedulerOptions"]
