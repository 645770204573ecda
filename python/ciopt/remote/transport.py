"""Sockets and blob transfer shared by the executor daemon and the client.

A `Channel` is one DEALER socket used from one thread at a time for request/reply exchanges
with the scheduler: find_missing, upload, download (and, for the client, submit/result).
Requests carry a number (`req`) and replies are matched on it, so a late reply to an earlier,
abandoned request is dropped instead of being mistaken for the current one.

Blobs move in chunks of protocol.CHUNK bytes; every blob received is re-hashed by the local
Store on the way in and kept only if it matches the digest asked for, so a corrupt or lying
peer cannot plant wrong bytes under a digest.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ciopt import CorruptBlobError, Digest, Store
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


def dealer(ctx: zmq.Context, address: str, security: ClientSecurity | None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_FRAME)
    sock.sndhwm = sock.rcvhwm = HWM
    # Reconnect fast after a scheduler restart, but back off when it stays away.
    sock.reconnect_ivl = 100
    sock.reconnect_ivl_max = 2000
    if security is not None:
        security.apply(sock)
    sock.connect(address)
    return sock


class HandshakeWatch:
    """Watches a socket's handshakes so a refused CURVE key is reported instead of waited out."""

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED

    def __init__(self, sock: zmq.Socket) -> None:
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self.refused = False
        self.connected = False

    def poll(self) -> None:
        while self.monitor.poll(0):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected, self.refused = True, False
            elif event["event"] in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self.refused = True

    def close(self) -> None:
        self.monitor.close(linger=0)


class Channel:
    """A DEALER for request/reply with the scheduler, used by one thread at a time."""

    def __init__(self, ctx: zmq.Context, address: str, security: ClientSecurity | None = None,
                 idle_timeout_s: float = 30.0, watch: bool = False) -> None:
        self.address = address
        self.sock = dealer(ctx, address, security)
        self.idle_timeout_s = idle_timeout_s
        self.watch = HandshakeWatch(self.sock) if watch and security is not None else None
        self._req = 0
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
        self.sock.send(frame, copy=len(frame) > 65536)

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
            if self.watch.refused:
                raise Refused(f"the scheduler at {self.address} refused our CurveZMQ key "
                              "(it is not in the scheduler's --allow directory)")

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

    def upload(self, store: Store, digests: Iterable[Digest]) -> list[Digest]:
        """Send these blobs from `store`; the ones that did not arrive intact (or that we lack)."""
        req = self.next_req()
        sent: list[Digest] = []
        failed: list[Digest] = []
        for d in dict.fromkeys(digests):
            try:
                data = store.get(d)
            except CorruptBlobError:
                data = None
            if data is None:
                failed.append(d)
                continue
            text = str(d)
            for off in range(0, max(len(data), 1), P.CHUNK):
                chunk = data[off:off + P.CHUNK]
                self.send("upload", req=req, digest=text, offset=off, data=chunk, last=off + P.CHUNK >= len(data))
            sent.append(d)
        acks = 0
        while acks < len(sent):
            reply = self.wait_for(lambda m: m["type"] in ("missing", "error") and m.get("req") == req, "upload")
            if reply["type"] == "error":
                continue  # a malformed chunk; the blob shows up in the final missing check
            acks += 1
            failed.extend(P.parse_digest(x) for x in reply["digests"])
        return failed

    def download(self, store: Store, digests: Iterable[Digest], tmp_dir: Path) -> list[Digest]:
        """Fetch these blobs into `store`; the ones the scheduler lacks or sent corrupted."""
        wanted = {str(d): d for d in digests}
        if not wanted:
            return []
        req = self.next_req()
        self.send("download", req=req, digests=list(wanted))
        failed: list[Digest] = []
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
                    ok = store.put(msg["data"]) == expected
                else:
                    if key not in partial:
                        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="blob.")
                        partial[key] = (Path(name), os.fdopen(fd, "wb"))
                    path, f = partial[key]
                    f.seek(msg["offset"])
                    f.write(msg["data"])
                    if not msg["last"]:
                        continue
                    f.close()
                    ok = store.put_file(path) == expected
                    path.unlink(missing_ok=True)
                    del partial[key]
                if not ok:
                    log.warning("blob %s arrived corrupted; dropped", key)
                    failed.append(expected)
                left.discard(key)
        finally:
            for path, f in partial.values():
                f.close()
                path.unlink(missing_ok=True)
        return failed


__all__ = ["Channel", "HandshakeWatch", "Refused", "Unreachable", "dealer"]
