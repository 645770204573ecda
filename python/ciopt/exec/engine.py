"""The engine: walks the action graph in dependency order, longest chain first, and for each
action either reuses a cached result or runs it, then materializes outputs under ciopt-out/.

An action's key can only be computed once its inputs are known, and generated inputs are
known only when their producer has finished (or hit the cache), so keys are computed as the
walk reaches each action, as in Bazel's Skyframe.
"""

from __future__ import annotations

import fnmatch
import heapq
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ciopt import CorruptBlobError, Digest, Store, hash_bytes, hash_file, tree_digest
from ciopt.errors import UserError
from ciopt.exec.action_result import ActionResult, OutputFile
from ciopt.exec.local import ExecResult, Executor, InputFile, LocalExecutor, RunResult, kill_all
from ciopt.exec.write_behind import WriteBehind
from ciopt.exec.test_runner import FileResults, batchable, merge_reports, plan_batches
from ciopt.graph.action_graph import Action, ActionGraph, Toolchain, action_key, pytest_files
from ciopt.graph.label import Label
from ciopt.graph.target_graph import SourceTree
from ciopt.own_outputs import OUT_DIR, mark_ignored

if TYPE_CHECKING:
    from ciopt.cache.tiered import RemoteTier
    from ciopt.exec.python_env import PythonEnv

LOG_TAIL_LINES = 40


@dataclass
class ActionOutcome:
    label: Label
    mnemonic: str
    status: str  # executed | cached_local | cached_remote | failed | skipped | skipped_unaffected
    key: str | None = None
    executor: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int | None = None
    test_outcome: str | None = None  # passed | failed | flaky | timeout, tests only
    attempts: int = 0
    message: str = ""  # why it failed or was skipped
    log: Path | None = None  # test log / failure log under ciopt-out
    outputs: dict[str, OutputFile] = field(default_factory=dict)
    input_files: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    # Per-test results of a py_test (from the pytest plugin): [{"nodeid", "outcome", "duration_s"}].
    cases: list[dict[str, object]] | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "tests/x.py: no tests collected"

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


Listener = Callable[[str, Label, "ActionOutcome | None"], None]


@dataclass
class EngineOptions:
    jobs: int
    keep_going: bool = False
    flaky_attempts: int = 1
    digest: str = "blake3"
    batch: bool = True  # pack py_test files into few pytest processes (test_runner.py)
    batch_max_files: int = 200
    durations: dict[str, float] = field(default_factory=dict)  # label -> last run's seconds (balancing)


