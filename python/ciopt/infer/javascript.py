"""Resolving JavaScript/TypeScript import specifiers to workspace files.

The extension (`ciopt._native.extract_imports`) finds the specifiers; this module
maps each one to the file(s) it names, the way Node and the TypeScript compiler
would, but using only the set of workspace files (no filesystem probing), so a
resolution is a pure function of the tree at one revision.

What is resolved:
  - relative specifiers ("./x", "../y/z", ".") against the importer's directory:
    the exact file, then with an extension added, then as a directory
    (package.json "types"/"module"/"main", else index.<ext>);
  - TypeScript's ESM convention: "./x.js" may name "x.ts" (".mjs" -> ".mts", ...);
  - tsconfig/jsconfig `paths` (with one `*` wildcard) and `baseUrl` for bare specifiers;
  - workspace packages by their package.json "name" (monorepos), when the caller
    passes the result of `load_js_packages`.
Everything else bare ("react", "@scope/pkg", "node:fs", URLs) is external: [].
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "JS_EXTENSIONS",
    "JsPackage",
    "JsPackages",
    "TsConfig",
    "load_js_packages",
    "load_tsconfigs",
    "parse_jsonc",
    "resolve_js",
    "resolve_many",
    "tsconfig_for",
]

# Order matters: it is the order TypeScript (then Node) tries them in.
JS_EXTENSIONS: tuple[str, ...] = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".json", ".mts", ".cts")

# A ".js" written in TS source usually names the ".ts" file it compiles from.
_TS_SOURCE_FOR = {
    ".js": (".ts", ".tsx", ".d.ts"),
    ".jsx": (".tsx",),
    ".mjs": (".mts", ".d.mts"),
    ".cjs": (".cts", ".d.cts"),
}
# A JS file's type declarations: a TS importer depends on them as much as on the JS.
_DECLARATION_FOR = {".js": ".d.ts", ".mjs": ".d.mts", ".cjs": ".d.cts"}

_CONFIG_NAMES = ("tsconfig.json", "jsconfig.json")  # tsconfig wins when both exist
_MAX_EXTENDS_DEPTH = 8  # "extends" chains are short in practice; this only stops cycles
_PACKAGE_ENTRY_FIELDS = ("types", "typings", "module", "main")


@dataclass(frozen=True)
class TsConfig:
    """The module-resolution part of one tsconfig.json/jsconfig.json, `extends` applied.

    All paths are workspace-relative ('' is the root): `base_dir` is the config's
    directory, `base_url` the resolved `compilerOptions.baseUrl`, and each `paths`
    substitution is already resolved against the directory TypeScript resolves it
    against (baseUrl when set, else the directory of the config that declared it).
    """

    base_dir: str
    base_url: str | None
    paths: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class JsPackage:
    """A package.json inside the workspace: its directory, name and entry files."""

    directory: str
    name: str | None
    entries: tuple[str, ...]  # workspace-relative files named by types/typings/module/main


@dataclass(frozen=True)
class JsPackages:
    """Workspace package.json files, by directory and by package name."""

    by_dir: dict[str, JsPackage] = field(default_factory=dict)
    by_name: dict[str, JsPackage] = field(default_factory=dict)


# --------------------------------------------------------------------------- JSON with comments

def parse_jsonc(text: str) -> object:
    """JSON with // and /* */ comments and trailing commas (what tsconfig files are written in).

    Comments and trailing commas are removed by one scan that tracks strings, so a
    "//" inside a string (a URL, a glob) survives. Raises ValueError on bad JSON.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            out.append(c)
            i += 1
    cleaned = re.sub(r",(\s*[}\]])", r"\1", "".join(out))
    return json.loads(cleaned)


# --------------------------------------------------------------------------- tsconfig loading

def _norm(path: str) -> str | None:
    """Normalised workspace-relative path; None when it leaves the workspace."""
    p = posixpath.normpath(path) if path else "."
    if p == ".":
        return ""
    if p == ".." or p.startswith(("../", "/")):
        return None
    return p


