"""From targets to actions: what runs, with which inputs, producing which outputs.

Each rule kind provides *files* (what a dependent sees when it lists the target in `srcs`)
and *runfiles* (everything needed at run time: files plus data plus the runfiles of deps):

    source file   files = {pkg/name}
    genrule       files = its outs                       action: sh -c CMD
    filegroup     files = files of srcs and data
    py_library    files = srcs; runfiles add data and deps' runfiles
    py_test       runfiles as py_library, plus pytest configuration and conftest.py files
                  of the test's package and its ancestors        action: $(PYTHON) -m pytest SRCS
    sh_test       runfiles as py_library                         action: the script
    test_suite    nothing (expanded to its tests)

All paths are workspace-relative, which is also exec-root-relative: an action runs in a
fresh directory laid out like the workspace but holding only its declared inputs.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from ciopt import Digest, hash_bytes
from ciopt.graph.label import Label
from ciopt.graph.target_graph import GraphError, Target, TargetGraph

# Bumped whenever the encoding below changes meaning, so old cache entries can never match.
ACTION_KEY_VERSION = 1
# Files that configure pytest for a whole tree; a test implicitly reads those above it.
PYTEST_CONFIG_FILES = ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "conftest.py")
# Lockfiles at the workspace root are part of the toolchain: a dependency bump reruns everything.
LOCKFILES = ("requirements.txt", "requirements-dev.txt", "requirements-test.txt", "poetry.lock", "Pipfile.lock",
             "uv.lock", "pdm.lock", "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "constraints.txt")
# Part of the toolchain rather than the key: these differ between machines but not in meaning.
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
# argv[0] of Python actions: the executor substitutes the project's interpreter (exec/python_env.py),
# so a key means the same on every machine while the interpreter's identity is in the toolchain.
PROJECT_PYTHON = "$(PYTHON)"
# Fixed pytest arguments of every py_test; the test's files and `args` follow.
PYTEST_ARGV = (PROJECT_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir=.")


@dataclass(frozen=True)
class Action:
    label: Label
    mnemonic: str  # Genrule, PyTest, ShTest
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # declared environment, sorted by name
    inputs: tuple[str, ...]  # exec-root-relative paths, sorted
    outputs: tuple[str, ...]  # exec-root-relative paths, sorted
    deps: tuple[Label, ...]  # actions whose outputs are among `inputs`
    requires: tuple[tuple[str, object], ...]  # Platform requirements, sorted
    timeout_s: float | None
    is_test: bool
    flaky: bool
    tags: tuple[str, ...]


@dataclass
class ActionGraph:
    graph: TargetGraph
    actions: dict[Label, Action] = field(default_factory=dict)
    producers: dict[str, Label] = field(default_factory=dict)  # generated path -> producing action
    _memo: dict[tuple[str, Label], tuple[str, ...]] = field(default_factory=dict, repr=False)

    # Extra pytest arguments (`ciopt test //... -- -k expr`), appended to every py_test's argv.
    pytest_args: tuple[str, ...] = ()

    @classmethod
    def analyze(cls, graph: TargetGraph, labels: Iterable[Label], pytest_args: Iterable[str] = ()) -> ActionGraph:
        """Actions for `labels` and everything they need, transitively."""
        ag = cls(graph, pytest_args=tuple(pytest_args))
        for label, target in graph.targets.items():
            if target.kind == "genrule":
                for out in target.attrs["outs"]:
                    ag.producers[_out_path(label, out)] = label
        todo = list(labels)
        seen: set[Label] = set()
        while todo:
            label = todo.pop()
            if label in seen:
                continue
            seen.add(label)
            action = ag._action_for(graph.targets[label])
            if action is not None:
                ag.actions[label] = action
                todo.extend(action.deps)
            else:
                # A library or filegroup has no action, but its generated files do.
                todo.extend(ag.producers[p] for p in ag._runfiles(label) if p in ag.producers)
        return ag

    # -- files and runfiles ---------------------------------------------------------

    def _files(self, ref: Label) -> tuple[str, ...]:
        target = self.graph.targets.get(ref)
        if target is None:
            return (ref.path,)
        return self._target_files(ref)

    def _target_files(self, label: Label) -> tuple[str, ...]:
        key = ("files", label)
        if key not in self._memo:
            t = self.graph.targets[label]
            if t.kind == "genrule":
                files = [_out_path(label, o) for o in t.attrs["outs"]]
            elif t.kind == "filegroup":
                files = [f for ref in (*t.attrs["srcs"], *t.attrs["data"]) for f in self._files(ref)]
            elif t.kind == "test_suite":
                files = []
            else:
                files = [f for ref in t.attrs["srcs"] for f in self._files(ref)]
            self._memo[key] = tuple(dict.fromkeys(files))
        return self._memo[key]

    def _runfiles(self, label: Label) -> tuple[str, ...]:
        """Files of `label` and of everything it needs at run time. Iterative with a visited set:
        inferred dependencies between Python modules may form cycles."""
        key = ("runfiles", label)
        if key not in self._memo:
            files: list[str] = []
            seen = {label}
            stack = [label]
            while stack:
                l = stack.pop()
                t = self.graph.targets[l]
                files.extend(self._target_files(l))
                for ref in (*t.attrs.get("srcs", ()), *t.attrs.get("data", ()), *t.attrs.get("deps", ()),
                            *t.attrs.get("inferred_deps", ())):
                    if ref not in self.graph.targets:
                        files.append(ref.path)
                    elif ref not in seen:
                        seen.add(ref)
                        stack.append(ref)
            self._memo[key] = tuple(dict.fromkeys(files))
        return self._memo[key]

    def _deps_of(self, inputs: Iterable[str], own: Label) -> tuple[Label, ...]:
        return tuple(sorted({self.producers[p] for p in inputs if p in self.producers} - {own}))

    # -- actions --------------------------------------------------------------------

    def _action_for(self, t: Target) -> Action | None:
        if t.kind == "genrule":
            return self._genrule(t)
        if t.kind == "py_test":
            return self._py_test(t)
        if t.kind == "sh_test":
            return self._sh_test(t)
        return None

    def _genrule(self, t: Target) -> Action:
        srcs = [f for ref in t.attrs["srcs"] for f in self._files(ref)]
        tools = [f for ref in t.attrs.get("tools", ()) for f in
                 (self._runfiles(ref) if ref in self.graph.targets else (ref.path,))]
        outs = [_out_path(t.label, o) for o in t.attrs["outs"]]
        cmd = expand_command(t, t.attrs["cmd"], srcs, outs, self)
        inputs = tuple(sorted(set(srcs) | set(tools)))
        return Action(
            label=t.label, mnemonic="Genrule", argv=("/bin/sh", "-c", cmd), env=_env(t), inputs=inputs,
            outputs=tuple(sorted(outs)), deps=self._deps_of(inputs, t.label), requires=_requires(t),
            timeout_s=None, is_test=False, flaky=False, tags=tuple(t.attrs.get("tags", ())),
        )

    def _test_inputs(self, t: Target, extra: Iterable[str] = ()) -> tuple[str, ...]:
        return tuple(sorted(set(self._runfiles(t.label)) | set(extra)))

    def _py_test(self, t: Target) -> Action:
        srcs = [f for ref in t.attrs["srcs"] for f in self._files(ref)]
        if not srcs:
            raise GraphError(f"{t.location}: py_test rule {t.label}: srcs lists no test file")
        config = [p for p in _ancestor_files(t.label.package, PYTEST_CONFIG_FILES) if p in self.graph.sources.digests]
        inputs = self._test_inputs(t, config)
        argv = (*PYTEST_ARGV, *srcs, *t.attrs["args"], *self.pytest_args)
        env = dict(_env(t))
        # The checkout's code, ahead of site-packages: a package also installed in the project's
        # venv (at another version) must not shadow the one under test.
        env.setdefault("PYTHONPATH", ":".join(r or "." for r in self.graph.source_roots) or ".")
        return Action(
            label=t.label, mnemonic="PyTest", argv=argv, env=tuple(sorted(env.items())), inputs=inputs, outputs=(),
            deps=self._deps_of(inputs, t.label), requires=_requires(t), timeout_s=t.attrs["timeout"],
            is_test=True, flaky=t.attrs["flaky"], tags=tuple(t.attrs.get("tags", ())),
        )

    def _sh_test(self, t: Target) -> Action:
        script = self._files(t.attrs["srcs"][0])
        if len(script) != 1:
            raise GraphError(f"{t.location}: sh_test rule {t.label}: srcs must provide exactly one script")
        inputs = self._test_inputs(t)
        return Action(
            label=t.label, mnemonic="ShTest", argv=("/bin/sh", script[0], *t.attrs["args"]), env=_env(t),
            inputs=inputs, outputs=(), deps=self._deps_of(inputs, t.label), requires=_requires(t),
            timeout_s=t.attrs["timeout"], is_test=True, flaky=t.attrs["flaky"], tags=tuple(t.attrs.get("tags", ())),
        )

    def order(self) -> list[Label]:
        """Actions in dependency order."""
        done: set[Label] = set()
        out: list[Label] = []
        for start in sorted(self.actions):
            stack = [(start, iter(self.actions[start].deps))]
            if start in done:
                continue
            done.add(start)
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    out.append(node)
                elif nxt not in done:
                    done.add(nxt)
                    stack.append((nxt, iter(self.actions[nxt].deps)))
        return out

    def critical_path_lengths(self) -> dict[Label, int]:
        """Longest chain of actions from each action to a sink (scheduling priority)."""
        dependents: dict[Label, list[Label]] = {l: [] for l in self.actions}
        for l, a in self.actions.items():
            for d in a.deps:
                dependents[d].append(l)
        length: dict[Label, int] = {}
        for l in reversed(self.order()):
            length[l] = 1 + max((length[x] for x in dependents[l]), default=0)
        return length


def pytest_files(action: Action) -> tuple[str, ...]:
    """The test files a py_test action hands to pytest (its srcs), in argv order."""
    if action.mnemonic != "PyTest":
        return ()
    inputs = set(action.inputs)
    return tuple(a for a in action.argv[len(PYTEST_ARGV):] if a in inputs and a.endswith(".py"))


def pytest_extra_args(action: Action) -> tuple[str, ...]:
    """A py_test's arguments beyond the fixed ones and its files (`args`, `-- ARGS`)."""
    files = set(pytest_files(action))
    return tuple(a for a in action.argv[len(PYTEST_ARGV):] if a not in files)