class Engine:
    def __init__(self, root: Path, actions: ActionGraph, sources: SourceTree, store: Store | None,
                 toolchain: Toolchain, options: EngineOptions, listener: Listener | None = None,
                 executor: Executor | None = None, python: PythonEnv | None = None,
                 remote_cache: RemoteTier | None = None) -> None:
        self.root = root
        self.ag = actions
        self.sources = sources
        self.store = store  # None: emergency bypass, no cache read or written
        self.toolchain = toolchain
        self.opts = options
        self.listener = listener or (lambda *_: None)
        self.out_root = root / OUT_DIR
        mark_ignored(self.out_root)  # git status stays clean in repositories that never heard of us
        self.outcomes: dict[Label, ActionOutcome] = {}
        self.local = LocalExecutor(self.out_root, options.digest, python)
        self.executor: Executor = executor or self.local
        self.writer = WriteBehind(store)
        # The shared cache behind the local store (cache/tiered.py); None when not configured.
        self.remote_cache = remote_cache if store is not None else None
        self._pending_outputs: list[OutputFile] = []
        # Small blobs of remote hits, verified, kept until the writer has stored them (this build).
        self._fetched: dict[Digest, bytes] = {}
        self._stop = threading.Event()
        self._python_files: tuple[str, ...] | None = None  # pytest's python_files, read on first batch
        self._keyed: dict[Label, tuple[list[tuple[str, Digest, bool]], str]] = {}  # keys computed ahead
        self._solo: set[Label] = set()  # tests to run alone: their batch died before they reported
        self._batch_seq = 0
        self._batch_lock = threading.Lock()
        self.python = python
        # Actions that missed the cache, with their inputs and key: their key parts are recorded
        # at the end (exec/key_record.py) so `ciopt explain` can tell what changed.
        self._missed: list[tuple[Action, list[tuple[str, Digest, bool]], str]] = []

    # -- scheduling ---------------------------------------------------------------

    def run(self, wanted: list[Label]) -> dict[Label, ActionOutcome]:
        needed = self._needed(wanted)
        priority = self.ag.critical_path_lengths()
        waiting = {l: set(self.ag.actions[l].deps) & needed for l in needed}
        dependents: dict[Label, list[Label]] = {l: [] for l in needed}
        for l in needed:
            for d in waiting[l]:
                dependents[d].append(l)
        ready: list[tuple[int, Label]] = [(-priority[l], l) for l in needed if not waiting[l]]
        heapq.heapify(ready)
        running: dict[Future[list[ActionOutcome]], list[Label]] = {}
        to_batch: list[tuple[Action, list[tuple[str, Digest, bool]], ActionOutcome]] = []
        failed_any = False

        def finish(label: Label, outcome: ActionOutcome) -> None:
            nonlocal failed_any
            if outcome.status == "requeue":
                # Its batch died before it reported: run it again, alone, to name the culprit.
                self._solo.add(label)
                heapq.heappush(ready, (-priority[label], label))
                return
            self.outcomes[label] = outcome
            self.listener("finish", label, outcome)
            if outcome.status in ("failed", "skipped"):
                failed_any = True
                self._skip_dependents(label, dependents)
                return
            for d in dependents[label]:
                waiting[d].discard(label)
                if not waiting[d] and d not in self.outcomes:
                    heapq.heappush(ready, (-priority[d], d))

        pool = ThreadPoolExecutor(max_workers=max(1, self.opts.jobs), thread_name_prefix="ciopt-action")
        try:
            while ready or running or to_batch:
                stopping = failed_any and not self.opts.keep_going
                # One slot per process: a batch is one, however many files it holds.
                while ready and len(running) < self.opts.jobs and not stopping:
                    _, label = heapq.heappop(ready)
                    if label in self.outcomes:
                        continue
                    if self.remote_cache is not None and label not in self._keyed:
                        self._prefetch([label, *(l for _, l in ready)])
                    action = self.ag.actions[label]
                    self.listener("start", label, None)
                    # Keys and cache lookups are cheap and need no thread: a no-op build never
                    # touches the pool. Only real executions are handed to it.
                    outcome, inputs = self._prepare(action)
                    if outcome.status != "pending":
                        finish(label, outcome)
                        continue
                    self._missed.append((action, inputs, outcome.key))
                    # An execution reads its inputs from ciopt-out/: restore any pending outputs first.
                    self._flush_materialize()
                    if self._local_tests(action):
                        if self.opts.batch and batchable(action) and label not in self._solo:
                            to_batch.append((action, inputs, outcome))  # started together below
                            continue
                        running[pool.submit(self._execute_tests_guarded, [(action, inputs, outcome)])] = [label]
                        continue
                    running[pool.submit(self._execute_guarded, action, inputs, outcome)] = [label]
                if to_batch and not stopping:
                    free = max(1, self.opts.jobs - len(running))
                    sizes = {f: self.sources.digests[f].size for a, _, _ in to_batch for f in pytest_files(a)
                             if f in self.sources.digests}
                    for batch in plan_batches(to_batch, lambda it: it[0], free, self.opts.batch_max_files,
                                              self.opts.durations, sizes):
                        running[pool.submit(self._execute_tests_guarded, batch)] = [a.label for a, _, _ in batch]
                    to_batch = []
                elif to_batch:
                    to_batch = []  # stopping after a failure: they are reported as not started
                if not running:
                    break  # nothing runs and nothing may start (stopping after a failure)
                done, _ = wait(list(running), timeout=0.25, return_when=FIRST_COMPLETED)
                for fut in done:
                    running.pop(fut)
                    for outcome in fut.result():
                        finish(outcome.label, outcome)
        except KeyboardInterrupt:
            self._stop.set()
            kill_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            self._flush_materialize()
            self.writer.flush()
            self._record_key_parts()
        for label in needed:
            if label not in self.outcomes:
                a = self.ag.actions[label]
                self.outcomes[label] = ActionOutcome(label, a.mnemonic, "skipped",
                                                     message="not started: an earlier action failed")
        return self.outcomes

    def _record_key_parts(self) -> None:
        if self.store is None or not self._missed:
            return
        from ciopt.exec.key_record import Executed, write_records
        from ciopt.graph.action_graph import PROJECT_PYTHON

        dists = self.python.distributions if self.python is not None else None
        ran: dict[Label, Executed] = {}
        for action, inputs, key in self._missed:  # a requeued test appears twice: the last one counts
            outcome = self.outcomes.get(action.label)
            if outcome is None or outcome.status not in ("executed", "failed", "cached_remote"):
                continue  # never finished (interrupted): nothing to compare against later
            python = action.argv[:1] == (PROJECT_PYTHON,)
            ran[action.label] = Executed(action, inputs, key, self.toolchain.for_action(action),
                                         dists if python else None, outcome.status)
        write_records(self.store, list(ran.values()))

    def _needed(self, wanted: list[Label]) -> set[Label]:
        needed: set[Label] = set()
        todo = [l for l in wanted if l in self.ag.actions]
        # Wanted targets without an action (libraries, filegroups) still need their generated files.
        for l in wanted:
            if l not in self.ag.actions:
                todo.extend(self.ag.producers[p] for p in self.ag._runfiles(l) if p in self.ag.producers)
        while todo:
            l = todo.pop()
            if l not in needed:
                needed.add(l)
                todo.extend(self.ag.actions[l].deps)
        return needed

    def _skip_dependents(self, failed: Label, dependents: dict[Label, list[Label]]) -> None:
        todo = list(dependents[failed])
        while todo:
            l = todo.pop()
            if l in self.outcomes:
                continue
            a = self.ag.actions[l]
            self.outcomes[l] = ActionOutcome(l, a.mnemonic, "skipped", message=f"dependency {failed} failed")
            self.listener("finish", l, self.outcomes[l])
            todo.extend(dependents[l])

    # -- one action ---------------------------------------------------------------

    def _inputs(self, action: Action) -> list[tuple[str, Digest, bool]]:
        out = []
        for path in action.inputs:
            producer = self.ag.producers.get(path)
            if producer is not None and producer != action.label:
                o = self.outcomes[producer].outputs[path]
                out.append((path, o.digest, o.is_executable))
            else:
                out.append((path, self.sources.digests[path], path in self.sources.executable))
        return out

    def _prepare(self, action: Action) -> tuple[ActionOutcome, list[tuple[str, Digest, bool]]]:
        """Inputs and key; a cache hit comes back finished, anything else as "pending"."""
        outcome = ActionOutcome(action.label, action.mnemonic, "pending", started_at=time.time())
        inputs: list[tuple[str, Digest, bool]] = []
        try:
            if action.label in self._keyed:
                inputs, outcome.key = self._keyed.pop(action.label)
            else:
                inputs, outcome.key = self._key_of(action)
            outcome.input_files = len(inputs)
            outcome.input_bytes = sum(d.size for _, d, _ in inputs)
            if self.store is not None:
                self._try_cache(action, outcome)
        except UserError:
            raise  # the remote cache failed under `degradation: fail`: the build stops, exit 2
        except Exception as e:  # noqa: BLE001 - one broken action must not take the build down
            outcome.status = "failed"
            outcome.message = f"internal error: {type(e).__name__}: {e}"
            outcome.finished_at = time.time()
        return outcome, inputs

    def _key_of(self, action: Action) -> tuple[list[tuple[str, Digest, bool]], str]:
        inputs = self._inputs(action)
        tree = tree_digest(inputs, self.opts.digest)
        return inputs, action_key(action, tree, self.toolchain.for_action(action), self.opts.digest)

    def _prefetch(self, labels: list[Label]) -> None:
        """Ask the remote tier about every ready action at once (one round trip for their
        entries, one for their blobs) instead of one by one as they are reached. Keys are
        computed here and reused by _prepare; local hits are never asked for."""
        assert self.store is not None and self.remote_cache is not None
        todo: dict[str, Label] = {}
        for label in labels:
            if label in self.outcomes or label in self._keyed:
                continue
            try:
                self._keyed[label] = self._key_of(self.ag.actions[label])
            except Exception:  # noqa: BLE001 - _prepare reports it
                continue
            todo[self._keyed[label][1]] = label
        if not todo:
            return
        keys = list(todo)
        remote = [k for k, raw in zip(keys, self.store.action_get_many(keys)) if raw is None]
        if len(remote) > 1:
            self.remote_cache.prefetch(remote)

    def _execute_guarded(self, action: Action, inputs: list[tuple[str, Digest, bool]],
                         outcome: ActionOutcome) -> list[ActionOutcome]:
        try:
            self._execute(action, inputs, outcome)
        except Exception as e:  # noqa: BLE001
            outcome.status = "failed"
            outcome.message = f"internal error: {type(e).__name__}: {e}"
        outcome.finished_at = outcome.finished_at or time.time()
        return [outcome]

    def _local_tests(self, action: Action) -> bool:
        """py_tests run here (not on a remote executor) go through the batching test runner."""
        return action.mnemonic == "PyTest" and self.executor is self.local

    def _try_cache(self, action: Action, outcome: ActionOutcome) -> None:
        assert self.store is not None and outcome.key is not None
        raw = self.store.action_get(outcome.key)
        tier = "cached_local"
        if raw is None and self.remote_cache is not None:
            # Blobs it names are downloaded and verified before it counts; small ones stay in
            # memory (outputs and logs are written from there) and reach the store with the
            # entry in one batched commit of the writer, not one commit per hit.
            fetched: dict[Digest, bytes] = {}
            raw = self.remote_cache.fetch(outcome.key, fetched)
            if raw is not None:
                self._fetched.update(fetched)
                self.writer.add([], outcome.key, raw, list(fetched.values()))
            tier = "cached_remote"
        result = ActionResult.decode(raw) if raw else None
        if result is None:
            return
        if self.store.find_missing([o.digest for o in result.outputs if o.digest not in self._fetched]):
            return  # outputs evicted by gc: run again
        log = None
        if action.is_test:
            try:
                log = self._materialize_log(action, result)
            except CorruptBlobError:
                return
        # Outputs are checked and restored in batches (_flush_materialize), not one by one.
        self._pending_outputs.extend(result.outputs)
        outcome.status = tier
        outcome.executor = result.executor
        outcome.exit_code = result.exit_code
        outcome.outputs = {o.path: o for o in result.outputs}
        outcome.output_bytes = sum(o.digest.size for o in result.outputs)
        outcome.test_outcome = result.test_outcome
        outcome.attempts = 0
        outcome.log = log
        outcome.notes = list(result.extra.get("notes", []))  # type: ignore[arg-type]
        report = result.extra.get("cases")
        if isinstance(report, str):
            try:
                raw = self._fetched.get(Digest.parse(report)) or self.store.get(report)
                outcome.cases = json.loads(raw) if raw is not None else None
            except (CorruptBlobError, ValueError):
                outcome.cases = None
        outcome.finished_at = time.time()

    def _flush_materialize(self) -> None:
        """Make ciopt-out/ hold the cached outputs: files already in place are checked through
        the StatCache in one call; the others are written from the store."""
        if not self._pending_outputs or self.store is None:
            return
        pending, self._pending_outputs = self._pending_outputs, []
        present = [o for o in pending if (self.out_root / o.path).is_file()]
        current = dict(zip((o.path for o in present),
                           self.store.hash_files([self.out_root / o.path for o in present]))) if present else {}
        for o in pending:
            dest = self.out_root / o.path
            if current.get(o.path) == o.digest and bool(os.stat(dest).st_mode & 0o100) == o.is_executable:
                continue
            if o.digest in self._fetched:
                _write_atomic(dest, self._fetched[o.digest], o.is_executable)
                continue
            if not self.store.get_to_file(o.digest, dest, executable=o.is_executable):
                raise CorruptBlobError(f"output {o.path} vanished from the store")

    def _materialize_log(self, action: Action, result: ActionResult) -> Path | None:
        assert self.store is not None
        log = self._log_path(action)
        if result.stdout is None:
            return None
        if not (log.is_file() and hash_file(log, self.opts.digest) == result.stdout):
            if result.stdout in self._fetched:
                _write_atomic(log, self._fetched[result.stdout], False)
            else:
                self.store.get_to_file(result.stdout, log)
        return log

    def _log_path(self, action: Action) -> Path:
        pkg = action.label.package
        return self.out_root / "testlogs" / (pkg or ".") / action.label.name / "test.log"

    def _execute(self, action: Action, inputs: list[tuple[str, Digest, bool]], outcome: ActionOutcome) -> None:
        attempts = max(1, self.opts.flaky_attempts, 3 if action.flaky else 1) if action.is_test else 1
        staged = self._staged(action, inputs)
        log = self._log_path(action) if action.is_test else self._failure_log_path(action)
        failures = 0
        for attempt in range(1, attempts + 1):
            if self._stop.is_set():
                outcome.message = "interrupted"
                return
            result = self.executor.execute(action, staged, log)
            if action.mnemonic == "PyTest" and result.exit_code == 5 and not result.timed_out:
                # pytest's "no tests collected": nothing failed. Counted as a pass, with a note.
                result.exit_code = 0
                outcome.notes = ["no tests collected (pytest exit code 5)"]
            outcome.attempts = attempt
            outcome.exit_code = result.exit_code
            outcome.executor = result.executor
            if attempt > 1:
                shutil.copyfile(log, log.with_name(f"{log.stem}.attempt_{attempt}{log.suffix}"))
            if result.ok:
                outcome.outputs = result.outputs
                outcome.status = "cached_remote" if result.cached_remote else "executed"
                outcome.log = log if action.is_test else None
                if not action.is_test:
                    log.unlink(missing_ok=True)
                else:
                    outcome.test_outcome = "flaky" if failures else "passed"
                outcome.output_bytes = sum(o.digest.size for o in outcome.outputs.values())
                outcome.finished_at = time.time()
                # A flaky pass is reported, never cached as clean.
                if self.store is not None and not failures:
                    self._record(action, outcome, result)
                return
            outcome.log = log
            if result.error is not None:
                outcome.message = result.error
                break  # wrong outputs are a rule bug, not flakiness
            failures += 1
            outcome.test_outcome = "timeout" if result.timed_out else "failed"
            outcome.message = (f"timed out after {action.timeout_s:g} s" if result.timed_out
                               else f"exit code {result.exit_code}")
        outcome.status = "failed"

    # -- py_test files, batched -------------------------------------------------------

    def _execute_tests_guarded(self, batch: list[tuple[Action, list[tuple[str, Digest, bool]], ActionOutcome]]
                               ) -> list[ActionOutcome]:
        try:
            self._execute_tests(batch)
        except Exception as e:  # noqa: BLE001
            for _, _, outcome in batch:
                if outcome.status == "pending":
                    outcome.status = "failed"
                    outcome.message = f"internal error: {type(e).__name__}: {e}"
        for _, _, outcome in batch:
            outcome.finished_at = outcome.finished_at or time.time()
        return [o for _, _, o in batch]

    def _execute_tests(self, batch: list[tuple[Action, list[tuple[str, Digest, bool]], ActionOutcome]]) -> None:
        """Run py_test actions in one pytest process (then the failed ones again, up to their
        attempts); each gets its own outcome, log, and cache entry."""
        failures: dict[Label, int] = {a.label: 0 for a, _, _ in batch}
        attempt = 0
        pending = list(batch)
        while pending:
            attempt += 1
            if self._stop.is_set():
                for _, _, outcome in pending:
                    outcome.status, outcome.message = "failed", "interrupted"
                return
            staged = {i.path: i for action, inputs, _ in pending for i in self._staged(action, inputs)}
            files = [f for a, _, _ in pending for f in pytest_files(a)]
            with self._batch_lock:
                self._batch_seq += 1
                seq = self._batch_seq
            batch_log = self.out_root / "testlogs" / "_batches" / f"{seq}.log"
            run, reports = self.local.execute_pytest([a for a, _, _ in pending], list(staged.values()), files,
                                                     batch_log, self._collectable(files))
            by_file = {str(r.get("file")): r for r in reports}
            retry = []
            for action, inputs, outcome in pending:
                res = merge_reports(pytest_files(action), by_file)
                outcome.attempts = attempt
                outcome.executor = self.local.id
                outcome.exit_code = 0 if res.outcome == "passed" else (run.exit_code or 1)
                if res.outcome == "missing" and len(pending) > 1:
                    # The process died (crash, os._exit, timeout) before this file finished: run it
                    # again alone, so the culprit is named and nothing is reported that did not run.
                    outcome.status = "requeue"
                    continue
                self._write_test_log(action, outcome, res, run, batch_log, len(files))
                outcome.cases, outcome.notes = res.cases, res.notes
                # The file's own time inside the batch (what balancing and analytics want), not the batch's.
                if res.started_at is not None and not failures[action.label]:
                    outcome.started_at = res.started_at
                outcome.finished_at = (res.started_at + res.wall_s) if res.started_at is not None else time.time()
                if res.outcome == "passed":
                    outcome.status = "executed"
                    outcome.test_outcome = "flaky" if failures[action.label] else "passed"
                    if self.store is not None and not failures[action.label]:
                        self._record(action, outcome, ExecResult(0, False, run.started_at, run.finished_at,
                                                                 self.local.id))
                    continue
                failures[action.label] += 1
                if res.outcome == "missing":
                    outcome.test_outcome = "timeout" if run.timed_out else "failed"
                    outcome.message = (f"timed out after {action.timeout_s:g} s" if run.timed_out else
                                       f"pytest exited {run.exit_code} before reporting {', '.join(res.missing)} "
                                       "(crashed or exited early)")
                else:
                    outcome.test_outcome = "failed"
                    bad = [c["nodeid"] for c in res.cases if c.get("outcome") in ("failed", "error")]
                    outcome.message = (f"{len(bad)} failed: {', '.join(map(str, bad[:3]))}"
                                       f"{' ...' if len(bad) > 3 else ''}" if bad else "error collecting tests")
                limit = max(1, self.opts.flaky_attempts, 3 if action.flaky else 1)
                if attempt < limit and res.outcome == "failed":
                    log = self._log_path(action)
                    shutil.copyfile(log, log.with_name(f"{log.stem}.attempt_{attempt}{log.suffix}"))
                    retry.append((action, inputs, outcome))  # only the failed files run again
                else:
                    outcome.status = "failed"
            pending = retry

    def _collectable(self, files: list[str]) -> frozenset[str]:
        """The files pytest collects when walking their directory (their names match the
        project's python_files patterns, and no path component is hidden)."""
        if self._python_files is None:
            from ciopt.infer.resolve import read_pytest_settings

            self._python_files = read_pytest_settings(self.root).python_files
        return frozenset(f for f in files
                         if any(fnmatch.fnmatchcase(f.rpartition("/")[2], p) for p in self._python_files)
                         and not any(part.startswith((".", "_")) or part in ("build", "dist", "node_modules", "venv")
                                     for part in f.split("/")[:-1]))

    def _write_test_log(self, action: Action, outcome: ActionOutcome, res: FileResults, run: RunResult,
                        batch_log: Path, batch_files: int) -> None:
        log = self._log_path(action)
        log.parent.mkdir(parents=True, exist_ok=True)
        head = (f"ciopt: {action.label}: {', '.join(pytest_files(action))} ran in one pytest process with "
                f"{batch_files - 1} other file(s); that process's whole output: {batch_log}\n"
                if batch_files > 1 else "")
        body = res.log
        if res.outcome == "missing" or (res.outcome == "failed" and not res.cases) or batch_files == 1:
            body += log_tail(batch_log, 400) + "\n"  # what pytest itself printed
        for note in res.notes:
            body += f"note: {note}\n"
        log.write_text(head + body, encoding="utf-8", errors="replace")
        outcome.log = log

    def _staged(self, action: Action, inputs: list[tuple[str, Digest, bool]]) -> list[InputFile]:
        """Where each input's bytes are here: generated ones under ciopt-out/, sources in the tree."""
        staged = []
        for path, digest, executable in inputs:
            producer = self.ag.producers.get(path)
            local = self.out_root / path if producer is not None and producer != action.label else self.root / path
            staged.append(InputFile(path, digest, executable, local))
        return staged

    def _failure_log_path(self, action: Action) -> Path:
        return self.out_root / "logs" / (action.label.package or ".") / f"{action.label.name}.log"

    def _record(self, action: Action, outcome: ActionOutcome, run: ExecResult) -> None:
        assert self.store is not None and outcome.key is not None
        stdout = stderr = None
        files = [self.out_root / o.path for o in outcome.outputs.values()]
        if action.is_test and outcome.log is not None:
            stdout = hash_file(outcome.log, self.opts.digest)
            files.append(outcome.log)
        extra: dict[str, object] = {}
        blobs: list[tuple[Digest, bytes]] = []
        if outcome.cases is not None:
            # Per-test results: a blob only (no file), named by the entry.
            data = json.dumps(outcome.cases, sort_keys=True).encode()
            digest = hash_bytes(data, self.opts.digest)
            extra["cases"] = str(digest)
            blobs.append((digest, data))
        if outcome.notes:
            extra["notes"] = list(outcome.notes)
        result = ActionResult(
            exit_code=0, outputs=tuple(outcome.outputs.values()), stdout=stdout, stderr=stderr,
            started_at=run.started_at, finished_at=run.finished_at, executor=run.executor,
            test_outcome=outcome.test_outcome, attempts=outcome.attempts, extra=extra,
        )
        encoded = result.encode()
        self.writer.add(files, outcome.key, encoded, [data for _, data in blobs])
        if self.remote_cache is not None:
            named = [(self.out_root / o.path, o.digest) for o in result.outputs]
            if stdout is not None and outcome.log is not None:
                named.append((outcome.log, stdout))
            self.remote_cache.upload(outcome.key, encoded, named, blobs)


def _write_atomic(dest: Path, data: bytes, executable: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755 if executable else 0o644)
    os.replace(tmp, dest)


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as f:
        data = f.read()[-64 * 1024:]
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
