"""The executor daemon (`ciopt executor`): registers with the scheduler and runs what it is assigned.

Threads:
  * the I/O thread (the caller of `run`) owns the control socket: hello, heartbeats, assign,
    cancel, bye. It never waits on an action, so heartbeats go out on time however long the
    actions run, and it notices a silent scheduler and reconnects (a restarted scheduler gets
    a fresh hello listing the actions still running here).
  * fetchers download the inputs the local Store lacks, by digest, and stage them as files;
  * `slots` workers run each action with the very LocalExecutor a local build uses (same
    sandbox, environment and timeout handling) and keep its outputs and log in the Store;
  * reporters upload the outputs and log the scheduler lacks and send the result, on one
    connection, so the scheduler always has the blobs a result names.
  The scheduler assigns a few actions beyond the slots, so the next action's inputs are staged
  while the current one runs: a slot goes from one action to the next without a round trip.

SIGTERM drains: the running actions finish and report, queued ones are given back to the
scheduler, nothing new is accepted, then the executor says bye and exits 0. A second SIGTERM
(or SIGINT) stops the running actions' process groups and exits at once.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ciopt import Digest, Store
from ciopt.exec.local import InputFile, LocalExecutor, _running, _running_lock
from ciopt.graph.action_graph import Action
from ciopt.exec.python_env import PythonEnv
from ciopt.hardware import Capabilities
from ciopt.remote import protocol as P
from ciopt.remote.auth import ClientSecurity
from ciopt.remote.cas import WriteBehindCAS
from ciopt.remote.transport import Channel, HandshakeWatch, Refused, Unreachable, dealer

log = logging.getLogger("ciopt.remote.executor")

HELLO_RETRY_S = 1.0
UPLOAD_TRIES = 3
BIG_BLOB = 4 * 1024 * 1024  # larger outputs are streamed into the store, not read into memory


@dataclass
class ExecutorOptions:
    scheduler: str
    state_dir: Path
    caps: Capabilities
    slots: int = 1
    id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    security: ClientSecurity | None = None
    # Until the scheduler's welcome says otherwise.
    heartbeat_s: float = 5.0
    heartbeat_timeout_s: float = 30.0
    # Python interpreters this host offers, by "3.11"; the first is the default. Advertised as
    # `python=3.11` tags, which is what a py_test's requires["python"] is matched against.
    pythons: dict[str, PythonEnv] = field(default_factory=dict)


@dataclass
class _Job:
    id: str
    msg: dict[str, Any]
    sandbox_base: Path | None = None  # set when a worker starts running it
    cancelled: bool = False
    # Set by the fetcher: what to run, or why it cannot run.
    action: Action | None = None
    staged: list[InputFile] = field(default_factory=list)
    report: dict[str, Any] | None = None  # the result fields, once known
    blobs: list[Digest] = field(default_factory=list)  # outputs and log, to upload with the result


class ExecutorDaemon:
    def __init__(self, options: ExecutorOptions, ctx: zmq.Context | None = None) -> None:
        self.opts = options
        self.id = options.id
        self.ctx = ctx or zmq.Context.instance()
        self.heartbeat_s = options.heartbeat_s
        self.heartbeat_timeout_s = options.heartbeat_timeout_s
        # The CAS (state_dir/cas-DIGEST) persists and may be shared by the executors of one host
        # (LMDB is multi-process safe); scratch space is per executor (state_dir/run/ID).
        options.state_dir.mkdir(parents=True, exist_ok=True)
        run_dir = options.state_dir / "run" / "".join(c if c.isalnum() or c in "-_." else "_" for c in self.id)
        self.jobs_dir = run_dir / "jobs"
        self.inputs_dir = run_dir / "inputs"
        self.tmp_dir = run_dir / "tmp"
        # Job directories and the input file cache are per run: a crashed run leaves nothing we trust.
        for d in (self.jobs_dir, self.inputs_dir, self.tmp_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        self.cas: WriteBehindCAS | None = None  # opened once the scheduler says which digest function it uses
        self.digest = "blake3"
        # fetch -> run -> report; see _start_workers.
        self.fetch_q: queue.Queue[_Job | None] = queue.Queue()
        self.run_q: queue.Queue[_Job | None] = queue.Queue()
        self.report_q: queue.Queue[_Job | None] = queue.Queue()
        self.jobs: dict[str, _Job] = {}  # assigned and not yet reported
        self.jobs_lock = threading.Lock()
        self.draining = False
        self.stop_now = False
        self.workers: list[threading.Thread] = []
        self.completed = 0
        self.exit_code = 0
        self.fatal: str | None = None  # why run() gave up (exit 2)

    # -- the I/O thread ---------------------------------------------------------------------------

    def request_drain(self) -> None:
        if self.draining:
            log.warning("second stop request: killing running actions")
            self.stop_now = True
        self.draining = True

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.request_drain())
        sock, watch = self._connect()
        welcomed = False
        last_heard = time.monotonic()
        next_hello = 0.0
        next_beat = 0.0
        announced_drain = False
        try:
            while True:
                now = time.monotonic()
                if self.stop_now:
                    self._kill_running()
                    return 130
                if self.draining and not announced_drain and welcomed:
                    log.info("draining: finishing %d running action(s), accepting no new ones", len(self.jobs))
                    self._give_back_queued(sock)
                    announced_drain = True
                    next_beat = 0.0
                if self.draining and not self.jobs:
                    self._send(sock, "bye", id=self.id, role="executor")
                    log.info("drained; bye")
                    return self.exit_code
                if not welcomed and now >= next_hello:
                    self._hello(sock)
                    next_hello = now + HELLO_RETRY_S
                if welcomed and now >= next_beat:
                    with self.jobs_lock:
                        running = list(self.jobs)
                    self._send(sock, "heartbeat", id=self.id, running=running, draining=self.draining)
                    next_beat = now + self.heartbeat_s
                if now - last_heard > self.heartbeat_timeout_s:
                    log.warning("scheduler silent for %.1fs; reconnecting to %s", now - last_heard,
                                self.opts.scheduler)
                    watch.close()
                    sock.close(linger=0)
                    sock, watch = self._connect()
                    welcomed, next_hello, last_heard = False, 0.0, now
                watch.poll()
                if watch.failure is not None:
                    log.error("%s", watch.failure)
                    self.fatal = watch.failure
                    return 2
                if not sock.poll(100):
                    continue
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = P.decode(frame)
                    except P.ProtocolError as e:
                        log.warning("dropped a bad frame from the scheduler: %s", e)
                        continue
                    last_heard = time.monotonic()
                    t = msg["type"]
                    if t == "hello":
                        if not welcomed:
                            log.info("registered with scheduler %s at %s", msg.get("scheduler"), self.opts.scheduler)
                        welcomed = True
                        self._adopt(msg)
                    elif t == "assign":
                        self._on_assign(sock, msg)
                    elif t == "cancel":
                        self._on_cancel(msg["id"])
                    elif t == "error" and msg["code"] == P.E_UNKNOWN_EXECUTOR:
                        # The scheduler restarted and forgot us.
                        log.info("scheduler does not know this executor (it restarted); registering again")
                        welcomed = False
                        next_hello = 0.0
                    elif t == "error":
                        log.warning("scheduler error %s: %s", msg["code"], msg["message"])
        finally:
            self._shutdown_workers()
            if self.cas is not None:
                self.cas.close()
            watch.close()
            sock.close(linger=200)

    def _connect(self) -> tuple[zmq.Socket, HandshakeWatch]:
        sock = dealer(self.ctx, self.opts.scheduler, self.opts.security, connect=False)
        watch = HandshakeWatch(sock, self.opts.scheduler, self.opts.security is not None)
        sock.connect(self.opts.scheduler)  # after the watch: a refused first handshake may not be retried
        return sock, watch

    def _send(self, sock: zmq.Socket, msg_type: str, **fields: Any) -> None:
        try:
            sock.send(P.encode(msg_type, **fields), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("control queue full; %s dropped", msg_type)

    def _hello(self, sock: zmq.Socket) -> None:
        with self.jobs_lock:
            running = list(self.jobs)
        self._send(sock, "hello", role="executor", id=self.id, caps=self.opts.caps.to_dict(), slots=self.opts.slots,
                   cost=self.opts.caps.cost, running=running, draining=self.draining)

    def _adopt(self, welcome: dict[str, Any]) -> None:
        """Settings from the scheduler's welcome: heartbeat timing and the digest function."""
        self.heartbeat_s = float(welcome.get("heartbeat_s") or self.heartbeat_s)
        self.heartbeat_timeout_s = float(welcome.get("heartbeat_timeout_s") or self.heartbeat_timeout_s)
        digest = welcome.get("digest") or "blake3"
        if self.cas is None:
            self.digest = digest if digest in ("blake3", "sha256") else "blake3"
            self.cas = WriteBehindCAS(Store(self.opts.state_dir / f"cas-{self.digest}", digest=self.digest))
            self._start_workers()

    def _start_workers(self) -> None:
        """Three stages, so that a slot never waits on the network: fetchers download and stage the
        inputs of assigned actions (the scheduler assigns a few beyond the slots, so the next
        action is ready when a slot frees up), `slots` workers run them, reporters upload
        outputs and log and send the results. Fetchers and reporters own a Channel each."""
        helpers = max(1, min(4, self.opts.slots))
        stages = [(self._fetcher, helpers, "fetch"), (self._worker, self.opts.slots, "run"),
                  (self._reporter, helpers, "report")]
        for target, count, name in stages:
            for i in range(count):
                t = threading.Thread(target=target, args=(i,), name=f"ciopt-executor-{name}-{i}", daemon=True)
                t.start()
                self.workers.append(t)

    def _shutdown_workers(self) -> None:
        for q in (self.fetch_q, self.run_q, self.report_q):
            for _ in self.workers:
                q.put(None)
        for t in self.workers:
            t.join(timeout=5)

    def _on_assign(self, sock: zmq.Socket, msg: dict[str, Any]) -> None:
        jid = msg["id"]
        if self.draining:
            self._send(sock, "cancel", id=jid)  # give it back: run it elsewhere
            return
        with self.jobs_lock:
            if jid in self.jobs:
                return  # a duplicate assign after a reconnect
            job = self.jobs[jid] = _Job(jid, msg)
        self.fetch_q.put(job)

    def _give_back_queued(self, sock: zmq.Socket) -> None:
        with self.jobs_lock:
            waiting = [j for j in self.jobs.values() if j.sandbox_base is None]
            for j in waiting:
                j.cancelled = True
                del self.jobs[j.id]
        for j in waiting:
            self._send(sock, "cancel", id=j.id)

    def _on_cancel(self, jid: str) -> None:
        with self.jobs_lock:
            job = self.jobs.get(jid)
            if job is None:
                return
            job.cancelled = True
            base = job.sandbox_base
        if base is not None:
            log.info("cancelling running action %s", jid)
            self._kill_under(base)

    def _kill_under(self, base: Path) -> None:
        """Kill the process groups whose working directory is inside `base` (one job's sandboxes).

        LocalExecutor registers every process group it starts in exec.local._running; the
        group leader's cwd (its exec root) tells which job it belongs to.
        """
        prefix = str(base) + os.sep
        with _running_lock:
            groups = list(_running)
        for pgid in groups:
            try:
                cwd = os.readlink(f"/proc/{pgid}/cwd")
            except OSError:
                continue
            if cwd.startswith(prefix):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _kill_running(self) -> None:
        with self.jobs_lock:
            bases = [j.sandbox_base for j in self.jobs.values() if j.sandbox_base is not None]
        for base in bases:
            self._kill_under(base)

    # -- workers ----------------------------------------------------------------------------------

    def _channel(self) -> Channel:
        return Channel(self.ctx, self.opts.scheduler, self.opts.security,
                       idle_timeout_s=max(self.heartbeat_timeout_s, 5.0))

    def _fetcher(self, index: int) -> None:
        chan = self._channel()
        try:
            while (job := self.fetch_q.get()) is not None:
                if job.cancelled:
                    continue
                try:
                    self._fetch(chan, job)
                except Exception as e:  # noqa: BLE001 - the action fails, the executor keeps serving
                    log.exception("fetching the inputs of action %s failed", job.id)
                    job.report = {"exit_code": 1, "error": f"executor {self.id}: {type(e).__name__}: {e}"}
                (self.report_q if job.report is not None else self.run_q).put(job)
        finally:
            chan.close()

    def _fetch(self, chan: Channel, job: _Job) -> None:
        assert self.cas is not None
        try:
            action, inputs = P.action_from_wire(job.msg["action"], job.msg.get("requires") or None)
        except P.ProtocolError as e:
            job.report = {"exit_code": 1, "error": f"executor {self.id} rejected the action: {e}"}
            return
        # Whatever the local store lacks comes from the scheduler's CAS, by digest.
        missing = self.cas.find_missing(list({d for _, d, _ in inputs}))
        if missing:
            got, failed = self._with_retries(lambda: chan.download(missing, self.tmp_dir, self.digest))
            for d, item in got.items():  # verified by the download
                if isinstance(item, Path):
                    self.cas.put_file(item)
                    item.unlink(missing_ok=True)
                else:
                    self.cas.put_verified(item, d)
            if failed:
                job.report = {"exit_code": 1, "error": f"executor {self.id}: {len(failed)} input blob(s) "
                                                       f"unavailable from the scheduler, e.g. {failed[0]}"}
                return
        job.action = action
        job.staged = [InputFile(path, d, executable, self._materialize(d)) for path, d, executable in inputs]

    def _worker(self, index: int) -> None:
        # One LocalExecutor per worker, reused: its out root holds one action's outputs at a time
        # (removed file by file after each action; removing whole trees per action was a tenth
        # of an executor's time), and its sandbox base identifies this worker's processes.
        runner = LocalExecutor(self.jobs_dir / f"w{index}" / "out", self.digest)
        runner.id = self.id
        while (job := self.run_q.get()) is not None:
            with self.jobs_lock:
                if job.cancelled:
                    continue
                job.sandbox_base = runner.sandbox_base
            try:
                self._run(job, runner)
            except Exception as e:  # noqa: BLE001 - the action fails, the executor keeps serving
                log.exception("action %s failed inside the executor", job.id)
                job.report = {"exit_code": 1, "error": f"executor {self.id}: {type(e).__name__}: {e}"}
            self.report_q.put(job)

    def _run(self, job: _Job, runner: LocalExecutor) -> None:
        assert self.cas is not None and job.action is not None
        log_path = runner.out_root.parent / "log"
        log_path.unlink(missing_ok=True)
        _clear_for(runner.out_root, job.action.outputs)
        wanted = dict(job.action.requires).get("python")
        if self.opts.pythons:
            runner.python = self.opts.pythons.get(str(wanted)) or next(iter(self.opts.pythons.values()))
        try:
            result = runner.execute(job.action, job.staged, log_path)
            # LocalExecutor leaves the outputs under its out root, hashed; the CAS takes them (and
            # the log) before the next action reuses the out root, and serves later actions here.
            for o in result.outputs.values():
                if not self._keep(runner.out_root / o.path, o.digest):
                    result.error = result.error or f"output {o.path} changed after the action ended"
            log_digest = self.cas.put(log_path.read_bytes()) if log_path.exists() else None
        finally:
            _remove_outputs(runner.out_root, job.action.outputs)
        job.blobs = [o.digest for o in result.outputs.values()] + ([log_digest] if log_digest else [])
        job.report = {
            "exit_code": result.exit_code, "timed_out": result.timed_out, "started_at": result.started_at,
            "finished_at": result.finished_at, "outputs": P.outputs_to_wire(result.outputs),
            "log": str(log_digest) if log_digest else None, "error": result.error,
        }

    def _reporter(self, index: int) -> None:
        chan = self._channel()
        try:
            while (job := self.report_q.get()) is not None:
                try:
                    self._send_report(chan, job)
                except Exception:  # noqa: BLE001 - the client's heartbeat will resubmit it
                    log.exception("could not report action %s", job.id)
                finally:
                    with self.jobs_lock:
                        self.jobs.pop(job.id, None)
        finally:
            chan.close()

    def _send_report(self, chan: Channel, job: _Job) -> None:
        assert self.cas is not None and job.report is not None
        fields = job.report
        missing = self._with_retries(lambda: chan.find_missing(job.blobs)) if job.blobs else []
        # The missing blobs and the result in one message: not waiting for upload acknowledgements,
        # since the scheduler handles the result after the blobs and refuses it if one did not arrive.
        chan.begin_batch()
        try:
            if missing and chan.upload(self.cas.get, missing, wait=False):
                fields["error"] = f"executor {self.id}: could not read {len(missing)} output blob(s) to upload"
            self._report(chan, job, fields)
        finally:
            chan.send_batch()

    def _with_retries(self, fn: Any) -> Any:
        for attempt in range(1, UPLOAD_TRIES + 1):
            try:
                return fn()
            except Refused:
                raise
            except Unreachable as e:
                if attempt == UPLOAD_TRIES:
                    raise
                log.warning("%s; retrying", e)

    def _report(self, chan: Channel, job: _Job, fields: dict[str, Any]) -> None:
        if job.cancelled:
            return
        msg = job.msg
        fields.setdefault("error", None)
        chan.send("result", id=job.id, executor=self.id, key=msg.get("key"), cacheable=bool(msg.get("cacheable")),
                  attempt=int(msg.get("attempt", 1)), **fields)
        self.completed += 1

    def _keep(self, path: Path, digest: Digest) -> bool:
        """Into the CAS, checked against the digest LocalExecutor computed (a process the action
        left behind could still be writing)."""
        if digest.size > BIG_BLOB:
            return self.cas.put_file(path) == digest
        return self.cas.put_verified(path.read_bytes(), digest)

    def _materialize(self, d: Digest) -> Path:
        """A file holding blob `d`, shared by every action that needs it (the Sandbox copies from it)."""
        assert self.cas is not None
        path = self.inputs_dir / d.hash
        if not os.path.exists(path) and not self.cas.get_to_file(d, path):
            raise FileNotFoundError(f"input blob {d} vanished from the executor's store")
        return path


def _remove_outputs(root: Path, outputs: tuple[str, ...]) -> None:
    """Remove an action's outputs from the reused out root. Their directories stay for the next
    action (recreating them each time cost more than running `cat`); only a directory standing
    where an output must go is removed, by _clear_for."""
    for rel in outputs:
        try:
            os.unlink(root / rel)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            shutil.rmtree(root / rel, ignore_errors=True)


def _clear_for(root: Path, outputs: tuple[str, ...]) -> None:
    for rel in outputs:
        if os.path.isdir(root / rel):
            shutil.rmtree(root / rel, ignore_errors=True)


__all__ = ["ExecutorDaemon", "ExecutorOptions"]
