"""The client side of remote execution: an Executor that runs each action through the scheduler.

The engine does not know the difference: it hands `RemoteExecutor.execute` an action and its
inputs exactly as it would the LocalExecutor, and gets back an ExecResult whose outputs are in
the local Store and under ciopt-out/. Caching, retries of flaky tests, and the JSON report stay
the engine's; an answer the scheduler served from its own ActionCache comes back with
`cached_remote` set, which the engine reports as the `cached_remote` status.

Per action: find_missing for the inputs, upload what the scheduler lacks (read from the files the
engine named: sources and earlier outputs), submit, wait for the result (heartbeating so that a
scheduler restart is noticed and the submission repeated), download the outputs and log the
local Store lacks, and write them out. Each engine thread has its own Channel (DEALER socket).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ciopt import Digest, Store, tree_digest
from ciopt.errors import UserError
from ciopt.exec.local import ExecResult, Executor, InputFile, LocalExecutor
from ciopt.graph.action_graph import PROJECT_PYTHON, Action, Toolchain, action_key
from ciopt.graph.label import Label
from ciopt.remote import protocol as P
from ciopt.remote.auth import ClientSecurity
from ciopt.remote.transport import Channel, Unreachable

if TYPE_CHECKING:
    from ciopt.exec.python_env import PythonEnv

log = logging.getLogger("ciopt.remote.client")

CONNECT_TIMEOUT_S = 3.0
MISSING_INPUT_RESUBMITS = 3


class RemoteUnavailable(UserError):
    """The scheduler cannot be used and falling back to local execution is off."""


class _Interrupted(Exception):
    pass


class RemoteExecutor:
    """An Executor that ships actions to a `ciopt scheduler`."""

    def __init__(self, address: str, store: Store, out_root: Path, toolchain: Toolchain, *,
                 priorities: Mapping[Label, int] | None = None, security: ClientSecurity | None = None,
                 heartbeat_s: float = 5.0, unreachable_after_s: float = 30.0,
                 fallback: Executor | None = None, warn: Callable[[str], None] | None = None,
                 sources: Mapping[Digest, Path] | None = None, python: PythonEnv | None = None) -> None:
        self.address = address
        self.python = python
        self.store = store
        self.digest = store.digest_function
        self.out_root = out_root
        self.toolchain = toolchain
        self.priorities = priorities or {}
        self.security = security
        self.heartbeat_s = heartbeat_s
        self.unreachable_after_s = unreachable_after_s
        self.fallback = fallback
        self.warn = warn or (lambda m: log.warning("%s", m))
        self.id = f"remote:{address}"
        # Set by whoever runs the engine, so that Ctrl-C ends the waits (Engine._stop).
        self.stop = threading.Event()
        self._ctx = zmq.Context()
        self._local = threading.local()
        self._channels: list[Channel] = []
        self._lock = threading.Lock()
        self._failed_tests: set[Label] = set()
        self._gone: str | None = None  # why the scheduler was given up on, once it was
        self._known: set[Digest] = set()  # blobs the scheduler's CAS holds, as far as we know
        self._absent: set[Digest] = set()  # blobs it lacked when asked (sent with no further question)
        # Source files the build's actions read: asked about in one find_missing before the first
        # action, instead of one round trip per action.
        self._sources = dict(sources or {})
        self.tmp_dir = out_root / ".remote-tmp"

    # -- setup --------------------------------------------------------------------------------------

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
        """Say hello and wait for the welcome: Unreachable (or Refused) when the scheduler does not answer."""
        chan = Channel(self._ctx, self.address, self.security, idle_timeout_s=timeout_s, watch=True)
        try:
            chan.send("hello", role="client")
            welcome = chan.wait_for(lambda m: m["type"] == "hello", "the scheduler's welcome")
        finally:
            chan.close()
        theirs = welcome.get("digest", "blake3")
        if theirs != self.digest:
            raise RemoteUnavailable(f"the scheduler at {self.address} stores {theirs} digests and this store "
                                    f"{self.digest}; they must agree")
        self.heartbeat_s = float(welcome.get("heartbeat_s") or self.heartbeat_s)
        return welcome

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, []
        for chan in channels:
            try:
                chan.send("bye", role="client")
            except zmq.ZMQError:
                pass
            chan.close()
        self._ctx.term()

    def _channel(self) -> Channel:
        chan = getattr(self._local, "chan", None)
        if chan is None:
            chan = Channel(self._ctx, self.address, self.security, idle_timeout_s=self.unreachable_after_s)
            self._local.chan = chan
            with self._lock:
                self._channels.append(chan)
        return chan

    # -- Executor -----------------------------------------------------------------------------------

    def execute(self, action: Action, inputs: list[InputFile], log_path: Path) -> ExecResult:
        started = time.time()
        if self._gone is not None and self.fallback is not None:
            return self.fallback.execute(action, inputs, log_path)
        triples = [(i.path, i.digest, i.is_executable) for i in inputs]
        key = action_key(action, tree_digest(triples, self.digest), self.toolchain.for_action(action), self.digest)
        jid = uuid.uuid4().hex
        with self._lock:
            # A test that already failed in this build and passes now is flaky: not a clean cache entry.
            cacheable = not (action.is_test and action.label in self._failed_tests)
        requires = P.requires_to_wire(action)
        if self.python is not None and action.argv[:1] == (PROJECT_PYTHON,):
            # The project's Python version: only an executor offering it can run the test.
            requires.setdefault("python", self.python.minor_version)
        submit = {
            "id": jid, "action": P.action_to_wire(action, triples), "requires": requires,
            "priority": int(self.priorities.get(action.label, 0)), "key": key, "cacheable": cacheable,
        }
        files = {i.digest: i.local for i in inputs}
        chan = self._channel()
        try:
            msg = self._run(chan, jid, files, submit)
            result = self._finish(chan, action, msg, log_path, started)
        except _Interrupted:
            return ExecResult(130, False, started, time.time(), self.id, error="interrupted")
        except Unreachable as e:
            return self._unreachable(e, action, inputs, log_path, started)
        if not result.ok and action.is_test:
            with self._lock:
                self._failed_tests.add(action.label)
        return result

    def _unreachable(self, e: Unreachable, action: Action, inputs: list[InputFile], log_path: Path,
                     started: float) -> ExecResult:
        if self.fallback is not None:
            with self._lock:
                first = self._gone is None
                self._gone = str(e)
            if first:
                self.warn(f"{e}; running the rest of the build locally (remote_execution.fallback_to_local)")
            return self.fallback.execute(action, inputs, log_path)
        return ExecResult(1, False, started, time.time(), self.id, error=f"remote execution failed: {e}")

    def _missing(self, chan: Channel, files: Mapping[Digest, Path]) -> list[Digest]:
        """The inputs the scheduler lacks.

        Digests this client uploaded, downloaded or was told are present are not asked about
        again: after the first actions of a build, most inputs are earlier actions' outputs that
        came from the scheduler, and their find_missing round trip would be pure latency.
        """
        if self._sources:
            self._ask_about_sources(chan)
        with self._lock:
            unknown = [d for d in files if d not in self._known and d not in self._absent]
            absent = [d for d in files if d in self._absent]
        missing = chan.find_missing(unknown) if unknown else []
        with self._lock:
            self._known.update(d for d in unknown if d not in missing)
        return missing + absent

    def _upload(self, chan: Channel, files: Mapping[Digest, Path], missing: list[Digest]) -> list[Digest]:
        """Send these inputs without waiting for acknowledgements (the submit that follows on this
        connection is refused with missing_inputs if one did not arrive intact)."""

        def read(d: Digest) -> bytes | None:
            try:
                return files[d].read_bytes()
            except OSError:
                return None

        failed = chan.upload(read, missing, wait=False) if missing else []
        with self._lock:
            self._known.update(d for d in missing if d not in failed)
            self._absent.difference_update(missing)
        return failed

    def _ask_about_sources(self, chan: Channel) -> None:
        with self._lock:
            sources, self._sources = self._sources, {}
        if not sources:
            return
        missing = set(chan.find_missing(list(sources)))
        with self._lock:
            self._known.update(d for d in sources if d not in missing)
            self._absent.update(missing)

    def _forget(self, files: Mapping[Digest, Path]) -> None:
        """The scheduler lacks something we thought it had (it restarted): ask again next time."""
        with self._lock:
            self._known.difference_update(files)
            self._absent.difference_update(files)

    def _run(self, chan: Channel, jid: str, files: Mapping[Digest, Path], submit: dict[str, Any]
             ) -> dict[str, Any]:
        """Upload, submit and wait: the `result` or `error` message that ends this submission."""

        def send_submit() -> dict[str, Any] | None:
            # The inputs the scheduler lacks and the submit travel as one message.
            missing = self._missing(chan, files)
            chan.begin_batch()
            try:
                failed = self._upload(chan, files, missing)
                if failed:
                    paths = sorted(str(files[d]) for d in failed)
                    return {"type": "error", "code": P.E_MISSING_INPUTS,
                            "message": f"could not read {len(failed)} input(s) to upload: " + ", ".join(paths[:5])}
                chan.send("submit", **submit)
                return None
            finally:
                chan.send_batch()

        early = send_submit()
        if early is not None:
            return early
        resubmits = 0
        heard = time.monotonic()
        next_beat = heard + self.heartbeat_s
        while True:
            if self.stop.is_set():
                chan.send("cancel", id=jid)
                raise _Interrupted()
            msg = chan.recv(0.25)
            now = time.monotonic()
            if msg is None:
                if now - heard > self.unreachable_after_s:
                    raise Unreachable(f"the scheduler at {self.address} has been silent for "
                                      f"{now - heard:.0f} s")
                if now >= next_beat:
                    chan.send("heartbeat", role="client", pending=[jid])
                    next_beat = now + self.heartbeat_s
                continue
            heard = now
            t = msg["type"]
            if t == "result" and msg["id"] == jid:
                return msg
            if t == "error" and msg.get("id") == jid:
                if msg["code"] == P.E_MISSING_INPUTS and resubmits < MISSING_INPUT_RESUBMITS:
                    resubmits += 1
                    self._forget(files)
                    early = send_submit()
                    if early is not None:
                        return early
                    continue
                return msg
            if t == "heartbeat" and jid in (msg.get("unknown") or []):
                # The scheduler has no record of it: it restarted. Submit again (its CAS is on disk, so
                # find_missing usually finds nothing to upload).
                log.info("scheduler lost action %s (restart?); submitting it again", submit["action"]["label"])
                self._forget(files)
                early = send_submit()
                if early is not None:
                    return early

    def _finish(self, chan: Channel, action: Action, msg: dict[str, Any], log_path: Path,
                started: float) -> ExecResult:
        if msg["type"] == "error":
            return ExecResult(1, False, started, time.time(), "scheduler", error=msg["message"])
        executor = msg.get("executor") or "remote"
        result = ExecResult(msg["exit_code"], bool(msg.get("timed_out")), float(msg.get("started_at") or started),
                            float(msg.get("finished_at") or time.time()), executor, error=msg.get("error"),
                            cached_remote=bool(msg.get("cached")))
        try:
            outputs = P.outputs_from_wire(msg.get("outputs") or [])
            log_digest = P.parse_digest(msg["log"]) if msg.get("log") else None
        except P.ProtocolError as e:
            result.error = f"bad result from the scheduler: {e}"
            return result
        if result.ok and set(outputs) != set(action.outputs):
            result.error = (f"executor {executor} returned outputs {sorted(outputs)}, "
                            f"the action declares {sorted(action.outputs)}")
            return result
        # Outputs go straight to ciopt-out/ (the engine stores them with its batched writes); only
        # what the local store lacks is downloaded.
        targets: list[tuple[Digest, Path, bool]] = [(o.digest, self.out_root / o.path, o.is_executable)
                                                    for o in outputs.values()]
        if log_digest is not None:
            targets.append((log_digest, log_path, False))
        wanted = list({d for d, _, _ in targets})
        missing = set(self.store.find_missing(wanted)) if wanted else set()
        got: dict[Digest, bytes | Path] = {}
        if missing:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            got, failed = chan.download(missing, self.tmp_dir, self.digest)
            if failed:
                _discard(got)
                result.error = f"could not download {len(failed)} output blob(s) from the scheduler, e.g. {failed[0]}"
                return result
            with self._lock:
                self._known.update(got)
        try:
            for d, dest, executable in targets:
                if not _write(dest, got.get(d), executable) and not self.store.get_to_file(d, dest, executable):
                    result.error = f"output {dest.name} vanished from the local store"
                    return result
        finally:
            _discard(got)
        if log_digest is None and (action.is_test or not result.ok):
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_bytes(b"")
        if result.ok:
            result.outputs = outputs
        return result


def _write(dest: Path, item: bytes | Path | None, executable: bool) -> bool:
    """Write a downloaded blob (bytes, or a verified temporary file) to dest, atomically."""
    if item is None:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(item, Path):
                with open(item, "rb") as src:
                    shutil.copyfileobj(src, f)
            else:
                f.write(item)
        os.chmod(tmp, 0o755 if executable else 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _discard(got: Mapping[Digest, bytes | Path]) -> None:
    for item in got.values():
        if isinstance(item, Path):
            item.unlink(missing_ok=True)


def open_remote_executor(address: str, store: Store | None, out_root: Path, toolchain: Toolchain, *,
                         fallback_to_local: bool, heartbeat_s: float, heartbeat_timeout_s: float,
                         priorities: Mapping[Label, int], warn: Callable[[str], None],
                         security: ClientSecurity | None = None,
                         sources: Mapping[Digest, Path] | None = None,
                         python: PythonEnv | None = None) -> RemoteExecutor | None:
    """A connected RemoteExecutor, or None (after a warning) when the build should run locally.

    Raises RemoteUnavailable when the scheduler cannot be reached and fallback_to_local is off.
    """
    if store is None:
        warn("remote execution is off under the emergency bypass; running everything locally")
        return None
    security = security if security is not None else ClientSecurity.from_env()
    digest = store.digest_function
    remote = RemoteExecutor(
        address, store, out_root, toolchain, priorities=priorities, security=security, heartbeat_s=heartbeat_s,
        unreachable_after_s=max(heartbeat_timeout_s, 2 * heartbeat_s),
        fallback=LocalExecutor(out_root, digest, python) if fallback_to_local else None, warn=warn, sources=sources,
        python=python)
    try:
        remote.connect()
    except Unreachable as e:
        remote.close()
        if fallback_to_local:
            warn(f"{e}; building locally (remote_execution.fallback_to_local)")
            return None
        raise RemoteUnavailable(f"{e} (and remote_execution.fallback_to_local is off)") from None
    except RemoteUnavailable:
        remote.close()
        raise
    return remote


__all__ = ["RemoteExecutor", "RemoteUnavailable", "open_remote_executor"]
