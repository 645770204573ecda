"""The project's Python: which interpreter runs its tests, and what it has installed.

ciopt must never run a project's tests with its own interpreter: ciopt's own dependencies
(click, pyyaml, ...) would shadow the project's, and the project's dependencies would be
missing. The interpreter is chosen, first match wins:

    1. `python.interpreter` in the configuration (a path, or a command looked up on PATH)
    2. `$VIRTUAL_ENV`
    3. `.venv/bin/python` or `venv/bin/python` at the workspace root
    4. `python3` on PATH, with ciopt's own virtualenv taken off PATH

What the interpreter has installed is part of every Python action's key (the toolchain):
`pip install -U somedep` re-runs the tests. Asking the interpreter costs ~50 ms, so the
answer is kept in the store and reused while the interpreter binary and every site-packages
directory keep their mtimes (installing or removing a distribution adds or removes a
`*.dist-info` directory, which changes its parent directory's mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ciopt.errors import UserError

PROBE_VERSION = 2
# Runs inside the project's interpreter: standard library only, prints one JSON document.
_PROBE = r"""
import importlib.metadata as md, json, os, platform, re, site, sys
from urllib.parse import unquote, urlparse
root = os.path.realpath(sys.argv[1])
dists = set()
for d in md.distributions():
    name = d.metadata["Name"]
    if not name:
        continue
    name = re.sub(r"[-_.]+", "-", name).lower()
    version = d.version
    # An editable install of the workspace itself: its version (setuptools-scm's .devN+gHASH)
    # changes with every commit while its code is tested from the checkout anyway.
    try:
        direct = json.loads(d.read_text("direct_url.json") or "null")
    except ValueError:
        direct = None
    if direct and direct.get("dir_info", {}).get("editable"):
        url = urlparse(direct.get("url", ""))
        path = os.path.realpath(unquote(url.path)) if url.scheme == "file" else ""
        if path == root or path.startswith(root + os.sep):
            version = "<editable in workspace>"
    dists.add(f"{name}=={version}")
sites = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
if site.ENABLE_USER_SITE and site.USER_SITE:
    sites.append(site.USER_SITE)
print(json.dumps({
    "executable": sys.executable,
    "version": platform.python_version(),
    "implementation": sys.implementation.name,
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "site_dirs": [s for s in sites if os.path.isdir(s)],
    "distributions": sorted(dists),
}))
"""


class InterpreterError(UserError):
    """The configured or detected interpreter does not exist or does not run."""


@dataclass(frozen=True)
class PythonEnv:
    """One project interpreter and what it has installed."""

    executable: str  # absolute, symlinks kept: a venv's bin/python must not resolve to the base
    reason: str  # why this one was chosen, for `ciopt config show`
    version: str  # "3.11.7"
    implementation: str  # "cpython"
    prefix: str  # sys.prefix: the venv directory for a venv
    site_dirs: tuple[str, ...]  # site-packages directories (their mtimes key the cache)
    distributions: tuple[str, ...]  # "name==version", normalized names, sorted

    @property
    def bin_dir(self) -> str:
        return os.path.dirname(self.executable)

    @property
    def is_venv(self) -> bool:
        return os.path.isfile(os.path.join(self.prefix, "pyvenv.cfg"))

    @property
    def minor_version(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def fingerprint(self, root: Path | None = None) -> dict[str, object]:
        """What of the interpreter decides a Python action's result (part of its ActionKey).

        An interpreter inside the workspace (`.venv/bin/python`) is named relative to it: CI
        runners and developers check out at different paths, and with the absolute path in the
        key no two of them could ever share a test result (found by benches/ci_replay.py).
        Version and installed distributions are what decide a result; they stay.
        """
        executable = self.executable
        if root is not None:
            try:
                executable = Path(self.executable).relative_to(root).as_posix()
            except ValueError:
                pass
        return {
            "executable": executable,
            "implementation": self.implementation,
            "version": self.version,
            "distributions": hashlib.sha256("\n".join(self.distributions).encode()).hexdigest(),
        }

    def to_json(self) -> dict[str, object]:
        return {"executable": self.executable, "reason": self.reason, "version": self.version,
                "implementation": self.implementation, "prefix": self.prefix, "venv": self.is_venv,
                "site_dirs": list(self.site_dirs), "distributions": len(self.distributions)}


def _own_venv() -> str | None:
    """ciopt's own virtualenv (or pipx/uv tool environment), when it runs from one."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


def _path_without_own_venv(env: Mapping[str, str]) -> str:
    own = _own_venv()
    parts = env.get("PATH", os.defpath).split(os.pathsep)
    if own:
        own_bin = os.path.join(own, "bin")
        parts = [p for p in parts if os.path.abspath(p) != os.path.abspath(own_bin)]
    return os.pathsep.join(parts)


