"""Sockets and blob transfer shared by the executor daemon and the client.

A `Channel` is one DEALER socket used from one thread at a time for request/reply exchanges
with the scheduler: find_missing, upload, download (and, for the client, submit/result).
Requests carry a number (`req`) and replies are matched on it, so a late reply to an earlier,
abandoned request is dropped instead of being mistaken for the current one.

Blobs move in chunks of protocol.CHUNK bytes; every blob received is re-hashed on the way in
and kept only if it matches the digest asked for, so a corrupt or lying peer cannot plant
wrong bytes under a digest.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ciopt import CorruptBlobError, Digest, hash_bytes, hash_file
from ciopt.remote import protocol as P
from ciopt.remote.auth import ClientSecurity

log = logging.getLogger("ciopt.remote.transport")

FIND_MISSING_BATCH = 10_000
# Socket queue limits, in messages: large enough that a burst of submissions or chunks never
# blocks, small enough that a dead peer cannot make us buffer without bound.
HWM = 100_000


class Unreachable(Exception):
    """The scheduler did not answer in time."""


class Refused(Unreachable):
    """The scheduler refused our CURVE key (it is not on its allowlist)."""


def dealer(ctx: zmq.Context, address: str, security: ClientSecurity | None, connect: bool = True) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_FRAME)
    sock.sndhwm = sock.rcvhwm = HWM
    # Reconnect fast after a scheduler restart, but back off when it stays away.
    sock.reconnect_ivl = 100
    sock.reconnect_ivl_max = 2000
    if security is not None:
        security.apply(sock)
    if connect:
        sock.connect(address)
    return sock


class HandshakeWatch:
    """Watches a socket's handshakes, so that a refused key is reported instead of waited out.

    ZeroMQ retries a refused connection forever and silently; its monitor events are the only
    sign. A CURVE key the scheduler does not admit shows as HANDSHAKE_FAILED_AUTH; talking
    plain to a CURVE scheduler (or CURVE to a plain one) as HANDSHAKE_FAILED_PROTOCOL.
    """

    EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED
              | zmq.EVENT_DISCONNECTED)
    # A CURVE scheduler may reset a plain peer's connection before that peer has read why, which
    # then sees only disconnects: this many in a row without one handshake succeeding is a refusal.
    DISCONNECTS_BEFORE_HANDSHAKE = 3

    def __init__(self, sock: zmq.Socket, address: str, curve: bool) -> None:
        # A unique inproc name: pyzmq's default is derived from the file descriptor, which a new
        # socket reuses while the old monitor endpoint may still be registered.
        endpoint = f"inproc://ciopt-monitor-{next(_monitor_ids)}-{os.getpid()}"
        sock.monitor(endpoint, self.EVENTS)
        self.monitor = sock.context.socket(zmq.PAIR)
        self.monitor.linger = 0
        self.monitor.connect(endpoint)
        self.sock = sock
        self.address = address
        self.curve = curve
        self.failure: str | None = None
        self.connected = False
        self.disconnects = 0

    def poll(self) -> None:
        while self.monitor.poll(0):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected, self.failure, self.disconnects = True, None, 0
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                if not self.connected:
                    self.disconnects += 1
                    if self.disconnects >= self.DISCONNECTS_BEFORE_HANDSHAKE and self.failure is None:
                        self.failure = f"the scheduler at {self.address} closes every connection during the " \
                                       f"handshake: {self._hint()}"
                self.connected = False
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.failure = (f"the scheduler at {self.address} refused our CurveZMQ key "
                                "(it is not in the scheduler's --allow directory)")
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self.failure = f"the handshake with the scheduler at {self.address} failed: {self._hint()}"

    def _hint(self) -> str:
        if self.curve:
            return "our key is not on its allowlist, the --server-key is wrong, or it does not use CurveZMQ"
        return ("the scheduler requires CurveZMQ: give --curve-secret and --server-key "
                "(or $CIOPT_CURVE_SECRET and $CIOPT_SERVER_KEY)")

    @property
    def refused(self) -> bool:
        return self.failure is not None

    def close(self) -> None:
        if not self.sock.closed:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
        self.monitor.close(linger=0)


_monitor_ids = itertools.count()


class Channel:
    """A DEALER for request/reply with the scheduler, used by one thread at a time."""

    def __init__(self, ctx: zmq.Context, address: str, security: ClientSecurity | None = None,
                 idle_timeout_s: float = 30.0, watch: bool = False) -> None:
        self.address = address
        self.sock = dealer(ctx, address, security, connect=False)
        self.idle_timeout_s = idle_timeout_s
        # Watching starts before connecting: a refused first handshake may not be retried.
        self.watch = HandshakeWatch(self.sock, address, security is not None) if watch else None
        self.sock.connect(address)
        self._req = 0
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.sock.close(linger=0)

    def next_req(self) -> int:
        self._req += 1
        return self._req

    def send(self, msg_type: str, **fields: Any) -> None:
        frame = P.encode(msg_type, **fields)
        self.bytes_sent += len(frame)
        if self._batch is None:
            self.sock.send(frame, copy=len(frame) > 65536)
            return
        self._batch.append(frame)
        self._batch_bytes += len(frame)
        if self._batch_bytes >= P.CHUNK:
            # A ZeroMQ message is delivered whole: big uploads go out in several, in order.
            frames, self._batch, self._batch_bytes = self._batch, [], 0
            self.sock.send_multipart(frames, copy=False)

    def begin_batch(self) -> None:
        """Collect the next sends into one ZeroMQ message (one wake-up of each side instead of one
        per frame) until send_batch(). The scheduler handles the frames in order. Only for
        messages that expect no answer before the batch is sent (upload, submit, result)."""
        self._batch, self._batch_bytes = [], 0

    def send_batch(self) -> None:
        frames, self._batch = self._batch, None
        if frames:
            self.sock.send_multipart(frames, copy=False)

    def recv(self, timeout_s: float) -> dict[str, Any] | None:
        """The next valid message within timeout_s, or None. Invalid frames are logged and dropped."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 and not self.sock.poll(0):
                self._check_refused()
                return None
            if not self.sock.poll(max(0, int(left * 1000))):
                self._check_refused()
                continue
            frame = self.sock.recv(copy=True)
            self.bytes_received += len(frame)
            try:
                return P.decode(frame)
            except P.ProtocolError as e:
                log.warning("dropped a bad frame from the scheduler: %s", e)

    def _check_refused(self) -> None:
        if self.watch is not None:
            self.watch.poll()
            if self.watch.failure is not None:
                raise Refused(self.watch.failure)

    def wait_for(self, match: Callable[[dict[str, Any]], bool], what: str,
                 stray: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The next message `match` accepts; Unreachable after idle_timeout_s of silence."""
        while True:
            msg = self.recv(self.idle_timeout_s)
            if msg is None:
                raise Unreachable(f"no answer from the scheduler at {self.address} for {self.idle_timeout_s:g} s "
                                  f"(waiting for {what})")
            if match(msg):
                return msg
            if stray is not None:
                stray(msg)
            else:
                log.debug("ignored %s while waiting for %s", msg.get("type"), what)

    # -- blobs ------------------------------------------------------------------------------------

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Which of `digests` the scheduler's CAS lacks."""
        wanted = list(dict.fromkeys(digests))
        missing: list[Digest] = []
        for start in range(0, len(wanted), FIND_MISSING_BATCH):
            batch = wanted[start:start + FIND_MISSING_BATCH]
            req = self.next_req()
            self.send("find_missing", req=req, digests=[str(d) for d in batch])
            reply = self.wait_for(lambda m: m["type"] in ("missing", "error") and m.get("req") == req,
                                  "find_missing")
            if reply["type"] == "error":
                raise Unreachable(f"scheduler error: {reply['message']}")
            missing.extend(P.parse_digest(d) for d in reply["digests"])
        return missing

    def upload(self, source: Callable[[Digest], bytes | None], digests: Iterable[Digest],
               wait: bool = True) -> list[Digest]:
        """Send these blobs, read through `source` (Store.get, or a reader of local files); the ones
        that did not arrive intact, or that `source` could not provide.

        wait=False returns once the blobs are sent, without waiting for the acknowledgements: for
        an upload followed by a message the scheduler handles after it on this same connection
        (submit, result), which is refused there if a blob did not arrive intact. That saves a
        round trip per action. The late acknowledgements are dropped as stray replies.
        """
        req = self.next_req()
        sent: list[Digest] = []
        failed: list[Digest] = []
        for d in dict.fromkeys(digests):
            try:
                data = source(d)
            except (CorruptBlobError, OSError):
                data = None
            if data is None:
                failed.append(d)
                continue
            text = str(d)
            for off in range(0, max(len(data), 1), P.CHUNK):
                chunk = data[off:off + P.CHUNK]
                self.send("upload", req=req, digest=text, offset=off, data=chunk, last=off + P.CHUNK >= len(data),
                          ack=wait)
            sent.append(d)
        if not wait:
            return failed
        acks = 0
        while acks < len(sent):
            reply = self.wait_for(lambda m: m["type"] in ("missing", "error") and m.get("req") == req, "upload")
            if reply["type"] == "error":
                continue  # a malformed chunk; the blob shows up in the final missing check
            acks += 1
            failed.extend(P.parse_digest(x) for x in reply["digests"])
        return failed

    def download(self, digests: Iterable[Digest], tmp_dir: Path, digest_function: str
                 ) -> tuple[dict[Digest, bytes | Path], list[Digest]]:
        """Fetch these blobs: ({digest: bytes, or a temporary file for a multi-chunk blob}, failed).

        Every blob is re-hashed here and kept only if it matches the digest asked for; the caller
        owns (and removes) the temporary files. `failed`: the scheduler lacks them or sent them corrupted.
        """
        wanted = {str(d): d for d in digests}
        got: dict[Digest, bytes | Path] = {}
        failed: list[Digest] = []
        if not wanted:
            return got, failed
        req = self.next_req()
        self.send("download", req=req, digests=list(wanted))
        partial: dict[str, tuple[Path, Any]] = {}
        left = set(wanted)
        try:
            while left:
                msg = self.wait_for(lambda m: m["type"] == "blob" and m.get("req") == req, "download")
                key = msg["digest"]
                if key not in left:
                    continue
                expected = wanted[key]
                if not msg["found"]:
                    failed.append(expected)
                    left.discard(key)
                    continue
                if msg["offset"] == 0 and msg["last"] and key not in partial:
                    data = msg["data"]
                    if hash_bytes(data, digest_function) == expected:
                        got[expected] = data
                    else:
                        log.warning("blob %s arrived corrupted; dropped", key)
                        failed.append(expected)
                    left.discard(key)
                    continue
                if key not in partial:
                    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="blob.")
                    partial[key] = (Path(name), os.fdopen(fd, "wb"))
                path, f = partial[key]
                f.seek(msg["offset"])
                f.write(msg["data"])
                if not msg["last"]:
                    continue
                f.close()
                del partial[key]
                if hash_file(path, digest_function) == expected:
                    got[expected] = path
                else:
                    log.warning("blob %s arrived corrupted; dropped", key)
                    path.unlink(missing_ok=True)
                    failed.append(expected)
                left.discard(key)
        except BaseException:
            for item in got.values():
                if isinstance(item, Path):
                    item.unlink(missing_ok=True)
            raise
        finally:
            for path, f in partial.values():
                f.close()
                path.unlink(missing_ok=True)
        return got, failed


__all__ = ["Channel", "HandshakeWatch", "Refused", "Unreachable", "dealer"]
