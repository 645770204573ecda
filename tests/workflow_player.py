"""Plays one job of a GitHub Actions workflow on this machine, the way a runner would.

    run = play_job(workflow, "test", event, runner, needs={"plan": plan_run.outputs})

What is real: every `run:` step runs in bash (`bash --noprofile --norc -eo pipefail`, GitHub's
default), in order, in the job's workspace, with the runner's `GITHUB_*` / `RUNNER_*` variables;
`GITHUB_ENV`, `GITHUB_PATH`, `GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY` are files applied between
steps as the runner applies them; `if:` conditions, `continue-on-error`, `env:` at every level
and job `outputs` are evaluated. What is emulated: `uses:` steps, by callables the caller passes
in (the `Emulation` functions here prepare what the action would: a git checkout, a Python on
PATH, a copied artifact), and `services:` (the caller starts them and names them in `vars`).

The expression language is the subset workflows use: literals, contexts (`github`, `env`,
`vars`, `secrets`, `inputs`, `steps`, `needs`, `runner`, `matrix`, `job`), property access with
`.` and `['...']`, `! == != < <= > >= && ||`, parentheses, and the functions `success()`,
`failure()`, `always()`, `cancelled()`, `contains`, `startsWith`, `endsWith`, `format`,
`toJSON`, `fromJSON`. Comparison is GitHub's: loose, strings case-insensitive. Anything else is
a ValueError, so an unsupported construct fails the test instead of passing by accident.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STEP_TIMEOUT_S = 600

# -- expressions ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<num>0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<str>'(?:[^']|'')*')
    | (?P<op>==|!=|<=|>=|&&|\|\||[!<>()\[\],.])
    | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read expression at {text[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over GitHub's precedence: || < && < == != < < <= > >= < ! < access."""

    def __init__(self, text: str, ctx: Mapping[str, Any], status: Mapping[str, bool]) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.ctx = ctx
        self.status = status
        self.text = text

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise ValueError(f"expected {value or 'more'} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.or_()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()[1]!r} in {self.text!r}")  # type: ignore[index]
        return value

    def or_(self) -> Any:
        left = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.and_()
            left = left if _truthy(left) else right
        return left

    def and_(self) -> Any:
        left = self.equality()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.equality()
            left = right if _truthy(left) else left
        return left

    def equality(self) -> Any:
        left = self.comparison()
        while self.peek() in (("op", "=="), ("op", "!=")):
            op = self.take()[1]
            right = self.comparison()
            left = _equal(left, right) == (op == "==")
        return left

    def comparison(self) -> Any:
        left = self.unary()
        while self.peek() in (("op", "<"), ("op", "<="), ("op", ">"), ("op", ">=")):
            op = self.take()[1]
            a, b = _number(left), _number(self.unary())
            left = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        return left

    def unary(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return not _truthy(self.unary())
        return self.access()

    def access(self) -> Any:
        value = self.primary()
        while self.peek() in (("op", "."), ("op", "[")):
            if self.take()[1] == ".":
                value = _get(value, self.take()[1])
            else:
                key = self.or_()
                self.take("]")
                value = _get(value, key)
        return value

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            return float(int(text, 16)) if text.startswith("0x") else float(text)
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if (kind, text) == ("op", "("):
            value = self.or_()
            self.take(")")
            return value
        if kind != "name":
            raise ValueError(f"unexpected {text!r} in {self.text!r}")
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if self.peek() == ("op", "("):
            self.take()
            args = []
            while self.peek() != ("op", ")"):
                args.append(self.or_())
                if self.peek() == ("op", ","):
                    self.take()
            self.take(")")
            return self.call(text, args)
        return _get(self.ctx, text)

    def call(self, name: str, args: list[Any]) -> Any:
        lowered = name.lower()
        if lowered in ("success", "failure", "always", "cancelled"):
            return self.status[lowered]
        if lowered == "contains":
            hay, needle = args
            if isinstance(hay, list):
                return any(_equal(x, needle) for x in hay)
            return _text(needle).lower() in _text(hay).lower()
        if lowered == "startswith":
            return _text(args[0]).lower().startswith(_text(args[1]).lower())
        if lowered == "endswith":
            return _text(args[0]).lower().endswith(_text(args[1]).lower())
        if lowered == "format":
            return re.sub(r"\{(\d+)\}", lambda m: _text(args[1 + int(m.group(1))]), _text(args[0]))
        if lowered == "tojson":
            return json.dumps(args[0], indent=2)
        if lowered == "fromjson":
            return json.loads(_text(args[0]))
        raise ValueError(f"function {name}() is not supported by the player")


def _get(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        if key in value:
            return value[key]
        # Context property names are case-insensitive.
        for k, v in value.items():
            if isinstance(k, str) and isinstance(key, str) and k.lower() == key.lower():
                return v
        return None
    if isinstance(value, list) and isinstance(key, float) and 0 <= int(key) < len(value):
        return value[int(key)]
    return None


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, 0.0, "")


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip()) if value.strip() else 0.0
        except ValueError:
            return float("nan")
    return float("nan")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b) or (a is None and b is None):
        return a == b
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return _number(a) == _number(b)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


