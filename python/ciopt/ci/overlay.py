"""A CI run's configuration: the project's own config/ci-optimization.yaml with a few keys set for
this run (the shared cache URL, read-only for forks, selection on), written to a file that
`CIOPT_CONFIG` then names.

The configuration has no per-key environment overrides, and a CI file cannot edit the project's
YAML in shell without losing what the team wrote there; this merges instead, and checks the
result with the same validator as `ciopt config validate`, so a bad repository variable fails
this step with the key's name rather than the test step later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from ciopt.config import CONFIG_RELPATH, load_config, validate_file
from ciopt.errors import UserError


def _schema_keys(root: Path) -> set[str]:
    # Every key of the schema, in the dotted form `ciopt config show` prints.
    return set(load_config(root, {}).flat())


def parse_settings(pairs: Iterable[str], root: Path) -> dict[str, object]:
    """`KEY=VALUE` pairs -> {dotted key: YAML value}; an empty VALUE is null. Raises UserError."""
    keys = _schema_keys(root)
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. cache.remote.read_only=true")
        if key not in keys:
            raise UserError(f"--set {key}: not a configuration key (see `ciopt config show`)")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"--set {key}: not a YAML value: {e}") from None
    return out


def _base_file(root: Path, env: Mapping[str, str], out: Path) -> Path | None:
    named = env.get("CIOPT_CONFIG")
    # A second call in the same job must not merge onto its own earlier output.
    if named and Path(named).resolve() != out.resolve():
        return Path(named)
    own = root / CONFIG_RELPATH
    return own if own.is_file() else None


def write_overlay(root: Path, settings: Mapping[str, object], out: Path, env: Mapping[str, str]) -> Path | None:
    """Writes the merged configuration to `out`; returns the file it was merged onto (None: the
    defaults). Raises UserError naming the key at fault."""
    base = _base_file(root, env, out)
    doc: object = {}
    if base is not None:
        try:
            doc = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{base}: cannot read the configuration to merge onto: {e}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{base}: the top level is not a mapping")
    for key, value in settings.items():
        node = doc
        *sections, leaf = key.split(".")
        for name in sections:
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            node = child
        node[leaf] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# written by `ciopt ci config` from {base or 'the defaults'}\n"
                   + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    errors = validate_file(out)
    if errors:
        # Each message starts with the dotted key, which is what the user set or wrote.
        raise UserError(f"the configuration for this run ({out}) is invalid: "
                        + "; ".join(e.message for e in errors))
    return base


__all__ = ["parse_settings", "write_overlay"]
