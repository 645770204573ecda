"""BuildResult: what one `ciopt build` / `ciopt test` invocation did, and its JSON report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ciopt import __version__
from ciopt.graph.label import Label

if TYPE_CHECKING:
    from ciopt.exec.engine import ActionOutcome
    from ciopt.exec.python_env import PythonEnv

EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class BuildResult:
    command: str  # build | test
    targets: list[Label]
    outcomes: dict[Label, ActionOutcome]
    tests: list[Label]
    bypass: bool
    bypass_reason: str | None
    started_at: float
    finished_at: float
    loading_s: float
    loaded_build_files: tuple[int, int]  # (evaluated, from cache)
    notes: list[str] = field(default_factory=list)
    test_files: dict[Label, tuple[str, ...]] = field(default_factory=dict)  # py_test -> its test files
    python: PythonEnv | None = None  # the project interpreter Python actions ran with
    selection: dict[str, object] | None = None  # {"base", "source", "all", "affected", "unaffected"}
    remote_cache: dict[str, object] | None = None  # the remote tier's figures (cache/tiered.py TierStats)

    @property
    def failed(self) -> list[ActionOutcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if any(o.status in ("failed", "skipped") for o in self.outcomes.values()) else EXIT_OK

    def counts(self) -> dict[str, int]:
        c = {"actions": len(self.outcomes), "executed": 0, "cached_local": 0, "cached_remote": 0, "failed": 0,
             "skipped": 0, "skipped_unaffected": 0}
        for o in self.outcomes.values():
            c[o.status] = c.get(o.status, 0) + 1
        return c

    def test_counts(self) -> dict[str, int]:
        c = {"passed": 0, "failed": 0, "flaky": 0, "timeout": 0, "cached": 0, "not_run": 0, "skipped_unaffected": 0}
        for label in self.tests:
            o = self.outcomes.get(label)
            if o is not None and o.status == "skipped_unaffected":
                c["skipped_unaffected"] += 1
                continue
            if o is None or o.test_outcome is None:
                c["not_run"] += 1
                continue
            c[o.test_outcome] += 1
            if o.status in ("cached_local", "cached_remote"):
                c["cached"] += 1
        return c

    def to_json(self) -> dict[str, object]:
        actions = []
        for label in sorted(self.outcomes):
            o = self.outcomes[label]
            actions.append({
                "label": str(label), "mnemonic": o.mnemonic, "key": o.key, "status": o.status,
                "executor": o.executor or None, "duration_s": round(o.duration_s, 4),
                "exit_code": o.exit_code, "message": o.message or None,
                "outputs": sorted(o.outputs),
            })
        doc: dict[str, object] = {
            "command": self.command,
            "targets": [str(t) for t in self.targets],
            "actions": actions,
            "summary": {
                **self.counts(),
                "exit_code": self.exit_code,
                "duration_s": round(self.finished_at - self.started_at, 4),
                "loading_s": round(self.loading_s, 4),
                "bypass": self.bypass,
                "bypass_reason": self.bypass_reason,
                "ciopt_version": __version__,
                "python": self.python.to_json() if self.python is not None else None,
                "selection": self.selection,
                "remote_cache": self.remote_cache,
                "notes": self.notes,
            },
        }
        if self.command == "test":
            tests = []
            for label in self.tests:
                o = self.outcomes.get(label)
                unaffected = bool(o and o.status == "skipped_unaffected")
                tests.append({
                    "label": str(label),
                    "files": list(self.test_files.get(label, ())),
                    # The one test file of a py_test (the usual case; None for sh_test or several srcs).
                    "file": files[0] if len(files := self.test_files.get(label, ())) == 1 else None,
                    "outcome": ("skipped_unaffected" if unaffected else
                                o.test_outcome if o and o.test_outcome else "not_run"),
                    "status": o.status if o else "skipped",
                    "cached": bool(o and o.status in ("cached_local", "cached_remote")),
                    "attempts": o.attempts if o else 0,
                    "duration_s": round(o.duration_s, 4) if o else 0.0,
                    "log": str(o.log) if o and o.log else None,
                    "message": (o.message or None) if o else None,
                    "notes": list(o.notes) if o else [],
                    "cases": o.cases if o else None,
                })
            doc["tests"] = tests
            doc["summary"]["tests"] = self.test_counts()  # type: ignore[index]
        return doc


__all__ = ["EXIT_FAILED", "EXIT_OK", "BuildResult"]
