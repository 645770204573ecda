"""A Workspace: the root, its configuration, its store, and the build/test/query entry points.

    ws = ciopt.Workspace(".")
    result = ws.build(["//pkg:target"])      # BuildResult; result.exit_code, result.to_json()
    result = ws.test(["//..."], flaky_attempts=2, junit=Path("junit.xml"))
    ws.query("rdeps(//..., //a:b)")          # list[Label]
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ciopt import Store, __version__
from ciopt.config import Config, load_config
from ciopt.graph.label import Label
from ciopt.graph.target_graph import TargetGraph
from ciopt.workspace_root import find_workspace_root

# The engine, analytics and analysis load only when a build runs: `ciopt graph`, `affected`
# and `query` start faster without them.
if TYPE_CHECKING:
    from ciopt.affected import AffectedResult
    from ciopt.exec.engine import ActionOutcome, Listener
    from ciopt.graph.action_graph import ActionGraph
    from ciopt.remote.client import RemoteExecutor

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

    @property
    def failed(self) -> list[ActionOutcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if any(o.status in ("failed", "skipped") for o in self.outcomes.values()) else EXIT_OK

    def counts(self) -> dict[str, int]:
        c = {"actions": len(self.outcomes), "executed": 0, "cached_local": 0, "cached_remote": 0, "failed": 0,
             "skipped": 0}
        for o in self.outcomes.values():
            c[o.status] = c.get(o.status, 0) + 1
        return c

    def test_counts(self) -> dict[str, int]:
        c = {"passed": 0, "failed": 0, "flaky": 0, "timeout": 0, "cached": 0, "not_run": 0}
        for label in self.tests:
            o = self.outcomes.get(label)
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
            },
        }
        if self.command == "test":
            tests = []
            for label in self.tests:
                o = self.outcomes.get(label)
                tests.append({
                    "label": str(label),
                    "outcome": o.test_outcome if o and o.test_outcome else "not_run",
                    "status": o.status if o else "skipped",
                    "cached": bool(o and o.status in ("cached_local", "cached_remote")),
                    "attempts": o.attempts if o else 0,
                    "duration_s": round(o.duration_s, 4) if o else 0.0,
                    "log": str(o.log) if o and o.log else None,
                })
            doc["tests"] = tests
            doc["summary"]["tests"] = self.test_counts()  # type: ignore[index]
        return doc


class Workspace:
    def __init__(self, path: str | os.PathLike[str] = ".", env: Mapping[str, str] = os.environ) -> None:
        self.root = find_workspace_root(Path(path))
        self.config: Config = load_config(self.root, env)
        self._store: Store | None = None

    @property
    def bypass(self) -> bool:
        return self.config.bypass

    @property
    def store(self) -> Store | None:
        """The local store; None under the emergency bypass (no cache is read or written)."""
        if self.config.bypass:
            return None
        if self._store is None:
            local = self.config.cache.local
            self._store = Store(local.path, max_size=local.max_size)
        return self._store

    def records_path(self) -> Path:
        return self.config.analytics.path

    def load(self) -> TargetGraph:
        return TargetGraph.load(self.root, self.store, source_roots=self.config.selection.source_roots)

    def package_of(self, cwd: Path) -> str | None:
        """The package a relative pattern typed in `cwd` refers to."""
        try:
            rel = Path(os.path.abspath(cwd)).relative_to(self.root)
        except ValueError:
            return None
        return "" if str(rel) == "." else rel.as_posix()

    def query(self, expr: str, cwd: Path | None = None) -> list[Label]:
        from ciopt.graph.query import run_query

        return run_query(self.load(), expr, self.package_of(cwd or Path.cwd()))

    def affected(self, base: str, head: str | None = None) -> AffectedResult:
        """Tests (and targets) a change from `base` to `head` (default: the working tree) can affect."""
        from ciopt.affected import compute_affected

        return compute_affected(self, base, head)

    def build(self, patterns: list[str], **kw: object) -> BuildResult:
        return self._run("build", patterns, **kw)  # type: ignore[arg-type]

    def test(self, patterns: list[str], **kw: object) -> BuildResult:
        return self._run("test", patterns, **kw)  # type: ignore[arg-type]

    def _run(self, command: str, patterns: list[str], *, jobs: int | None = None, keep_going: bool = False,
             flaky_attempts: int | None = None, listener: Listener | None = None, cwd: Path | None = None,
             on_loaded: "callable | None" = None, remote: str | None = None,
             warn: "callable | None" = None) -> BuildResult:
        from ciopt.analytics.records import ActionRecord, RecordWriter, critical_path
        from ciopt.exec.engine import Engine, EngineOptions
        from ciopt.graph.action_graph import ActionGraph, toolchain_fingerprint

        started = time.time()
        graph = self.load()
        matched = graph.expand(patterns, self.package_of(cwd or Path.cwd()))
        tests = graph.tests_of(matched) if command == "test" else []
        if command == "test":
            wanted = tests
        else:
            # `build` builds what tests need but does not run them.
            wanted = [l for l in matched if not graph.is_test(l) and graph.targets[l].kind != "test_suite"]
            wanted += [d for l in matched if graph.is_test(l) for d in graph.edges[l]]
        # Not cached: analysing 1,000 targets takes ~14 ms, no more than unpickling a cached result.
        actions = ActionGraph.analyze(graph, wanted)
        loading_s = time.time() - started
        if on_loaded is not None:
            on_loaded(graph, actions, wanted)
        jobs = jobs or self.config.execution.jobs or os.cpu_count() or 1
        attempts = flaky_attempts or self.config.execution.flaky_attempts
        digest = self.store.digest_function if self.store is not None else "blake3"
        toolchain = toolchain_fingerprint(graph.sources.digests)
        remote_executor = self._remote_executor(remote, actions, graph, toolchain, warn)
        engine = Engine(self.root, actions, graph.sources, self.store, toolchain,
                        EngineOptions(jobs=jobs, keep_going=keep_going, flaky_attempts=attempts, digest=digest),
                        listener, executor=remote_executor)
        if remote_executor is not None:
            remote_executor.stop = engine._stop  # Ctrl-C also ends the waits for remote results
        records = RecordWriter(self.records_path())
        invocation = records.begin(command, list(patterns), self.root, jobs, self.bypass,
                                   remote_executor.address if remote_executor else None, started_at=started)
        outcomes: dict[Label, ActionOutcome] = {}
        try:
            outcomes = engine.run(wanted)
        finally:
            if remote_executor is not None:
                remote_executor.close()
            result = BuildResult(command, matched, outcomes or engine.outcomes, tests, self.bypass,
                                 self.config.bypass_reason, started, time.time(), loading_s,
                                 (graph.evaluated, graph.cached))
            depth = actions.critical_path_lengths()
            on_critical_path = set(critical_path(
                {str(l): o.duration_s for l, o in result.outcomes.items()},
                {str(l): [str(d) for d in actions.actions[l].deps if d in result.outcomes]
                 for l in result.outcomes}))
            for o in result.outcomes.values():
                records.action(invocation, ActionRecord(
                    label=str(o.label), status=o.status, mnemonic=o.mnemonic, key=o.key, executor=o.executor or None,
                    started_at=o.started_at or None, finished_at=o.finished_at or None, exit_code=o.exit_code,
                    input_bytes=o.input_bytes, output_bytes=o.output_bytes, input_files=o.input_files,
                    output_files=len(o.outputs), attempts=max(o.attempts, 1), test_outcome=o.test_outcome,
                    depth=depth.get(o.label), message=o.message or None,
                    critical_path=str(o.label) in on_critical_path,
                ))
            records.finish(invocation, result.exit_code if outcomes else 130)
            records.prune(self.config.analytics.retention_days)
            records.close()
        return result

    def _remote_executor(self, address: str | None, actions: ActionGraph, graph: TargetGraph, toolchain: str,
                         warn: "callable | None") -> "RemoteExecutor | None":
        """The remote executor for `--remote ADDR` (or remote_execution in config); None = run locally."""
        rx = self.config.remote_execution
        address = address or (rx.scheduler if self.config.use_remote_execution else None)
        if not address:
            return None
        from ciopt.exec.engine import OUT_DIR
        from ciopt.remote.client import open_remote_executor

        # The source files actions read, so the client can ask the scheduler about all of them at once.
        digests = graph.sources.digests
        sources = {digests[p]: self.root / p for a in actions.actions.values() for p in a.inputs
                   if p not in actions.producers and p in digests}
        return open_remote_executor(
            address, self.store, self.root / OUT_DIR, toolchain, fallback_to_local=rx.fallback_to_local,
            heartbeat_s=rx.heartbeat_s, heartbeat_timeout_s=rx.heartbeat_timeout_s,
            priorities=actions.critical_path_lengths(), warn=warn or (lambda m: None), sources=sources)


__all__ = ["BuildResult", "Workspace"]