def _join(directory: str, rel: str) -> str | None:
    return _norm(posixpath.join(directory, rel) if directory else rel)


def _read_json(root: Path, rel: str) -> dict[str, object] | None:
    try:
        data = parse_jsonc((root / rel).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, UnicodeDecodeError):
        # A broken or unreadable config must not stop inference; bare imports it
        # would have mapped just stay external (listed as a blind spot).
        return None
    return data if isinstance(data, dict) else None


def _extends_target(config_dir: str, spec: str, files: frozenset[str]) -> str | None:
    """The workspace file an `extends` value names, if it is in the workspace."""
    if spec.startswith((".", "/")):
        base = _join(config_dir, spec)
        if base is None:
            return None
        for candidate in (base, base + ".json", posixpath.join(base, "tsconfig.json")):
            if candidate in files:
                return candidate
        return None
    # A package ("@tsconfig/node20/tsconfig.json"): only when vendored in node_modules.
    d: str | None = config_dir
    while d is not None:
        nm = posixpath.join(d, "node_modules", spec) if d else posixpath.join("node_modules", spec)
        for candidate in (nm, nm + ".json", posixpath.join(nm, "tsconfig.json")):
            if candidate in files:
                return candidate
        d = None if d == "" else posixpath.dirname(d)
    return None


def _compiler_options(
    root: Path, rel: str, files: frozenset[str], depth: int, seen: frozenset[str]
) -> tuple[str | None, dict[str, list[str]] | None, str | None]:
    """(baseUrl, paths, directory `paths` are relative to when baseUrl is unset) of one config,
    inherited from its `extends` chain. Values are resolved against the config that declares them."""
    data = _read_json(root, rel)
    if data is None:
        return None, None, None
    config_dir = posixpath.dirname(rel)
    base_url: str | None = None
    paths: dict[str, list[str]] | None = None
    paths_dir: str | None = None
    extends = data.get("extends")
    parents: list[str] = []
    if isinstance(extends, str):
        parents = [extends]
    elif isinstance(extends, list):
        parents = [e for e in extends if isinstance(e, str)]
    if depth < _MAX_EXTENDS_DEPTH:
        # Later entries of an `extends` array override earlier ones (TypeScript 5.0).
        for spec in parents:
            target = _extends_target(config_dir, spec, files)
            if target is None or target in seen:
                continue
            p_base, p_paths, p_dir = _compiler_options(root, target, files, depth + 1, seen | {target})
            if p_base is not None:
                base_url = p_base
            if p_paths is not None:
                paths, paths_dir = p_paths, p_dir
    options = data.get("compilerOptions")
    if isinstance(options, dict):
        own_base = options.get("baseUrl")
        if isinstance(own_base, str):
            base_url = _join(config_dir, own_base)
        own_paths = options.get("paths")
        if isinstance(own_paths, dict):
            paths = {
                k: [v for v in vs if isinstance(v, str)]
                for k, vs in own_paths.items()
                if isinstance(k, str) and isinstance(vs, list)
            }
            paths_dir = config_dir
    return base_url, paths, paths_dir


def load_tsconfigs(root: Path, files: frozenset[str]) -> dict[str, TsConfig]:
    """Directory -> the tsconfig.json (else jsconfig.json) in it, for every such directory.

    Use `tsconfig_for` to find the config governing a file (the nearest ancestor's).
    Configs under node_modules are skipped: they govern third-party code.
    """
    configs: dict[str, TsConfig] = {}
    by_dir: dict[str, str] = {}
    for f in files:
        name = posixpath.basename(f)
        if name not in _CONFIG_NAMES or "node_modules" in f.split("/"):
            continue
        d = posixpath.dirname(f)
        if d not in by_dir or _CONFIG_NAMES.index(name) < _CONFIG_NAMES.index(posixpath.basename(by_dir[d])):
            by_dir[d] = f
    for d, rel in sorted(by_dir.items()):
        base_url, paths, paths_dir = _compiler_options(root, rel, files, 0, frozenset({rel}))
        resolved: dict[str, list[str]] = {}
        # TypeScript: `paths` substitutions are relative to baseUrl when one is set,
        # otherwise to the directory of the config that declared `paths`.
        anchor = base_url if base_url is not None else (paths_dir if paths_dir is not None else d)
        for pattern, targets in (paths or {}).items():
            out = [t for t in (_join(anchor, s) for s in targets) if t is not None]
            if out:
                resolved[pattern] = out
        configs[d] = TsConfig(base_dir=d, base_url=base_url, paths=resolved)
    return configs


