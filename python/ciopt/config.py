"""`config/ci-optimization.yaml`: schema, loading, validation, emergency bypass.

Every optimization is opt-in: a missing file, an empty file and the shipped
default file all mean "plain builds, nothing remote, nothing skipped". The
master switch `enabled` gates remote cache, test selection, remote execution
and analytics together, so one line turns the whole layer off.

Errors must point at the exact spot (`file:line:column: dotted.key: problem`),
so the file is read with `yaml.compose`, which keeps a position on every node,
and the node tree is walked against the schema here instead of letting a
loader throw positions away.

The emergency bypass (`CIOPT_DISABLE=1` or `emergency_bypass: true`) must work
even when the configuration is what broke: with `CIOPT_DISABLE` set, an invalid
file is reported as a warning and defaults are used instead of failing.
"""

from __future__ import annotations

from ciopt.errors import UserError

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from ciopt.size import parse_size
from ciopt.store_location import default_store_path

__all__ = [
    "CONFIG_RELPATH",
    "AnalyticsConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "ExecutionConfig",
    "HardwareConfig",
    "LocalCacheConfig",
    "PythonConfig",
    "RemoteCacheConfig",
    "RemoteExecutionConfig",
    "SelectionConfig",
    "load_config",
    "validate_file",
]

CONFIG_RELPATH = Path("config/ci-optimization.yaml")
SOURCE_DEFAULT = "default"