def _out_path(label: Label, out: str) -> str:
    return f"{label.package}/{out}" if label.package else out


def _ancestor_files(package: str, names: Iterable[str]) -> list[str]:
    parts = package.split("/") if package else []
    dirs = ["/".join(parts[:i]) for i in range(len(parts) + 1)]
    return [f"{d}/{n}" if d else n for d in dirs for n in names]


def _env(t: Target) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(dict(t.attrs.get("env", {})).items()))


def _requires(t: Target) -> tuple[tuple[str, object], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                        for k, v in dict(t.attrs.get("requires", {})).items()))


_VARIABLE = re.compile(r"\$(\$|<|@|\((\w+)(?:\s+([^)]*))?\))")


def expand_command(t: Target, cmd: str, srcs: list[str], outs: list[str], ag: ActionGraph) -> str:
    """Make-style variables of genrule commands.

    `$(SRCS)`, `$(OUTS)`; `$@` the single output; `$<` the first source (make's meaning;
    Bazel requires exactly one); `$(location X)` / `$(locations X)` the files of label X;
    `$$` a literal dollar sign.
    """
    def sub(m: re.Match[str]) -> str:
        token, name, arg = m.group(1), m.group(2), m.group(3)
        if token == "$":
            return "$"
        if token == "@":
            if len(outs) != 1:
                raise GraphError(f"{t.location}: genrule {t.label}: $@ needs exactly one output, it has {len(outs)}")
            return shlex.quote(outs[0])
        if token == "<":
            if not srcs:
                raise GraphError(f"{t.location}: genrule {t.label}: $< used but srcs is empty")
            return shlex.quote(srcs[0])
        if name == "SRCS":
            return " ".join(map(shlex.quote, srcs))
        if name == "OUTS":
            return " ".join(map(shlex.quote, outs))
        if name in ("location", "locations") and arg:
            try:
                ref = Label.parse(arg.strip(), t.label.package)
            except ValueError as e:
                raise GraphError(f"{t.location}: genrule {t.label}: {e}") from None
            files = ag._files(ref)
            if name == "location" and len(files) != 1:
                raise GraphError(f"{t.location}: genrule {t.label}: $(location {arg}) expands to {len(files)} files; "
                                 "use $(locations ...)")
            return " ".join(map(shlex.quote, files))
        raise GraphError(f"{t.location}: genrule {t.label}: unknown variable '{m.group(0)}' in cmd "
                         "(known: $(SRCS) $(OUTS) $@ $< $(location X) $(locations X) $$)")

    return _VARIABLE.sub(sub, cmd)