_STATUS_FUNCTIONS = re.compile(r"\b(success|failure|always|cancelled)\s*\(", re.IGNORECASE)
_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


def evaluate(expr: str, ctx: Mapping[str, Any], status: Mapping[str, bool] | None = None) -> Any:
    return _Parser(expr, ctx, status or {"success": True, "failure": False, "always": True,
                                         "cancelled": False}).parse()


def substitute(text: Any, ctx: Mapping[str, Any]) -> Any:
    """`${{ expr }}` in a string replaced by its value, as the runner does before a step runs."""
    if not isinstance(text, str):
        return text
    return _TEMPLATE.sub(lambda m: _text(evaluate(m.group(1), ctx)), text)


def condition(expr: Any, ctx: Mapping[str, Any], status: Mapping[str, bool]) -> bool:
    """An `if:`: with no status function in it, `success() && (...)` is implied."""
    if expr is None:
        return status["success"]
    if isinstance(expr, bool):
        return expr and status["success"]
    text = str(expr).strip()
    m = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.DOTALL)
    if m:
        text = m.group(1)
    if not _STATUS_FUNCTIONS.search(text):
        text = f"success() && ({text})"
    return _truthy(evaluate(text, ctx, status))


# -- the runner -----------------------------------------------------------------------------------


@dataclass
class Event:
    """What triggered the run: github.event_name, github.sha, the payload, ..."""

    name: str
    sha: str
    ref: str
    payload: dict[str, Any]
    repository: str = "acme/project"
    base_ref: str = ""
    head_ref: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    run_id: str = "1000"
    run_attempt: str = "1"

    @property
    def ref_name(self) -> str:
        return self.ref.removeprefix("refs/heads/").removeprefix("refs/tags/").removeprefix("refs/pull/")


@dataclass
class StepRun:
    id: str | None
    name: str
    outcome: str  # success | failure | skipped
    conclusion: str  # outcome, except failure under continue-on-error is success
    outputs: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    output: str = ""  # stdout and stderr together, as the log shows them
    duration_s: float = 0.0


@dataclass
class JobRun:
    job: str
    skipped: bool
    conclusion: str  # success | failure | skipped
    steps: list[StepRun] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""  # what the steps wrote to GITHUB_STEP_SUMMARY
    env: dict[str, str] = field(default_factory=dict)  # what GITHUB_ENV added
    duration_s: float = 0.0

    def step(self, key: str) -> StepRun:
        """A step by id or name."""
        for s in self.steps:
            if key in (s.id, s.name):
                return s
        raise KeyError(f"no step {key!r} in job {self.job}: {[s.id or s.name for s in self.steps]}")

    def log(self) -> str:
        return "\n".join(f"--- {s.name} [{s.outcome}] ({s.duration_s:.2f}s)\n{s.output}" for s in self.steps)


@dataclass
class UsesCall:
    """What an emulated action gets: its inputs and the job's directories."""

    with_: dict[str, str]
    workspace: Path
    temp: Path
    event: Event
    env: dict[str, str]
    path: list[str]  # GITHUB_PATH entries added so far; an emulation may add more


Emulation = Callable[[UsesCall], dict[str, str]]


@dataclass
class Runner:
    """One simulated runner machine. `workspace` is the fixed checkout path (GitHub's
    /home/runner/work/REPO/REPO); it is emptied at the start of each job, as on a fresh runner.
    `base_env` is the machine's environment; `uses` maps `owner/action` to its emulation."""

    workspace: Path
    temp_root: Path
    base_env: dict[str, str]
    uses: dict[str, Emulation]


