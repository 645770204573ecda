"""The remote execution wire protocol: one msgpack map per ZeroMQ frame.

Every frame is a map with `v` (the protocol version) and `type`; the fields of each type are
listed in MESSAGES and documented in docs/protocol.md. Receivers call `decode`, which checks
the version, the type and the type of every known field, and raises ProtocolError for anything
else: the caller logs that and drops the frame, so a confused or hostile peer can waste a frame
but never crash a daemon. Unknown *extra* fields are accepted (and ignored) so that a newer peer
can add optional fields without a version bump.

Actions travel as plain maps (`action_to_wire` / `action_from_wire`); paths in them are checked
here to be exec-root-relative, because an executor writes inputs to those paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack

from ciopt import Digest
from ciopt.exec.action_result import OutputFile
from ciopt.graph.action_graph import Action
from ciopt.graph.label import Label

VERSION = 1
# The largest frame a daemon accepts (libzmq's ZMQ_MAXMSGSIZE is set to this too, so a bigger
# frame disconnects its sender before it is buffered). Blobs larger than CHUNK travel in chunks.
MAX_FRAME = 8 * 1024 * 1024
CHUNK = 2 * 1024 * 1024
# Caps on list lengths inside one frame: a frame under MAX_FRAME can still hold a million tiny
# items, and the scheduler answers each of them.
MAX_DIGESTS = 100_000

_num = (int, float)
_opt_str = (str, type(None))
_opt_num = (int, float, type(None))

# type -> ({required field: accepted types}, {optional field: accepted types})
MESSAGES: dict[str, tuple[dict[str, tuple[type, ...] | type], dict[str, tuple[type, ...] | type]]] = {
    # executor/client -> scheduler: who I am; scheduler -> peer: welcome with the heartbeat settings.
    "hello": ({"role": str}, {"id": str, "caps": dict, "slots": int, "cost": _num, "running": list,
                              "heartbeat_s": _num, "heartbeat_timeout_s": _num, "scheduler": str,
                              "draining": bool, "digest": str}),
    # executor -> scheduler: alive, what it runs; client -> scheduler: which submissions it still waits
    # for; scheduler -> peer: the answer, with `unknown` ids it has no record of.
    "heartbeat": ({}, {"id": str, "running": list, "draining": bool, "pending": list, "unknown": list,
                       "role": str}),
    # client -> scheduler: run this action.
    "submit": ({"id": str, "action": dict}, {"requires": dict, "priority": int, "key": _opt_str,
                                             "cacheable": bool}),
    # scheduler -> executor: run this action (id is the submission id).
    "assign": ({"id": str, "action": dict}, {"key": _opt_str, "cacheable": bool, "attempt": int}),
    # any -> scheduler: which of these digests do you lack?
    "find_missing": ({"req": int, "digests": list}, {}),
    # scheduler -> peer: the answer to find_missing, or to the last chunk of an upload.
    "missing": ({"req": int, "digests": list}, {}),
    # any -> scheduler: blob bytes (one chunk of them, at `offset`). ack=False: answer the last chunk
    # only if the blob did not arrive intact (the uploader does not wait).
    "upload": ({"req": int, "digest": str, "offset": int, "data": bytes, "last": bool}, {"ack": bool}),
    # any -> scheduler: send me these blobs.
    "download": ({"req": int, "digests": list}, {}),
    # scheduler -> peer: one chunk of a requested blob (found=False: the scheduler lacks it).
    "blob": ({"req": int, "digest": str, "offset": int, "data": bytes, "last": bool, "found": bool}, {}),
    # executor -> scheduler -> client: how an action ended.
    "result": ({"id": str, "exit_code": int}, {"executor": str, "timed_out": bool, "started_at": _num,
                                                "finished_at": _num, "outputs": list, "log": _opt_str,
                                                "error": _opt_str, "cached": bool, "key": _opt_str,
                                                "cacheable": bool, "attempt": int}),
    # client -> scheduler, scheduler -> executor: stop this action.
    "cancel": ({"id": str}, {}),
    # client -> scheduler: report; scheduler -> client: the report in `status`.
    "status": ({}, {"req": int, "status": dict}),
    # scheduler -> peer: something about a request failed (`id`: the submission concerned).
    "error": ({"code": str, "message": str}, {"id": _opt_str, "req": int}),
    # executor -> scheduler: leaving (after a drain); client -> scheduler: done, cancel what is left.
    "bye": ({}, {"id": str, "role": str}),
}

# Error codes the scheduler sends in `error` messages.
E_UNSATISFIABLE = "unsatisfiable"  # no registered executor can ever run the action
E_RETRIES = "retries_exhausted"  # its executors died more often than remote_execution.retries
E_MISSING_INPUTS = "missing_inputs"  # submit before the inputs were uploaded
E_UNKNOWN_EXECUTOR = "unknown_executor"  # heartbeat from an executor that never said hello (restart)
E_BAD_REQUEST = "bad_request"  # a well-formed frame whose content makes no sense


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


def encode(msg_type: str, **fields: Any) -> bytes:
    """One frame. The caller's fields are trusted (they are ours); `decode` checks the far side's."""
    fields["v"] = VERSION
    fields["type"] = msg_type
    frame = msgpack.packb(fields, use_bin_type=True)
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"{msg_type} frame of {len(frame)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    return frame


def decode(frame: bytes) -> dict[str, Any]:
    """The message in `frame`, checked against MESSAGES; ProtocolError otherwise."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds MAX_FRAME ({MAX_FRAME})")
    try:
        # unpackb bounds every string/array/map length by the frame's own length, so a small
        # hostile frame cannot announce a huge allocation.
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable frame ({type(e).__name__}: {e})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is a {type(msg).__name__}, not a map")
    version = msg.get("v")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r}, this side speaks {VERSION}")
    msg_type = msg.get("type")
    spec = MESSAGES.get(msg_type) if isinstance(msg_type, str) else None
    if spec is None:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    required, optional = spec
    for name, types in required.items():
        if name not in msg:
            raise ProtocolError(f"{msg_type}: missing field {name!r}")
        if not isinstance(msg[name], types) or (isinstance(msg[name], bool) and types in (int, _num)):
            raise ProtocolError(f"{msg_type}: field {name!r} has type {type(msg[name]).__name__}")
    for name, types in optional.items():
        if name in msg and not isinstance(msg[name], types):
            raise ProtocolError(f"{msg_type}: field {name!r} has type {type(msg[name]).__name__}")
    for name in ("digests", "running", "pending", "unknown"):
        value = msg.get(name)
        if value is not None and (len(value) > MAX_DIGESTS or not all(isinstance(x, str) for x in value)):
            raise ProtocolError(f"{msg_type}: field {name!r} must be a list of at most {MAX_DIGESTS} strings")
    return msg