@dataclass(frozen=True)
class Toolchain:
    """What else decides an action's result, beyond its argv, env and inputs (docs/build-and-execution.md).

    Every action: the platform, the workspace's lockfiles and the project interpreter's version.
    Python actions also: the interpreter's path and its installed distributions, so upgrading a
    dependency re-runs the tests and nothing else. The path is relative to the workspace root
    when the interpreter lies inside it (`.venv/bin/python`, `PythonEnv.fingerprint`), so
    runners that check out at different paths share results; an interpreter outside the
    workspace keys on its absolute path."""

    base: str  # canonical JSON
    python: str  # canonical JSON; base plus the project interpreter's fingerprint

    def for_action(self, action: Action) -> str:
        return self.python if action.argv[:1] == (PROJECT_PYTHON,) else self.base


def toolchain_fingerprint(sources: dict[str, Digest], python: dict[str, object] | None = None) -> Toolchain:
    """The Toolchain from the source tree's lockfiles and the project interpreter's fingerprint
    (`PythonEnv.fingerprint()`; None: the interpreter running ciopt, by version only)."""
    version = (f"{python['implementation']}-{python['version']}" if python
               else f"{sys.implementation.name}-{platform.python_version()}")
    parts: dict[str, object] = {
        "python": version,
        "platform": f"{sys.platform}-{platform.machine()}",
        "lockfiles": {name: str(sources[name]) for name in LOCKFILES if name in sources},
    }
    base = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    with_python = json.dumps({**parts, "interpreter": python or {}}, sort_keys=True, separators=(",", ":"))
    return Toolchain(base, with_python)


def action_key(action: Action, input_tree: Digest, toolchain: str, digest: str = "blake3") -> str:
    """ActionKey: the digest of the canonical encoding documented in docs/action-key.md."""
    doc = {
        "v": ACTION_KEY_VERSION,
        "mnemonic": action.mnemonic,
        "argv": list(action.argv),
        "env": [list(kv) for kv in action.env],
        "inputs": str(input_tree),
        "outputs": list(action.outputs),
        "requires": [[k, list(v) if isinstance(v, tuple) else v] for k, v in action.requires],
        "timeout_s": action.timeout_s,
        "toolchain": toolchain,
    }
    encoded = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hash_bytes(encoded, digest).hash


__all__ = ["PROJECT_PYTHON", "PYTEST_ARGV", "Action", "ActionGraph", "Toolchain", "action_key", "expand_command",
           "pytest_extra_args", "pytest_files", "toolchain_fingerprint"]