class ConfigError(UserError):
    """A configuration problem, located as precisely as the input allows."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [str(p) for p in (self.file, self.line, self.column) if p is not None]
        return f"{':'.join(where)}: {self.message}" if where else self.message


# ----------------------------------------------------------------------------
# The effective configuration. Attribute paths equal the YAML keys
# (`config.cache.remote.backend` is `cache.remote.backend`), which is what lets
# `flat()` and `sources` use one vocabulary.


@dataclass(frozen=True)
class LocalCacheConfig:
    path: Path  # the Store directory
    max_size: int  # bytes; gc evicts down to this


@dataclass(frozen=True)
class RemoteCacheConfig:
    backend: Literal["redis", "http"] | None  # None only while url is None
    url: str | tuple[str, ...] | None  # None = no remote cache; several = shards
    read_only: bool
    timeout_s: float
    flush_timeout_s: float = 30.0  # uploads still queued at exit after this are dropped
    signing_key_env: str | None = None  # env var holding the HMAC key of ActionCache entries

    @property
    def urls(self) -> tuple[str, ...]:
        if self.url is None:
            return ()
        return (self.url,) if isinstance(self.url, str) else tuple(self.url)


@dataclass(frozen=True)
class CacheConfig:
    local: LocalCacheConfig
    remote: RemoteCacheConfig


@dataclass(frozen=True)
class PythonConfig:
    interpreter: str | None  # path or command; None = $VIRTUAL_ENV, .venv/, venv/, python3 on PATH


@dataclass(frozen=True)
class SelectionConfig:
    enabled: bool
    base: str | None  # revision to compare against; None = from the CI environment, else merge-base with origin/HEAD
    global_inputs: tuple[str, ...]  # globs; a change to one selects every test
    source_roots: tuple[str, ...] | None  # workspace-relative import roots; None = detected
    ignore: tuple[str, ...]  # globs; changes to these affect no test (docs, licences)


@dataclass(frozen=True)
class RemoteExecutionConfig:
    enabled: bool
    scheduler: str | None
    fallback_to_local: bool
    retries: int
    heartbeat_s: float
    heartbeat_timeout_s: float


@dataclass(frozen=True)
class HardwareConfig:
    costs: Mapping[str, float]  # executor class -> cost per hour
    keep_gpu_for_gpu_work: bool


@dataclass(frozen=True)
class AnalyticsConfig:
    enabled: bool
    path: Path
    retention_days: int


@dataclass(frozen=True)
class ExecutionConfig:
    jobs: int | None  # None = one per CPU
    flaky_attempts: int  # total attempts of a failing test; 1 = no retry
    sandbox: bool
    batch: bool  # several py_test files per pytest process
    batch_max_files: int  # at most this many test files per pytest process


@dataclass(frozen=True)
class Config:
    enabled: bool
    emergency_bypass: bool
    python: PythonConfig
    cache: CacheConfig
    selection: SelectionConfig
    remote_execution: RemoteExecutionConfig
    hardware: HardwareConfig
    analytics: AnalyticsConfig
    degradation: Literal["fallback", "fail"]
    execution: ExecutionConfig
    bypass: bool = False
    bypass_reason: str | None = None
    # Where each dotted key's value came from: "default",
    # "config/ci-optimization.yaml:LINE", "env NAME" or "derived from KEY".
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    file: Path | None = field(default=None, compare=False)  # the file read, if any
    warnings: tuple[str, ...] = field(default=(), compare=False)

    # What callers ask; each answers "should this component run at all".
    @property
    def use_local_cache(self) -> bool:
        return not self.bypass

    @property
    def use_remote_cache(self) -> bool:
        return self.enabled and not self.bypass and self.cache.remote.url is not None

    @property
    def use_selection(self) -> bool:
        return self.enabled and not self.bypass and self.selection.enabled

    @property
    def use_remote_execution(self) -> bool:
        return self.enabled and not self.bypass and self.remote_execution.enabled

    @property
    def record_analytics(self) -> bool:
        # The analytics features (dashboards after builds). BuildRecords themselves are
        # always written: they are cheap, and a bypassed build is exactly the one whose
        # record people want to see afterwards.
        return self.enabled and self.analytics.enabled

    def flat(self) -> dict[str, object]:
        """Every schema key -> its effective value, JSON-friendly, in schema order."""
        out: dict[str, object] = {}
        for key in _SCHEMA:
            value: object = self
            for part in key.split("."):
                value = getattr(value, part)
            out[key] = _plain(value)
        return out


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


# ----------------------------------------------------------------------------
# Schema: one entry per leaf key. A parser turns a YAML node into a value or
# raises _Invalid with the node at fault, so the message can point into
# lists and mappings, not just at the key.


class _Invalid(Exception):
    def __init__(self, message: str, node: yaml.Node) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


_Parser = Callable[[yaml.Node], object]


@dataclass(frozen=True)
class _Key:
    default: object
    parse: _Parser


_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"


def _got(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "null"
    if node.tag == _STR:
        return repr(node.value)
    return str(node.value)  # as written: true, 3, 1.5


def _scalar(node: yaml.Node, expected: str) -> object:
    if not isinstance(node, yaml.ScalarNode):
        raise _Invalid(f"expected {expected}, got {_got(node)}", node)
    return yaml.constructor.SafeConstructor().construct_object(node)


def _bool(node: yaml.Node) -> bool:
    value = _scalar(node, "true or false")
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_got(node)}", node)
    return value


def _int(minimum: int, *, nullable: bool = False) -> _Parser:
    def parse(node: yaml.Node) -> int | None:
        what = f"an integer >= {minimum}" + (" or null" if nullable else "")
        value = _scalar(node, what)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Invalid(f"expected {what}, got {_got(node)}", node)
        return value

    return parse


def _seconds(node: yaml.Node) -> float:
    value = _scalar(node, "a number of seconds > 0")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _Invalid(f"expected a number of seconds > 0, got {_got(node)}", node)
    return float(value)


def _choice(*choices: str, nullable: bool = False) -> _Parser:
    def parse(node: yaml.Node) -> str | None:
        what = f"one of {', '.join(choices)}"  # null stays unmentioned: it means "not set"
        value = _scalar(node, what)
        if value is None and nullable:
            return None
        if value not in choices:
            raise _Invalid(f"expected {what}, got {_got(node)}", node)
        return str(value)

    return parse


def _text(*, nullable: bool) -> _Parser:
    def parse(node: yaml.Node) -> str | None:
        what = "a string" + (" or null" if nullable else "")
        value = _scalar(node, what)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or value == "":
            raise _Invalid(f"expected {what}, got {_got(node)}", node)
        return value

    return parse


def _url(*schemes: str) -> _Parser:
    def parse(node: yaml.Node) -> str | None:
        value = _text(nullable=True)(node)
        if value is not None and not any(value.startswith(s + "://") for s in schemes):
            wanted = ", ".join(f"{s}://" for s in schemes)
            raise _Invalid(f"expected a URL starting with {wanted} (or null), got {value!r}", node)
        return value

    return parse


def _urls(*schemes: str) -> _Parser:
    """One URL, or a list of them (cache shards)."""
    one = _url(*schemes)

    def parse(node: yaml.Node) -> str | tuple[str, ...] | None:
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise _Invalid("expected at least one URL in the list", node)
            urls = tuple(one(item) for item in node.value)
            if any(u is None for u in urls):
                raise _Invalid("null is not a URL", node)
            backends = {_backend_of(u) for u in urls}  # type: ignore[arg-type]
            if len(backends) > 1:
                raise _Invalid("shards must all be redis or all be http", node)
            return urls  # type: ignore[return-value]
        return one(node)

    return parse


def _size(node: yaml.Node) -> int:
    value = _scalar(node, "a size like '20GiB'")
    try:
        return parse_size(value)
    except ValueError as e:
        raise _Invalid(str(e), node) from None


def _globs(node: yaml.Node) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(f"expected a list of glob patterns, got {_got(node)}", node)
    out = []
    for item in node.value:
        value = _scalar(item, "a glob pattern string")
        if not isinstance(value, str) or value == "":
            raise _Invalid(f"expected a glob pattern string, got {_got(item)}", item)
        if value.startswith("/"):
            raise _Invalid(f"glob patterns are relative to the workspace root, got {value!r}", item)
        out.append(value)
    return tuple(out)


def _optional_paths(node: yaml.Node) -> tuple[str, ...] | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return None
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(f"expected a list of directories or null, got {_got(node)}", node)
    out = []
    for item in node.value:
        value = _scalar(item, "a directory path string")
        if not isinstance(value, str) or value.startswith("/"):
            raise _Invalid(f"expected a workspace-relative directory, got {_got(item)}", item)
        out.append(value.strip("/").removeprefix("./") if value not in (".", "./") else "")
    return tuple(out)


def _costs(node: yaml.Node) -> Mapping[str, float]:
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        return MappingProxyType({})
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(f"expected a mapping of executor class to cost per hour, got {_got(node)}", node)
    out: dict[str, float] = {}
    for knode, vnode in node.value:
        name = _scalar(knode, "an executor class name")
        if not isinstance(name, str) or not name:
            raise _Invalid(f"expected an executor class name, got {_got(knode)}", knode)
        if name in out:
            raise _Invalid(f"duplicate executor class {name!r}", knode)
        cost = _scalar(vnode, "a cost >= 0")
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
            raise _Invalid(f"{name}: expected a cost >= 0, got {_got(vnode)}", vnode)
        out[name] = float(cost)
    return MappingProxyType(out)


def _path(node: yaml.Node) -> str | None:
    return _text(nullable=True)(node)


_SCHEMA: dict[str, _Key] = {
    "enabled": _Key(False, _bool),
    "emergency_bypass": _Key(False, _bool),
    "python.interpreter": _Key(None, _text(nullable=True)),
    "cache.local.path": _Key(None, _path),
    "cache.local.max_size": _Key(parse_size("20GiB"), _size),
    "cache.remote.backend": _Key(None, _choice("redis", "http", nullable=True)),
    "cache.remote.url": _Key(None, _urls("redis", "rediss", "unix", "http", "https")),
    "cache.remote.read_only": _Key(False, _bool),
    "cache.remote.timeout_s": _Key(5.0, _seconds),
    "cache.remote.flush_timeout_s": _Key(30.0, _seconds),
    "cache.remote.signing_key_env": _Key(None, _text(nullable=True)),
    "selection.enabled": _Key(False, _bool),
    "selection.base": _Key(None, _text(nullable=True)),
    "selection.global_inputs": _Key(
        ("config/ci-optimization.yaml", "pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini", "setup.py",
         "requirements*.txt", "constraints*.txt", "*.lock", "package-lock.json", "tsconfig.json"),
        _globs,
    ),
    "selection.source_roots": _Key(None, _optional_paths),
    "selection.ignore": _Key(("*.md", "*.rst", "docs/**", "LICENSE*", ".github/**"), _globs),
    "remote_execution.enabled": _Key(False, _bool),
    "remote_execution.scheduler": _Key(None, _url("tcp", "ipc")),
    "remote_execution.fallback_to_local": _Key(True, _bool),
    "remote_execution.retries": _Key(3, _int(0)),
    "remote_execution.heartbeat_s": _Key(5.0, _seconds),
    "remote_execution.heartbeat_timeout_s": _Key(30.0, _seconds),
    "hardware.costs": _Key(MappingProxyType({}), _costs),
    "hardware.keep_gpu_for_gpu_work": _Key(False, _bool),
    "analytics.enabled": _Key(False, _bool),
    "analytics.path": _Key(None, _path),
    "analytics.retention_days": _Key(90, _int(1)),
    "degradation": _Key("fallback", _choice("fallback", "fail")),
    "execution.jobs": _Key(None, _int(1, nullable=True)),
    "execution.flaky_attempts": _Key(1, _int(1)),
    "execution.sandbox": _Key(True, _bool),
    "execution.batch": _Key(True, _bool),
    "execution.batch_max_files": _Key(200, _int(1)),
}

# Every proper prefix of a schema key is a section (a mapping in the file).
_SECTIONS = frozenset(k.rsplit(".", i)[0] for k in _SCHEMA for i in range(1, k.count(".") + 1))


def _children(prefix: str) -> list[str]:
    depth = prefix.count(".") + 1 if prefix else 0
    names = {k.split(".")[depth] for k in _SCHEMA if not prefix or k.startswith(prefix + ".")}
    return sorted(names)


def _suggest(prefix: str, key: str) -> str | None:
    close = difflib.get_close_matches(key, _children(prefix), n=1, cutoff=0.6)
    if close:
        return f"{prefix}.{close[0]}" if prefix else close[0]
    # A right name at the wrong level (`jobs:` at the top) is a common slip.
    anywhere = [k for k in (*_SCHEMA, *_SECTIONS) if k.rsplit(".", 1)[-1] == key]
    return anywhere[0] if len(anywhere) == 1 else None


# ----------------------------------------------------------------------------
# Reading the file.


@dataclass
class _Read:
    values: dict[str, object] = field(default_factory=dict)
    key_nodes: dict[str, yaml.Node] = field(default_factory=dict)  # for `sources` lines
    value_nodes: dict[str, yaml.Node] = field(default_factory=dict)  # for cross-key errors
    # None: stop at the first problem (loading). A list: collect every problem
    # and carry on past it (`ciopt config validate` reports them all at once).
    errors: list[ConfigError] | None = None

    def problem(self, error: ConfigError) -> None:
        if self.errors is None:
            raise error
        self.errors.append(error)


def _error_at(display: str, node: yaml.Node, message: str, key: str | None) -> ConfigError:
    mark = node.start_mark
    return ConfigError(message, file=display, line=mark.line + 1, column=mark.column + 1, key=key)


def _walk(node: yaml.Node, prefix: str, display: str, read: _Read) -> None:
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        return  # `cache:` with nothing under it: all defaults
    if not isinstance(node, yaml.MappingNode):
        where = prefix or "top level"
        read.problem(_error_at(display, node, f"{where}: expected a mapping, got {_got(node)}", prefix or None))
        return
    seen: dict[str, int] = {}
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode) or knode.tag != _STR:
            read.problem(_error_at(display, knode, f"keys must be names, got {_got(knode)}", prefix or None))
            continue
        key = knode.value
        dotted = f"{prefix}.{key}" if prefix else key
        if key in seen:
            # YAML loaders keep the last value silently; a repeated key is
            # almost always an edit that did not do what its author thought.
            message = f"duplicate key '{dotted}' (first at line {seen[key]})"
            read.problem(_error_at(display, knode, message, dotted))
            continue
        seen[key] = knode.start_mark.line + 1
        if dotted in _SCHEMA:
            try:
                read.values[dotted] = _SCHEMA[dotted].parse(vnode)
            except _Invalid as e:
                read.problem(_error_at(display, e.node, f"{dotted}: {e.message}", dotted))
                continue
            read.key_nodes[dotted] = knode
            read.value_nodes[dotted] = vnode
        elif dotted in _SECTIONS:
            _walk(vnode, dotted, display, read)
        else:
            suggestion = _suggest(prefix, key)
            hint = f" (did you mean '{suggestion}'?)" if suggestion else ""
            read.problem(_error_at(display, knode, f"unknown key '{dotted}'{hint}", dotted))


def _check_together(read: _Read, display: str) -> None:
    """Rules that involve two keys; reported at the key the user wrote."""
    values = read.values

    def get(key: str) -> Any:
        return values.get(key, _SCHEMA[key].default)

    def fail(keys: tuple[str, ...], message: str) -> ConfigError:
        key = next((k for k in keys if k in read.value_nodes), keys[0])
        node = read.value_nodes.get(key)
        if node is None:
            return ConfigError(f"{key}: {message}", file=display, key=key)
        return _error_at(display, node, f"{key}: {message}", key)

    if get("remote_execution.enabled") and get("remote_execution.scheduler") is None:
        read.problem(fail(("remote_execution.enabled",), "true needs remote_execution.scheduler (tcp://HOST:PORT)"))
    beat, timeout = get("remote_execution.heartbeat_s"), get("remote_execution.heartbeat_timeout_s")
    if not timeout > beat:
        read.problem(fail(
            ("remote_execution.heartbeat_timeout_s", "remote_execution.heartbeat_s"),
            f"heartbeat_timeout_s ({timeout:g}) must be greater than heartbeat_s ({beat:g})",
        ))
    backend, url = get("cache.remote.backend"), get("cache.remote.url")
    first = url[0] if isinstance(url, tuple) else url
    if backend is not None and first is not None and _backend_of(first) != backend:
        read.problem(fail(("cache.remote.url",), f"a {backend} backend needs a {backend} URL, got {url!r}"))


def _backend_of(url: str) -> str:
    return "redis" if url.startswith(("redis://", "rediss://", "unix://")) else "http"


def _read_file(path: Path, display: str, *, collect: bool = False) -> _Read:
    """Reads and checks one file. Raises the first ConfigError, or with
    `collect` returns every problem in `errors` (a YAML syntax error is one)."""
    read = _Read(errors=[] if collect else None)
    try:
        return _parse_into(read, path, display)
    except ConfigError as e:
        if read.errors is None:
            raise
        read.errors.append(e)
        return read


def _parse_into(read: _Read, path: Path, display: str) -> _Read:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read configuration: {e.strerror or e}", file=display) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"configuration is not UTF-8: {e.reason}", file=display) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        if mark is None:
            raise ConfigError(f"invalid YAML: {problem}", file=display) from None
        raise ConfigError(
            f"invalid YAML: {problem}", file=display, line=mark.line + 1, column=mark.column + 1
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=display) from None
    if root is not None:  # an empty file is a valid "all defaults"
        _walk(root, "", display, read)
        # With a key already wrong its default stands in, and a cross-key rule
        # would then report a problem the user did not write.
        if not read.errors:
            _check_together(read, display)
    return read


def validate_file(path: Path, display: str | None = None) -> list[ConfigError]:
    """Every problem in the configuration file at `path`, in file order; [] = valid.

    Unlike `load_config` this neither stops at the first problem nor looks at
    the environment (`CIOPT_DISABLE` does not excuse a broken file here).
    `display` is the name used in messages (default: `path` as given).
    """
    read = _read_file(Path(path), str(path) if display is None else display, collect=True)
    assert read.errors is not None
    return sorted(read.errors, key=lambda e: (e.line or 0, e.column or 0))


# ----------------------------------------------------------------------------
# Putting it together.

_OFF_WORDS = frozenset({"", "0", "false", "no", "off"})


def _env_bypass(env: Mapping[str, str]) -> bool:
    # Any value but an explicit "off" counts: someone reaching for the
    # emergency switch must not be stopped by spelling it "yes" or "true".
    value = env.get("CIOPT_DISABLE")
    return value is not None and value.strip().lower() not in _OFF_WORDS


def _display(path: Path, workspace_root: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(workspace_root)).as_posix()
    except ValueError:
        return str(path)


def _config_path(workspace_root: Path, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The file to read and whether it was named explicitly (then it must exist)."""
    named = env.get("CIOPT_CONFIG")
    if named:
        path = Path(named).expanduser()
        return (path if path.is_absolute() else Path.cwd() / path), True
    return workspace_root / CONFIG_RELPATH, False