def parse_digest(text: object) -> Digest:
    if not isinstance(text, str):
        raise ProtocolError(f"digest must be a string, got {type(text).__name__}")
    try:
        return Digest.parse(text)
    except ValueError as e:
        raise ProtocolError(str(e)) from None


def check_key(key: object) -> str | None:
    """An ActionKey as sent (64 lowercase hex digits), or None for no key."""
    if key is None:
        return None
    if not isinstance(key, str) or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ProtocolError(f"ActionKey must be 64 lowercase hex digits, got {key!r:.80}")
    return key


def check_relpath(path: object) -> str:
    """An exec-root-relative path that cannot climb out of the exec root."""
    if not isinstance(path, str) or not path or "\0" in path or path.startswith("/") or "\\" in path:
        raise ProtocolError(f"path {path!r} is not exec-root-relative")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ProtocolError(f"path {path!r} has an empty, '.' or '..' segment")
    return path


# -- actions on the wire ---------------------------------------------------------------------------

def action_to_wire(action: Action, inputs: list[tuple[str, Digest, bool]]) -> dict[str, Any]:
    return {
        "label": str(action.label),
        "mnemonic": action.mnemonic,
        "argv": list(action.argv),
        "env": [list(kv) for kv in action.env],
        "inputs": [[p, str(d), x] for p, d, x in inputs],
        "outputs": list(action.outputs),
        "timeout_s": action.timeout_s,
        "is_test": action.is_test,
        "flaky": action.flaky,
        "tags": list(action.tags),
    }