def _read_key_values(path: Path) -> dict[str, str]:
    """The runner's file-command format: `NAME=value` lines and `NAME<<DELIM ... DELIM` blocks."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            body = []
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ValueError(f"{path}: no closing {delim!r} for {name}")
            i += 1
            out[name] = "\n".join(body)
        else:
            name, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{path}: malformed line {line!r}")
            out[name] = value
    return out


def _env_values(block: Mapping[str, Any] | None, ctx: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): _text(substitute(v, ctx)) for k, v in (block or {}).items()}


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def load_workflow(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def play_job(workflow: Mapping[str, Any], job_id: str, event: Event, runner: Runner, *,
             vars: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None,
             needs: Mapping[str, Mapping[str, str]] | None = None, matrix: Mapping[str, Any] | None = None) -> JobRun:
    job = workflow["jobs"][job_id]
    started = time.monotonic()
    workspace = runner.workspace
    temp = _fresh(runner.temp_root / "temp")
    files = _fresh(runner.temp_root / "_runner_file_commands")
    event_path = files / "event.json"
    event_path.write_text(json.dumps(event.payload))
    github = {
        "event_name": event.name, "sha": event.sha, "ref": event.ref, "ref_name": event.ref_name,
        "base_ref": event.base_ref, "head_ref": event.head_ref, "repository": event.repository,
        "run_id": event.run_id, "run_attempt": event.run_attempt, "event": event.payload,
        "workspace": str(workspace), "actor": "octocat", "job": job_id, "event_path": str(event_path),
        "repository_owner": event.repository.split("/")[0], "server_url": "https://github.com",
    }
    runner_ctx = {"temp": str(temp), "os": "Linux", "arch": "X64", "tool_cache": str(runner.temp_root / "tool")}
    needs_ctx = {k: {"outputs": dict(v), "result": "success"} for k, v in (needs or {}).items()}
    ctx: dict[str, Any] = {"github": github, "vars": dict(vars or {}), "secrets": dict(secrets or {}),
                           "inputs": dict(event.inputs), "needs": needs_ctx, "runner": runner_ctx,
                           "matrix": dict(matrix or {}), "job": {"status": "success"}, "steps": {}, "env": {}}
    run = JobRun(job_id, skipped=False, conclusion="success")
    if not condition(job.get("if"), ctx, {"success": True, "failure": False, "always": True, "cancelled": False}):
        run.skipped, run.conclusion = True, "skipped"
        return run
    _fresh(workspace)

    ctx["env"] = workflow_env = _env_values(workflow.get("env"), ctx)
    ctx["env"] = job_env = {**workflow_env, **_env_values(job.get("env"), ctx)}
    runner_env = {
        **runner.base_env, "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_EVENT_NAME": event.name, "GITHUB_EVENT_PATH": str(event_path), "GITHUB_SHA": event.sha,
        "GITHUB_REF": event.ref, "GITHUB_REF_NAME": event.ref_name, "GITHUB_BASE_REF": event.base_ref,
        "GITHUB_HEAD_REF": event.head_ref, "GITHUB_REPOSITORY": event.repository, "GITHUB_RUN_ID": event.run_id,
        "GITHUB_RUN_ATTEMPT": event.run_attempt, "GITHUB_JOB": job_id, "RUNNER_TEMP": str(temp),
        "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64", "RUNNER_TOOL_CACHE": runner_ctx["tool_cache"],
    }
    added_env: dict[str, str] = {}
    added_path: list[str] = []
    failed = False
    summaries: list[str] = []
    for index, step in enumerate(job["steps"]):
        step_id = step.get("id")
        name = step.get("name") or step.get("uses") or str(step.get("run", "")).splitlines()[0]
        ctx["env"] = {**job_env, **added_env}
        status = {"success": not failed, "failure": failed, "always": True, "cancelled": False}
        if not condition(step.get("if"), ctx, status):
            result = StepRun(step_id, name, "skipped", "skipped")
        else:
            step_env = _env_values(step.get("env"), ctx)
            env = {**runner_env, **job_env, **added_env, **step_env}
            if added_path:
                env["PATH"] = os.pathsep.join([*reversed(added_path), env.get("PATH", "")])
            output_file = files / f"output_{index}"
            env_file = files / f"env_{index}"
            path_file = files / f"path_{index}"
            summary_file = files / f"summary_{index}"
            for f in (output_file, env_file, path_file, summary_file):
                f.write_text("")
            env.update(GITHUB_OUTPUT=str(output_file), GITHUB_ENV=str(env_file), GITHUB_PATH=str(path_file),
                       GITHUB_STEP_SUMMARY=str(summary_file))
            t0 = time.monotonic()
            if "uses" in step:
                result = _uses(step, step_id, name, runner, ctx, env, workspace, temp, event, added_path)
            else:
                result = _run(step, step_id, name, ctx, env, workspace, files / f"step_{index}.sh")
            result.duration_s = time.monotonic() - t0
            result.outputs.update(_read_key_values(output_file))
            added_env.update(_read_key_values(env_file))
            added_path.extend(l for l in path_file.read_text().splitlines() if l.strip())
            summaries.append(summary_file.read_text())
            if result.outcome == "failure":
                allowed = substitute(step.get("continue-on-error", False), ctx)
                if allowed is True or allowed == "true":
                    result.conclusion = "success"
                else:
                    result.conclusion = "failure"
                    failed = True
        run.steps.append(result)
        if step_id:
            ctx["steps"][step_id] = {"outputs": result.outputs, "outcome": result.outcome,
                                     "conclusion": result.conclusion}
    ctx["env"] = {**job_env, **added_env}
    run.conclusion = "failure" if failed else "success"
    run.outputs = {k: _text(substitute(v, ctx)) for k, v in (job.get("outputs") or {}).items()}
    run.summary = "".join(summaries)
    run.env = added_env
    run.duration_s = time.monotonic() - started
    return run


def _run(step: Mapping[str, Any], step_id: str | None, name: str, ctx: Mapping[str, Any], env: dict[str, str],
         workspace: Path, script: Path) -> StepRun:
    shell = step.get("shell", "bash")
    if shell != "bash":
        raise ValueError(f"step {name!r}: shell {shell!r} is not supported by the player")
    script.write_text(substitute(step["run"], ctx))
    cwd = workspace / substitute(step.get("working-directory", "."), ctx)
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=STEP_TIMEOUT_S)
    outcome = "success" if proc.returncode == 0 else "failure"
    return StepRun(step_id, name, outcome, outcome, returncode=proc.returncode, output=proc.stdout)


def _uses(step: Mapping[str, Any], step_id: str | None, name: str, runner: Runner, ctx: Mapping[str, Any],
          env: dict[str, str], workspace: Path, temp: Path, event: Event, added_path: list[str]) -> StepRun:
    action, _, ref = str(step["uses"]).partition("@")
    emulate = runner.uses.get(action)
    if emulate is None:
        raise ValueError(f"step {name!r}: no emulation for {action}")
    call = UsesCall({str(k): _text(substitute(v, ctx)) for k, v in (step.get("with") or {}).items()},
                    workspace, temp, event, env, added_path)
    try:
        outputs = emulate(call)
    except Exception as e:  # an emulated action failing is a failed step, as on a runner
        return StepRun(step_id, name, "failure", "failure", output=f"{type(e).__name__}: {e}")
    return StepRun(step_id, name, "success", "success", outputs=dict(outputs or {}), output=f"(emulated {action}@{ref})")


# -- emulated actions ----------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def checkout(origin: Path) -> Emulation:
    """actions/checkout from a local bare repository, as the action does it: `git init`, fetch
    (every branch and tag with fetch-depth 0, else that many commits of the one ref), detached
    checkout. Like the action, it sets no origin/HEAD."""

    def emulate(call: UsesCall) -> dict[str, str]:
        ref = call.with_.get("ref") or call.event.sha
        depth = int(call.with_.get("fetch-depth") or "1")
        ws = call.workspace
        _git(ws, "init", "-q")
        _git(ws, "remote", "add", "origin", f"file://{origin}")
        if depth == 0:
            _git(ws, "fetch", "-q", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*",
                 "+refs/tags/*:refs/tags/*")
            _git(ws, "fetch", "-q", "origin", ref)
        else:
            _git(ws, "fetch", "-q", f"--depth={depth}", "origin", ref)
        _git(ws, "checkout", "-q", "--detach", "FETCH_HEAD")
        return {"commit": _git(ws, "rev-parse", "HEAD"), "ref": ref}

    return emulate


def setup_python(python: Path, tool_dir: Path) -> Emulation:
    """actions/setup-python: `python` and `python3` on PATH from a fixed tool directory (the
    hosted tool cache path is the same on every runner, so a restored venv's links hold)."""

    def emulate(call: UsesCall) -> dict[str, str]:
        bin_dir = tool_dir / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):
            link = bin_dir / name
            if not link.exists():
                link.symlink_to(python)
        call.path.append(str(bin_dir))
        version = subprocess.run([str(python), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        return {"python-version": version, "python-path": str(bin_dir / "python")}

    return emulate


def upload_artifact(dest: Path) -> Emulation:
    """actions/upload-artifact: copies each `path:` line (a file or directory) under dest/NAME."""

    def emulate(call: UsesCall) -> dict[str, str]:
        target = dest / call.with_.get("name", "artifact")
        target.mkdir(parents=True, exist_ok=True)
        copied = 0
        for line in call.with_.get("path", "").splitlines():
            src = Path(line.strip())
            if not line.strip():
                continue
            if src.is_dir():
                shutil.copytree(src, target / src.name, dirs_exist_ok=True)
                copied += 1
            elif src.is_file():
                shutil.copy2(src, target / src.name)
                copied += 1
        if not copied and call.with_.get("if-no-files-found", "warn") == "error":
            raise RuntimeError("no files found")
        return {"artifact-id": str(copied)}

    return emulate


__all__ = ["Event", "JobRun", "Runner", "StepRun", "UsesCall", "checkout", "condition", "evaluate",
           "load_workflow", "play_job", "setup_python", "substitute", "upload_artifact"]