def choose_interpreter(root: Path, configured: str | None, configured_at: str | None,
                       env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(absolute interpreter path, why it was chosen), before asking it anything."""
    if configured:
        where = f"python.interpreter in {configured_at}" if configured_at else "python.interpreter"
        candidate = os.path.expanduser(configured)
        if os.sep in candidate:
            path = candidate if os.path.isabs(candidate) else str(root / candidate)
            if not os.path.isfile(path):
                raise InterpreterError(f"{where}: {configured!r} does not exist")
            return os.path.abspath(path), where
        found = shutil.which(candidate, path=_path_without_own_venv(env))
        if found is None:
            raise InterpreterError(f"{where}: {configured!r} is not on PATH")
        return os.path.abspath(found), f"{where} (found on PATH)"
    venv = env.get("VIRTUAL_ENV")
    if venv:
        path = os.path.join(venv, "bin", "python")
        own = _own_venv()
        # `source ciopt-venv/bin/activate; ciopt test` must not test with ciopt's packages
        # unless the project really lives there (ciopt installed into the project's venv).
        if os.path.isfile(path) and not (own and os.path.realpath(venv) == os.path.realpath(own)
                                         and _has_local_venv(root)):
            return os.path.abspath(path), "$VIRTUAL_ENV"
    for name in (".venv", "venv"):
        path = root / name / "bin" / "python"
        if path.is_file():
            return os.path.abspath(path), f"{name}/ at the workspace root"
    found = shutil.which("python3", path=_path_without_own_venv(env))
    if found is None:
        raise InterpreterError("no Python interpreter found: set python.interpreter in "
                               "config/ci-optimization.yaml, activate the project's virtualenv, or create .venv/")
    return os.path.abspath(found), "python3 on PATH (ciopt's own virtualenv excluded)"


def _has_local_venv(root: Path) -> bool:
    return any((root / n / "bin" / "python").is_file() for n in (".venv", "venv"))


def _stat_key(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [0, 0]
    return [st.st_mtime_ns, st.st_size]


def probe(executable: str, reason: str, root: Path, cache_dir: Path | None) -> PythonEnv:
    """Ask `executable` what it is and what it has installed; cached under `cache_dir`."""
    cache_file = None
    identity = [PROBE_VERSION, executable, os.path.realpath(executable), _stat_key(os.path.realpath(executable)),
                _stat_key(os.path.join(os.path.dirname(os.path.dirname(executable)), "pyvenv.cfg")), str(root)]
    if cache_dir is not None:
        name = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]
        cache_file = cache_dir / "python-envs" / f"{name}.json"
        try:
            cached = json.loads(cache_file.read_text())
            if cached["identity"] == identity and all(_stat_key(d) == m for d, m in cached["site_mtimes"]):
                return _env(cached["probe"], executable, reason)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        proc = subprocess.run([executable, "-I", "-c", _PROBE, str(root)], capture_output=True, text=True,
                              timeout=60, cwd="/", env={"PATH": os.environ.get("PATH", os.defpath)})
    except (OSError, subprocess.SubprocessError) as e:
        raise InterpreterError(f"cannot run the project interpreter {executable} ({reason}): {e}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InterpreterError(f"the project interpreter {executable} ({reason}) failed: {last}")
    data = json.loads(proc.stdout)
    if cache_file is not None:
        record = {"identity": identity, "probe": data,
                  "site_mtimes": [[d, _stat_key(d)] for d in data["site_dirs"]]}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only cache: probe again next time
    return _env(data, executable, reason)


def _env(data: dict[str, object], executable: str, reason: str) -> PythonEnv:
    # The interpreter's own sys.executable: a pyenv or asdf shim on PATH is a shell script that
    # costs ~50 ms per start. A venv's sys.executable is its bin/python, symlink kept.
    real = str(data.get("executable") or "")
    return PythonEnv(
        executable=real if os.path.isabs(real) and os.path.isfile(real) else executable, reason=reason, version=str(data["version"]),
        implementation=str(data["implementation"]), prefix=str(data["prefix"]),
        site_dirs=tuple(data["site_dirs"]),  # type: ignore[arg-type]
        distributions=tuple(data["distributions"]),  # type: ignore[arg-type]
    )


def host_interpreters(root: Path, cache_dir: Path | None, env: Mapping[str, str] = os.environ
                      ) -> dict[str, PythonEnv]:
    """Every Python a remote executor can offer, by minor version ("3.11"): the one the rules
    above choose first, then each `python3.N` on PATH (ciopt's own venv excluded)."""
    found: dict[str, PythonEnv] = {}
    candidates: list[tuple[str, str]] = []
    try:
        candidates.append(choose_interpreter(root, None, None, env))
    except InterpreterError:
        pass
    path = _path_without_own_venv(env)
    for minor in range(6, 20):
        exe = shutil.which(f"python3.{minor}", path=path)
        if exe:
            candidates.append((os.path.abspath(exe), f"python3.{minor} on PATH"))
    for exe, reason in candidates:
        try:
            penv = probe(exe, reason, root, cache_dir)
        except (InterpreterError, ValueError):
            continue
        found.setdefault(penv.minor_version, penv)
    return found


def resolve_python_env(root: Path, configured: str | None, configured_at: str | None, cache_dir: Path | None,
                       env: Mapping[str, str] = os.environ) -> PythonEnv:
    """The project's PythonEnv: chosen by the rules above, probed (or read from the cache)."""
    executable, reason = choose_interpreter(root, configured, configured_at, env)
    return probe(executable, reason, root, cache_dir)


__all__ = ["InterpreterError", "PythonEnv", "choose_interpreter", "host_interpreters", "probe", "resolve_python_env"]