def requires_to_wire(action: Action) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in action.requires}


def action_from_wire(d: Mapping[str, Any], requires: Mapping[str, Any] | None = None
                     ) -> tuple[Action, list[tuple[str, Digest, bool]]]:
    """The Action and its (path, digest, executable) inputs; ProtocolError when anything is off."""
    try:
        label = Label.parse(d["label"]) if isinstance(d["label"], str) else None
        if label is None:
            raise ProtocolError("action label must be a string")
        argv = d["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ProtocolError("action argv must be a non-empty list of strings")
        env = d.get("env", [])
        if not isinstance(env, list) or not all(isinstance(kv, list) and len(kv) == 2
                                                and all(isinstance(x, str) for x in kv) for kv in env):
            raise ProtocolError("action env must be a list of [name, value] strings")
        inputs = []
        for item in d.get("inputs", []):
            if not isinstance(item, list) or len(item) != 3:
                raise ProtocolError("action inputs must be [path, digest, executable] triples")
            inputs.append((check_relpath(item[0]), parse_digest(item[1]), bool(item[2])))
        outputs = d.get("outputs", [])
        if not isinstance(outputs, list):
            raise ProtocolError("action outputs must be a list")
        outputs = [check_relpath(o) for o in outputs]
        timeout = d.get("timeout_s")
        if timeout is not None and (not isinstance(timeout, _num) or isinstance(timeout, bool)
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ProtocolError("action timeout_s must be a positive number or null")
        tags = d.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ProtocolError("action tags must be a list of strings")
        mnemonic = d.get("mnemonic", "Action")
        if not isinstance(mnemonic, str):
            raise ProtocolError("action mnemonic must be a string")
        req = tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in (requires or {}).items()))
        action = Action(
            label=label, mnemonic=mnemonic, argv=tuple(argv), env=tuple(tuple(kv) for kv in env),  # type: ignore[misc]
            inputs=tuple(p for p, _, _ in inputs), outputs=tuple(outputs), deps=(), requires=req,
            timeout_s=float(timeout) if timeout is not None else None, is_test=bool(d.get("is_test", False)),
            flaky=bool(d.get("flaky", False)), tags=tuple(tags),
        )
        return action, inputs
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"bad action: {type(e).__name__}: {e}") from None


def outputs_to_wire(outputs: Mapping[str, OutputFile]) -> list[list[Any]]:
    return [[o.path, str(o.digest), o.is_executable] for o in outputs.values()]


def outputs_from_wire(items: object) -> dict[str, OutputFile]:
    if not isinstance(items, list):
        raise ProtocolError("result outputs must be a list")
    out: dict[str, OutputFile] = {}
    for item in items:
        if not isinstance(item, list) or len(item) != 3:
            raise ProtocolError("result outputs must be [path, digest, executable] triples")
        path = check_relpath(item[0])
        out[path] = OutputFile(path, parse_digest(item[1]), bool(item[2]))
    return out


__all__ = [
    "CHUNK", "MAX_DIGESTS", "MAX_FRAME", "MESSAGES", "VERSION", "ProtocolError",
    "action_from_wire", "action_to_wire", "check_key", "check_relpath", "decode", "encode", "outputs_from_wire",
    "outputs_to_wire", "parse_digest", "requires_to_wire",
]
