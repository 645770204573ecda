"""The local executor: runs one action in a sandbox, with a timeout over its whole process group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ciopt import Digest, hash_file
from ciopt.exec.action_result import OutputFile
from ciopt.exec.sandbox import OutputError, Sandbox
from ciopt.graph.action_graph import BASE_PATH, PROJECT_PYTHON, PYTEST_ARGV, Action, pytest_extra_args

if TYPE_CHECKING:
    from ciopt.exec.python_env import PythonEnv

# The pytest plugin of batched runs, copied into each sandbox: the project's interpreter has no ciopt.
PLUGIN_SOURCE = Path(__file__).with_name("pytest_plugin.py")
PLUGIN_MODULE = "_ciopt_report"

# Children of this process, by process group, so Ctrl-C can stop all of them.
_running: set[int] = set()
_running_lock = threading.Lock()
TERM_GRACE_S = 2.0


@dataclass(frozen=True)
class InputFile:
    path: str  # exec-root-relative
    digest: Digest
    is_executable: bool
    local: Path  # where its bytes are on this machine (source tree or ciopt-out)


@dataclass
class ExecResult:
    """One attempt of one action, on some executor."""

    exit_code: int
    timed_out: bool
    started_at: float
    finished_at: float
    executor: str
    # Declared outputs, already in the local store (when there is one) and under ciopt-out/.
    outputs: dict[str, OutputFile] = field(default_factory=dict)
    error: str | None = None  # the command succeeded but its outputs are wrong
    cached_remote: bool = False  # a remote executor's scheduler answered from its ActionCache

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


class Executor(Protocol):
    """Runs actions; the engine owns caching, retries and scheduling."""

    id: str

    def execute(self, action: Action, inputs: list[InputFile], log: Path) -> ExecResult:
        """Run once; materialize outputs under ciopt-out/; write stdout then stderr to `log` when
        the action is a test or failed (a successful build action's chatter is not kept)."""
        ...


class LocalExecutor:
    """Runs actions on this machine, each in a fresh sandbox."""

    def __init__(self, out_root: Path, digest: str = "blake3", python: PythonEnv | None = None) -> None:
        # Outputs are hashed here and stored by the engine in batches (one transaction for
        # many actions), so the executor never writes to the store.
        self.out_root = out_root
        self.sandbox_base = out_root / ".sandbox"
        self.digest = digest
        self.python = python  # the project's interpreter for $(PYTHON); None: resolved on first use
        self.id = f"local:{socket.gethostname()}"

    def _python(self) -> PythonEnv:
        if self.python is None:
            from ciopt.exec.python_env import resolve_python_env

            self.python = resolve_python_env(Path.cwd(), None, None, None)
        return self.python

    def argv(self, action: Action, argv: list[str] | None = None) -> list[str]:
        argv = list(argv if argv is not None else action.argv)
        if argv[:1] == [PROJECT_PYTHON]:
            argv[0] = self._python().executable
        return argv

    def env(self, action: Action, tmp: Path) -> dict[str, str]:
        python = self._python() if action.argv[:1] == (PROJECT_PYTHON,) else None
        return action_env(action, tmp, python)

    def execute(self, action: Action, inputs: list[InputFile], log: Path) -> ExecResult:
        sandbox = Sandbox(self.sandbox_base, str(action.label))
        try:
            sandbox.stage((i.path, i.local, i.is_executable) for i in inputs)
            sandbox.prepare_outputs(action.outputs)
            run = run_command(self.argv(action), sandbox.root, self.env(action, sandbox.tmp), action.timeout_s,
                              sandbox.dir)
            result = ExecResult(run.exit_code, run.timed_out, run.started_at, run.finished_at, self.id)
            if result.exit_code == 0 and not result.timed_out:
                try:
                    result.outputs = self._collect(action, sandbox)
                except OutputError as e:
                    result.error = str(e)
            if action.is_test or not result.ok:
                _write_log(log, run)
            return result
        finally:
            sandbox.cleanup()

    def execute_pytest(self, actions: list[Action], inputs: list[InputFile], files: list[str],
                       log: Path, collectable: frozenset[str] = frozenset()) -> tuple[RunResult, list[dict[str, object]]]:
        """Run the test `files` of `actions` (compatible: same env and extra arguments) in one
        pytest process, in one sandbox holding the union of their inputs. Returns the run and
        the per-file reports of the plugin, in the order the files finished; stdout and stderr go
        to `log`."""
        first = actions[0]
        sandbox = Sandbox(self.sandbox_base, str(first.label) + (f"+{len(actions) - 1}" if len(actions) > 1 else ""))
        try:
            sandbox.stage((i.path, i.local, i.is_executable) for i in inputs)
            plugins = sandbox.dir / "plugins"
            plugins.mkdir()
            shutil.copyfile(PLUGIN_SOURCE, plugins / f"{PLUGIN_MODULE}.py")
            report = sandbox.dir / "report.jsonl"
            env = self.env(first, sandbox.tmp)
            env["PYTHONPATH"] = f"{plugins}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(plugins)
            env["CIOPT_REPORT"] = str(report)
            n_fixed = len(PYTEST_ARGV)
            extra = pytest_extra_args(first)
            # Files pytest would find by walking their directory (`collectable`: they match
            # python_files) are given as directories, filtered by the plugin; others explicitly.
            walked = [f for f in files if f in collectable]
            if len(walked) > 1:
                listing = sandbox.dir / "files.txt"
                listing.write_text("".join(f + "\n" for f in walked))
                env["CIOPT_BATCH_FILES"] = str(listing)
                args = [*_top_dirs(walked), *(f for f in files if f not in collectable)]
            else:
                args = list(files)
            argv = self.argv(first, [*first.argv[:n_fixed], "--continue-on-collection-errors", "-p", PLUGIN_MODULE,
                                     *args, *extra])
            timeouts = [a.timeout_s for a in actions]
            timeout = None if any(t is None for t in timeouts) else sum(timeouts)  # type: ignore[misc]
            run = run_command(argv, sandbox.root, env, timeout, sandbox.dir)
            _write_log(log, run)
            reports: list[dict[str, object]] = []
            if report.is_file():
                for line in report.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        reports.append(json.loads(line))
                    except ValueError:
                        break  # a torn last line: the process died while writing it
            return run, reports
        finally:
            sandbox.cleanup()

    def _collect(self, action: Action, sandbox: Sandbox) -> dict[str, OutputFile]:
        produced = {rel: sandbox.output(rel) for rel in action.outputs}  # all checked before any is moved
        outputs: dict[str, OutputFile] = {}
        for rel, path in produced.items():
            executable = bool(os.stat(path).st_mode & 0o100)
            digest = hash_file(path, self.digest)
            dest = self.out_root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            outputs[rel] = OutputFile(rel, digest, executable)
        return outputs


def _write_log(log: Path, run: RunResult) -> None:
    """stdout, then stderr, of a finished command into `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        for part in (run.stdout, run.stderr):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f)


def _top_dirs(files: list[str]) -> list[str]:
    """The fewest directories holding `files`: each file's directory, minus those below another."""
    dirs = sorted({f.rpartition("/")[0] or "." for f in files})
    if "." in dirs:
        return ["."]
    out: list[str] = []
    for d in dirs:
        if not any(d.startswith(o + "/") for o in out):
            out.append(d)
    return out


def action_env(action: Action, tmp: Path, python: PythonEnv | None = None) -> dict[str, str]:
    """The environment an action sees: fixed basics, then its declared env. Python actions get
    the project's interpreter first on PATH (and its VIRTUAL_ENV), never ciopt's own."""
    # abspath, not realpath: a venv's bin/python is a symlink to the base interpreter, and
    # resolving it would run tests without the venv's packages (pytest, the project's deps).
    python_bin = python.bin_dir if python is not None else os.path.dirname(os.path.abspath(sys.executable))
    env = {
        "PATH": f"{python_bin}:{BASE_PATH}",
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        # No LANG: the C locale. C.UTF-8 made every coreutils process open a dozen locale files
        # (~60 openat per genrule); Python coerces the C locale to UTF-8 by itself (PEP 538).
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }
    if python is not None:
        if python.is_venv:
            env["VIRTUAL_ENV"] = python.prefix
    elif os.environ.get("VIRTUAL_ENV"):
        env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
    if action.is_test:
        env["TEST_TARGET"] = str(action.label)
        env["TEST_TMPDIR"] = str(tmp)
    env.update(dict(action.env))
    return env


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    timed_out: bool
    started_at: float
    finished_at: float
    stdout: Path
    stderr: Path

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


def run_command(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float | None,
                log_dir: Path) -> RunResult:
    stdout, stderr = log_dir / "stdout", log_dir / "stderr"
    started = time.time()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        except OSError as e:
            err.write(f"ciopt: cannot start {argv[0]}: {e.strerror or e}\n".encode())
            return RunResult(127, False, started, time.time(), stdout, stderr)
        with _running_lock:
            _running.add(proc.pid)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, proc)
        finally:
            with _running_lock:
                _running.discard(proc.pid)
    return RunResult(proc.returncode, timed_out, started, time.time(), stdout, stderr)


def _kill_group(pgid: int, proc: subprocess.Popen) -> None:
    """SIGTERM the whole group, then SIGKILL what is left: no orphaned grandchildren."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:
                # The leader is gone; make sure nothing else of its group survives.
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        except subprocess.TimeoutExpired:
            continue


def kill_all() -> None:
    """Stop every running action (Ctrl-C)."""
    with _running_lock:
        groups = list(_running)
    for pgid in groups:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            time.sleep(0.05)
