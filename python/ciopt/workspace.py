"""A Workspace: the root, its configuration, its store, and the build/test/query entry points.

    ws = ciopt.Workspace(".")
    result = ws.build(["//pkg:target"])      # BuildResult; result.exit_code, result.to_json()
    result = ws.test(["//..."], flaky_attempts=2, junit=Path("junit.xml"))
    ws.query("rdeps(//..., //a:b)")          # list[Label]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ciopt import Store, StoreError
from ciopt.exec.build_result import BuildResult
from ciopt.config import Config, load_config
from ciopt.errors import UserError
from ciopt.graph.label import Label
from ciopt.graph.target_graph import TargetGraph, scan_sources
from ciopt.own_outputs import OwnOutputs, mark_ignored
from ciopt.workspace_root import find_workspace_root

# The engine, analytics and analysis load only when a build runs: `ciopt graph`, `affected`
# and `query` start faster without them.
if TYPE_CHECKING:
    from ciopt.affected import AffectedResult
    from ciopt.cache.tiered import RemoteTier
    from ciopt.exec.python_env import PythonEnv
    from ciopt.exec.engine import ActionOutcome, Listener
    from ciopt.graph.action_graph import ActionGraph, Toolchain
    from ciopt.remote.client import RemoteExecutor



class Workspace:
    def __init__(self, path: str | os.PathLike[str] = ".", env: Mapping[str, str] = os.environ) -> None:
        self.root = find_workspace_root(Path(path))
        self.config: Config = load_config(self.root, env)
        self._env = env
        self._store: Store | None = None
        self._python: PythonEnv | None = None

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
            self._store = self._open_store(Path(local.path), local.max_size)
            if len(self.own_outputs.dirs) > 1:  # the store lives inside the workspace
                mark_ignored(Path(local.path))
        return self._store

    def _open_store(self, path: Path, max_size: int) -> Store:
        """The local store; one that cannot be opened (corrupt, another version, unreadable) is
        moved aside to `<path>.broken-<time>` and recreated: a cache is never why a build fails,
        unless `degradation: fail` says so."""
        try:
            return Store(path, max_size=max_size)
        except StoreError as e:
            if self.config.degradation == "fail":
                raise UserError(f"cache.local.path: {e} (degradation: fail)") from None
            broken = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(path, broken)
            except OSError as move:
                raise UserError(f"cache.local.path: {e}; moving it aside failed too: {move.strerror or move}; "
                                "remove it, or run with CIOPT_DISABLE=1") from None
            sys.stderr.write(f"ciopt: warning: the local store could not be opened ({e}); moved it aside to "
                             f"{broken} and started an empty one\n")
            return Store(path, max_size=max_size)

    @property
    def own_outputs(self) -> OwnOutputs:
        """ciopt-out/ and an in-workspace store: never sources, never changes."""
        return OwnOutputs.of(self.root, self.config.cache.local.path)

    def python_env(self) -> PythonEnv:
        """The project's interpreter (exec/python_env.py); InterpreterError when it cannot run."""
        if self._python is None:
            from ciopt.exec.python_env import resolve_python_env

            configured_at = self.config.sources.get("python.interpreter")
            cache_dir = None if self.config.bypass else Path(self.config.cache.local.path)
            self._python = resolve_python_env(self.root, self.config.python.interpreter, configured_at, cache_dir,
                                              self._env)
        return self._python

    def records_path(self) -> Path:
        return self.config.analytics.path

    def toolchain(self, graph: TargetGraph, python: PythonEnv | None) -> Toolchain:
        """The toolchain part of every ActionKey of a build of `graph`: the platform, the
        lockfiles among its sources and, with `python` (a build that runs py_tests), the project
        interpreter's fingerprint, its path relative to the workspace root when it lies inside;
        without, the version of the interpreter running ciopt. `ciopt explain` must use the same,
        or every key it compares would differ."""
        from ciopt.graph.action_graph import toolchain_fingerprint

        return toolchain_fingerprint(graph.sources.digests, python.fingerprint(self.root) if python else None)

    def load(self) -> TargetGraph:
        store = self.store
        return TargetGraph.load(self.root, store, scan_sources(self.root, store, self.own_outputs),
                                source_roots=self.config.selection.source_roots, infer=_infer)

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

        return compute_affected(self.root, self.config, self.store, self.own_outputs, base, head)

    def build(self, patterns: list[str], **kw: object) -> BuildResult:
        return self._run("build", patterns, **kw)  # type: ignore[arg-type]

    def test(self, patterns: list[str], **kw: object) -> BuildResult:
        return self._run("test", patterns, **kw)  # type: ignore[arg-type]

    def _run(self, command: str, patterns: list[str], *, jobs: int | None = None, keep_going: bool = False,
             flaky_attempts: int | None = None, listener: Listener | None = None, cwd: Path | None = None,
             on_loaded: "callable | None" = None, remote: str | None = None,
             warn: "callable | None" = None, batch: bool | None = None, pytest_args: list[str] | None = None,
             affected_since: str | None = None) -> BuildResult:
        from ciopt.analytics.publish import finish_invocation
        from ciopt.analytics.records import ActionRecord, RecordWriter, critical_path, last_durations
        from ciopt.exec.engine import ActionOutcome, Engine, EngineOptions
        from ciopt.graph.action_graph import ActionGraph, pytest_files

        started = time.time()
        graph = self.load()
        matched = graph.expand(patterns, self.package_of(cwd or Path.cwd()))
        tests = graph.tests_of(matched) if command == "test" else []
        notes: list[str] = []
        unaffected: list[Label] = []
        selection = None
        if command == "test":
            selection, unaffected = self._select(graph, tests, affected_since, notes)
            skip = set(unaffected)
            wanted = [t for t in tests if t not in skip]
        else:
            # `build` builds what tests need but does not run them.
            wanted = [l for l in matched if not graph.is_test(l) and graph.targets[l].kind != "test_suite"]
            wanted += [d for l in matched if graph.is_test(l) for d in graph.edges[l]]
        # Not cached: analysing 1,000 targets takes ~14 ms, no more than unpickling a cached result.
        actions = ActionGraph.analyze(graph, wanted, pytest_args or ())
        python = self.python_env() if any(a.mnemonic == "PyTest" for a in actions.actions.values()) else None
        loading_s = time.time() - started
        if on_loaded is not None:
            on_loaded(graph, actions, wanted)
        jobs = jobs or self.config.execution.jobs or os.cpu_count() or 1
        attempts = flaky_attempts or self.config.execution.flaky_attempts
        digest = self.store.digest_function if self.store is not None else "blake3"
        toolchain = self.toolchain(graph, python)
        remote_executor = self._remote_executor(remote, actions, graph, toolchain, warn, python)
        ex = self.config.execution
        durations = last_durations(self.records_path(), "PyTest") if python is not None else {}
        remote_cache = self.open_remote_tier(warn)
        engine = Engine(self.root, actions, graph.sources, self.store, toolchain,
                        EngineOptions(jobs=jobs, keep_going=keep_going, flaky_attempts=attempts, digest=digest,
                                      batch=ex.batch if batch is None else batch,
                                      batch_max_files=ex.batch_max_files, durations=durations),
                        listener, executor=remote_executor, python=python, remote_cache=remote_cache)
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
            if remote_cache is not None:
                from ciopt.cache.tiered import record_history

                # Flushes queued uploads, within cache.remote.flush_timeout_s; the connections stay
                # open for the record push below (analytics/publish.py), closed after it.
                remote_cache.flush()
                record_history(Path(self.config.cache.local.path), remote_cache.backend.name, remote_cache.stats)
            final = dict(outcomes or engine.outcomes)
            reason = f"not affected by the changes since {selection['base']}" if selection else ""
            for label in unaffected:
                final[label] = ActionOutcome(label, "PyTest" if graph.targets[label].kind == "py_test" else "Test",
                                             "skipped_unaffected", message=reason)
            result = BuildResult(command, matched, final, tests, self.bypass,
                                 self.config.bypass_reason, started, time.time(), loading_s,
                                 (graph.evaluated, graph.cached), notes=notes, python=python, selection=selection,
                                 remote_cache=remote_cache.stats.to_json() if remote_cache is not None else None,
                                 test_files={l: (pytest_files(actions.actions[l]) if l in actions.actions else
                                                 tuple(r.path for r in graph.targets[l].attrs.get("srcs", ())))
                                             for l in tests if graph.targets[l].kind == "py_test"})
            depth = actions.critical_path_lengths()
            on_critical_path = set(critical_path(
                {str(l): o.duration_s for l, o in result.outcomes.items()},
                {str(l): [str(d) for d in actions.actions[l].deps if d in result.outcomes]
                 for l in result.outcomes if l in actions.actions}))
            for o in result.outcomes.values():
                records.action(invocation, ActionRecord(
                    # The records schema predates selection: an unaffected test is "skipped" there, with its reason.
                    label=str(o.label), status="skipped" if o.status == "skipped_unaffected" else o.status,
                    mnemonic=o.mnemonic, key=o.key, executor=o.executor or None,
                    started_at=o.started_at or None, finished_at=o.finished_at or None, exit_code=o.exit_code,
                    input_bytes=o.input_bytes, output_bytes=o.output_bytes, input_files=o.input_files,
                    output_files=len(o.outputs), attempts=max(o.attempts, 1), test_outcome=o.test_outcome,
                    depth=depth.get(o.label), message=o.message or None,
                    critical_path=str(o.label) in on_critical_path,
                ))
            records.finish(invocation, result.exit_code if outcomes else 130)
            records.prune(self.config.analytics.retention_days)
            records.close()
            try:
                finish_invocation(self.config, self.records_path(), invocation, result,  # analytics/publish.py
                                  tier=remote_cache)
            finally:
                if remote_cache is not None:
                    remote_cache.close()
        return result

    def open_remote_tier(self, warn: "callable | None") -> RemoteTier | None:
        """The shared cache tier (cache.remote.*), or None: not configured, bypassed, or unusable
        (then with a warning, or an error under `degradation: fail`)."""
        rc = self.config.cache.remote
        store = self.store
        if not self.config.use_remote_cache or store is None:
            return None
        from ciopt.cache.backend import BackendError
        from ciopt.cache.shards import connect
        from ciopt.cache.signing import Signer
        from ciopt.cache.tiered import RemoteCacheFailed, RemoteTier

        say = warn or (lambda m: sys.stderr.write(f"ciopt: warning: {m}\n"))
        signer = None
        if rc.signing_key_env:
            secret = self._env.get(rc.signing_key_env, "")
            if len(secret.encode()) < 16:
                problem = (f"cache.remote.signing_key_env: ${rc.signing_key_env} is unset or shorter than 16 bytes, "
                           "so remote entries cannot be verified")
                if self.config.degradation == "fail":
                    raise RemoteCacheFailed(problem)
                say(problem + "; the remote cache is not used")
                return None
            signer = Signer(secret.encode())
        try:
            backend = connect(rc.urls, rc.timeout_s)
        except ValueError as e:  # a URL that cannot work (a password in it): configuration, exit 2
            raise UserError(f"cache.remote.url: {e}") from None
        except BackendError as e:
            if self.config.degradation == "fail":
                raise RemoteCacheFailed(f"remote cache: {e} (degradation: fail)") from None
            say(f"remote cache unavailable, continuing with the local cache only: {e}")
            return None
        return RemoteTier(backend, store, read_only=rc.read_only, signer=signer, degradation=self.config.degradation,
                          warn=say, flush_timeout_s=rc.flush_timeout_s)

    def _select(self, graph: TargetGraph, tests: list[Label], affected_since: str | None,
                notes: list[str]) -> tuple[dict[str, object] | None, list[Label]]:
        """(what selection did, the tests it proved unaffected) for `ciopt test`.

        `--affected-since REV`, else `selection.enabled` with the base from ci/base.py. Every
        doubt runs the tests: no base, the emergency bypass, a global input changed."""
        if self.bypass:
            if affected_since:
                notes.append("emergency bypass: --affected-since ignored, every test runs")
            return None, []
        if affected_since:
            base, source = affected_since, "--affected-since"
        elif self.config.use_selection:
            from ciopt.ci.base import find_base

            found = find_base(self.root, self.config.selection.base, self._env)
            if found.commit is None:
                notes.append(f"selection: {found.source}; every test runs")
                return {"base": None, "source": found.source, "all": True, "affected": len(tests),
                        "unaffected": 0}, []
            base, source = found.commit, found.source
        else:
            return None, []
        result = self.affected(base)
        doc: dict[str, object] = {"base": base, "source": source, "all": result.all, "affected": len(tests),
                                  "unaffected": 0, "changed_files": len(result.changed_files)}
        if result.all:
            why = "; ".join(result.global_inputs_changed) or "selection disabled"
            notes.append(f"selection: a global input changed ({why}); every test runs")
            return doc, []
        keep_labels = set(result.test_targets)
        keep_files = set(result.test_files)
        unaffected = []
        for label in tests:
            if str(label) in keep_labels:
                continue
            srcs = [ref.path for ref in graph.targets[label].attrs.get("srcs", ())]
            if any(p in keep_files for p in srcs):
                continue
            unaffected.append(label)
        doc["affected"] = len(tests) - len(unaffected)
        doc["unaffected"] = len(unaffected)
        return doc, unaffected

    def _remote_executor(self, address: str | None, actions: ActionGraph, graph: TargetGraph, toolchain: Toolchain,
                         warn: "callable | None", python: PythonEnv | None = None) -> "RemoteExecutor | None":
        """The remote executor for `--remote ADDR` (or remote_execution in config); None = run locally."""
        rx = self.config.remote_execution
        address = address or (rx.scheduler if self.config.use_remote_execution else None)
        if not address:
            return None
        from ciopt.own_outputs import OUT_DIR
        from ciopt.remote.client import open_remote_executor

        # The source files actions read, so the client can ask the scheduler about all of them at once.
        digests = graph.sources.digests
        sources = {digests[p]: self.root / p for a in actions.actions.values() for p in a.inputs
                   if p not in actions.producers and p in digests}
        return open_remote_executor(
            address, self.store, self.root / OUT_DIR, toolchain, fallback_to_local=rx.fallback_to_local,
            heartbeat_s=rx.heartbeat_s, heartbeat_timeout_s=rx.heartbeat_timeout_s,
            priorities=actions.critical_path_lengths(), warn=warn or (lambda m: None), sources=sources,
            python=python)


def _infer(*args: object) -> object:
    # Imported on first use: inference (tree-sitter, msgpack) is not needed to print --help.
    from ciopt.infer.graph import infer_targets_and_deps

    return infer_targets_and_deps(*args)  # type: ignore[arg-type]


__all__ = ["BuildResult", "Workspace"]
