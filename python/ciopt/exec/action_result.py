"""ActionResult: what running an action produced, as stored in the ActionCache.

Encoded with msgpack (compact, language-neutral, no code execution on decode) so remote
executors and shared caches can exchange it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from ciopt import Digest

FORMAT_VERSION = 1


@dataclass(frozen=True)
class OutputFile:
    path: str  # exec-root-relative
    digest: Digest
    is_executable: bool


@dataclass(frozen=True)
class ActionResult:
    exit_code: int
    outputs: tuple[OutputFile, ...]
    stdout: Digest | None
    stderr: Digest | None
    started_at: float
    finished_at: float
    executor: str
    # For tests: passed | failed | flaky | timeout; None for build actions.
    test_outcome: str | None = None
    attempts: int = 1
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at

    def encode(self) -> bytes:
        return msgpack.packb({
            "v": FORMAT_VERSION,
            "exit_code": self.exit_code,
            "outputs": [[o.path, str(o.digest), o.is_executable] for o in self.outputs],
            "stdout": str(self.stdout) if self.stdout else None,
            "stderr": str(self.stderr) if self.stderr else None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "executor": self.executor,
            "test_outcome": self.test_outcome,
            "attempts": self.attempts,
            "extra": self.extra,
        })

    @classmethod
    def decode(cls, raw: bytes) -> ActionResult | None:
        """None for anything this version cannot read (treated as a cache miss)."""
        try:
            d = msgpack.unpackb(raw)
            if not isinstance(d, dict) or d.get("v") != FORMAT_VERSION:
                return None
            return cls(
                exit_code=d["exit_code"],
                outputs=tuple(OutputFile(p, Digest.parse(dg), bool(x)) for p, dg, x in d["outputs"]),
                stdout=Digest.parse(d["stdout"]) if d["stdout"] else None,
                stderr=Digest.parse(d["stderr"]) if d["stderr"] else None,
                started_at=d["started_at"],
                finished_at=d["finished_at"],
                executor=d["executor"],
                test_outcome=d.get("test_outcome"),
                attempts=d.get("attempts", 1),
                extra=d.get("extra") or {},
            )
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None