def _in_workspace(value: str, workspace_root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else workspace_root / path


def load_config(workspace_root: Path, env: Mapping[str, str] = os.environ) -> Config:
    """The effective configuration of the workspace at `workspace_root`.

    Reads `$CIOPT_CONFIG` if set (it must exist), else
    `<workspace_root>/config/ci-optimization.yaml` (missing = all defaults),
    then applies `CIOPT_CACHE_DIR` and `CIOPT_DISABLE`. Raises ConfigError.
    """
    workspace_root = Path(workspace_root)
    path, explicit = _config_path(workspace_root, env)
    display = _display(path, workspace_root)
    env_bypass = _env_bypass(env)
    warnings: list[str] = []

    read = _Read()
    found = path.is_file()
    if not found and explicit:
        raise ConfigError(f"CIOPT_CONFIG names {str(path)!r}, which does not exist", key="CIOPT_CONFIG")
    if found:
        try:
            read = _read_file(path, display)
        except ConfigError as e:
            if not env_bypass:
                raise
            warnings.append(f"CIOPT_DISABLE is set, so this invalid configuration was ignored: {e}")
            read = _Read()

    sources: dict[str, str] = {}
    values: dict[str, Any] = {}  # checked by the parsers above
    for key, spec in _SCHEMA.items():
        if key in read.values:
            values[key] = read.values[key]
            sources[key] = f"{display}:{read.key_nodes[key].start_mark.line + 1}"
        else:
            values[key] = spec.default
            sources[key] = SOURCE_DEFAULT

    # One definition of the store location (store_location.py) for the CLI and
    # the config; the config file's path only wins over the XDG default.
    if env.get("CIOPT_CACHE_DIR"):
        cache_path = default_store_path(env)
        sources["cache.local.path"] = "env CIOPT_CACHE_DIR"
    elif values["cache.local.path"] is not None:
        cache_path = _in_workspace(values["cache.local.path"], workspace_root)
    else:
        cache_path = default_store_path(env)

    analytics_path = (
        _in_workspace(values["analytics.path"], workspace_root)
        if values["analytics.path"] is not None
        else cache_path / "records.sqlite"
    )

    url = values["cache.remote.url"]
    backend = values["cache.remote.backend"]
    if backend is None and url is not None:
        backend = _backend_of(url[0] if isinstance(url, tuple) else url)
        # `config show` must not claim a default for a value nobody defaulted.
        sources["cache.remote.backend"] = "derived from cache.remote.url"

    reasons = []
    if env_bypass:
        reasons.append(f"CIOPT_DISABLE={env['CIOPT_DISABLE']} in the environment")
        sources["emergency_bypass"] = "env CIOPT_DISABLE"
    if values["emergency_bypass"]:
        reasons.append(f"emergency_bypass: true in {sources['emergency_bypass']}")
    bypass = bool(reasons)

    return Config(
        enabled=values["enabled"],
        emergency_bypass=bypass,
        python=PythonConfig(interpreter=values["python.interpreter"]),
        cache=CacheConfig(
            local=LocalCacheConfig(path=cache_path, max_size=values["cache.local.max_size"]),
            remote=RemoteCacheConfig(
                backend=backend,
                url=url,
                read_only=values["cache.remote.read_only"],
                timeout_s=values["cache.remote.timeout_s"],
                flush_timeout_s=values["cache.remote.flush_timeout_s"],
                signing_key_env=values["cache.remote.signing_key_env"],
            ),
        ),
        selection=SelectionConfig(
            enabled=values["selection.enabled"],
            base=values["selection.base"],
            global_inputs=tuple(values["selection.global_inputs"]),
            source_roots=values["selection.source_roots"],
            ignore=tuple(values["selection.ignore"]),
        ),
        remote_execution=RemoteExecutionConfig(
            enabled=values["remote_execution.enabled"],
            scheduler=values["remote_execution.scheduler"],
            fallback_to_local=values["remote_execution.fallback_to_local"],
            retries=values["remote_execution.retries"],
            heartbeat_s=values["remote_execution.heartbeat_s"],
            heartbeat_timeout_s=values["remote_execution.heartbeat_timeout_s"],
        ),
        hardware=HardwareConfig(
            costs=values["hardware.costs"],
            keep_gpu_for_gpu_work=values["hardware.keep_gpu_for_gpu_work"],
        ),
        analytics=AnalyticsConfig(
            enabled=values["analytics.enabled"],
            path=analytics_path,
            retention_days=values["analytics.retention_days"],
        ),
        degradation=values["degradation"],
        execution=ExecutionConfig(
            jobs=values["execution.jobs"],
            flaky_attempts=values["execution.flaky_attempts"],
            sandbox=values["execution.sandbox"],
            batch=values["execution.batch"],
            batch_max_files=values["execution.batch_max_files"],
        ),
        bypass=bypass,
        bypass_reason="; ".join(reasons) or None,
        sources=MappingProxyType(sources),
        file=path if found else None,
        warnings=tuple(warnings),
    )