def tsconfig_for(importer: str, configs: Mapping[str, TsConfig]) -> TsConfig | None:
    """The config of the nearest directory above `importer` (a workspace-relative file) that has one."""
    d = posixpath.dirname(importer)
    while True:
        if d in configs:
            return configs[d]
        if d == "":
            return None
        d = posixpath.dirname(d)


# --------------------------------------------------------------------------- workspace packages

def load_js_packages(root: Path, files: frozenset[str]) -> JsPackages:
    """Every package.json outside node_modules: entry files (for directory imports) and
    names (so `import "@acme/ui"` in a monorepo resolves to packages/ui)."""
    by_dir: dict[str, JsPackage] = {}
    by_name: dict[str, JsPackage] = {}
    for f in sorted(files):
        if posixpath.basename(f) != "package.json" or "node_modules" in f.split("/"):
            continue
        data = _read_json(root, f)
        if data is None:
            continue
        d = posixpath.dirname(f)
        entries: list[str] = []
        for key in _PACKAGE_ENTRY_FIELDS:
            value = data.get(key)
            if isinstance(value, str):
                for hit in _resolve_path(_join(d, value), files, None):
                    if hit not in entries:
                        entries.append(hit)
        raw_name = data.get("name")
        name = raw_name if isinstance(raw_name, str) else None
        pkg = JsPackage(directory=d, name=name, entries=tuple(entries))
        by_dir[d] = pkg
        if name:
            by_name.setdefault(name, pkg)  # first (shallowest path-sorted) wins on duplicates
    return JsPackages(by_dir=by_dir, by_name=by_name)


# --------------------------------------------------------------------------- resolution

def _with_companions(hit: str, files: frozenset[str]) -> list[str]:
    """A resolved file plus its JS/declaration twin: "x.js" with "x.d.ts" beside it, or
    "x.d.ts" with "x.js". TypeScript reads one, the runtime the other; both are inputs."""
    out = [hit]
    for js_ext, dts_ext in _DECLARATION_FOR.items():
        if hit.endswith(dts_ext):
            twin = hit[: -len(dts_ext)] + js_ext
        elif hit.endswith(js_ext):
            twin = hit[: -len(js_ext)] + dts_ext
        else:
            continue
        if twin in files and twin not in out:
            out.append(twin)
    return out


def _resolve_file(base: str, files: frozenset[str]) -> list[str]:
    if base in files:
        out = _with_companions(base, files)
        # "./x.js" in TS source: when x.ts also exists, it is the file the compiler reads.
        ext = posixpath.splitext(base)[1]
        for ts_ext in _TS_SOURCE_FOR.get(ext, ()):
            ts = base[: -len(ext)] + ts_ext
            if ts in files and ts not in out:
                out.append(ts)
        return out
    ext = posixpath.splitext(base)[1]
    for ts_ext in _TS_SOURCE_FOR.get(ext, ()):
        ts = base[: -len(ext)] + ts_ext
        if ts in files:
            return [ts]
    for e in JS_EXTENSIONS:
        if base + e in files:
            return _with_companions(base + e, files)
    return []


def _resolve_dir(base: str, files: frozenset[str], packages: JsPackages | None) -> list[str]:
    pkg = packages.by_dir.get(base) if packages is not None else None
    if pkg is not None and pkg.entries:
        return list(pkg.entries)
    prefix = f"{base}/index" if base else "index"
    for e in JS_EXTENSIONS:
        if prefix + e in files:
            return _with_companions(prefix + e, files)
    return []


def _resolve_path(base: str | None, files: frozenset[str], packages: JsPackages | None,
                  *, directory_only: bool = False) -> list[str]:
    """Node/TS "load as file, then as directory" for a workspace-relative path."""
    if base is None:
        return []
    if not directory_only and base:
        hits = _resolve_file(base, files)
        if hits:
            return hits
    return _resolve_dir(base, files, packages)


def _match_paths(spec: str, paths: Mapping[str, list[str]]) -> list[str]:
    """Substitutions of the `paths` pattern that matches `spec` best (TypeScript's rule:
    an exact pattern wins, else the wildcard pattern with the longest prefix)."""
    if spec in paths:
        return list(paths[spec])
    best: tuple[int, list[str]] | None = None
    for pattern, targets in paths.items():
        if pattern.count("*") != 1:
            continue
        prefix, suffix = pattern.split("*")
        fits = spec.startswith(prefix) and spec.endswith(suffix) and len(spec) >= len(prefix) + len(suffix)
        if fits and (best is None or len(prefix) > best[0]):
            star = spec[len(prefix): len(spec) - len(suffix)]
            best = (len(prefix), [t.replace("*", star, 1) for t in targets])
    return best[1] if best else []


def _split_package(spec: str) -> tuple[str, str]:
    """("@scope/name", "sub/path") or ("name", "sub/path") of a bare specifier."""
    parts = spec.split("/")
    n = 2 if spec.startswith("@") else 1
    return "/".join(parts[:n]), "/".join(parts[n:])


def resolve_js(
    importer: str,
    spec: str,
    files: frozenset[str],
    tsconfig: TsConfig | None,
    packages: JsPackages | None = None,
) -> list[str]:
    """The workspace files `spec`, imported from `importer`, resolves to ([] when external).

    Usually one file; two when a JS file has a `.d.ts` beside it, or when "./x.js"
    names both x.js and x.ts (both can be what a build reads). `packages` (from
    `load_js_packages`) enables package.json entry points and workspace package names;
    without it a directory import falls back to its index file.
    """
    # Bundler suffixes ("./x.svg?raw", "./a#frag") are not part of the path.
    spec = re.split(r"[?#]", spec, maxsplit=1)[0] if not spec.startswith("#") else spec
    if not spec or "://" in spec or spec.startswith(("node:", "data:", "/")):
        return []
    importer_dir = posixpath.dirname(importer)
    if spec in (".", "..") or spec.startswith(("./", "../")):
        directory_only = spec.endswith("/") or spec in (".", "..")
        return _resolve_path(_join(importer_dir, spec), files, packages, directory_only=directory_only)
    if tsconfig is not None:
        for target in _match_paths(spec, tsconfig.paths):
            hits = _resolve_path(_norm(target), files, packages)
            if hits:
                return hits
        if tsconfig.base_url is not None:
            hits = _resolve_path(_join(tsconfig.base_url, spec), files, packages)
            if hits:
                return hits
    if packages is not None:
        name, sub = _split_package(spec)
        pkg = packages.by_name.get(name)
        if pkg is not None:
            if not sub:
                return list(pkg.entries) or _resolve_dir(pkg.directory, files, None)
            return _resolve_path(_join(pkg.directory, sub), files, packages)
    return []


def resolve_many(importer: str, specs: Iterable[str], files: frozenset[str], tsconfig: TsConfig | None,
                 packages: JsPackages | None = None) -> list[str]:
    """Union of `resolve_js` over several specifiers, in first-seen order."""
    out: dict[str, None] = {}
    for spec in specs:
        for f in resolve_js(importer, spec, files, tsconfig, packages):
            out.setdefault(f, None)
    return list(out)
