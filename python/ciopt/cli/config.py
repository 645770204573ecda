"""`ciopt config`: the effective configuration, where each value came from, and a checker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ciopt.cli.errors import EXIT_USAGE, exit_with, fail
from ciopt.cli.output import emit_json, output_option
from ciopt.cli.config_here import load_reporting
from ciopt.config import CONFIG_RELPATH, Config, validate_file
from ciopt.size import format_size
from ciopt.errors import UserError
from ciopt.workspace_root import WorkspaceNotFound, find_workspace_root

if TYPE_CHECKING:
    from ciopt.exec.python_env import PythonEnv


@click.group()
def config() -> None:
    """Show or check config/ci-optimization.yaml.

    \b
      ciopt config show              every effective value and where it came from
      ciopt config show -o json      the same as one JSON document
      ciopt config validate [FILE]   check a configuration file (exit 2 on errors)

    The file is config/ci-optimization.yaml in the workspace root (the nearest
    parent holding it, else the git root), or $CIOPT_CONFIG.
    """


def _effective_switches(cfg: Config) -> dict[str, bool]:
    return {
        "local_cache": cfg.use_local_cache,
        "remote_cache": cfg.use_remote_cache,
        "selection": cfg.use_selection,
        "remote_execution": cfg.use_remote_execution,
        "analytics": cfg.record_analytics,
    }


def _format_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@config.command()
@output_option
def show(output: str) -> None:
    """Print every effective value and its source: default, FILE:LINE or env VAR.

    Also says whether the emergency bypass is on, and why.
    """
    cwd = Path.cwd()
    try:
        root = find_workspace_root(cwd)
    except WorkspaceNotFound:
        root = cwd  # showing the defaults needs no workspace
    cfg = load_reporting(root)

    values = cfg.flat()
    python, python_error = _python(root, cfg)
    if output == "json":
        emit_json({
            "workspace": str(root),
            "python": python.to_json() if python is not None else {"error": python_error},
            "file": str(cfg.file) if cfg.file is not None else None,
            "bypass": cfg.bypass,
            "bypass_reason": cfg.bypass_reason,
            "effective": _effective_switches(cfg),
            "values": {key: {"value": value, "source": cfg.sources[key]} for key, value in values.items()},
            "warnings": list(cfg.warnings),
        })
        return

    click.echo(f"workspace: {root}")
    click.echo(f"file:      {cfg.file if cfg.file is not None else f'none ({CONFIG_RELPATH} not found: all defaults)'}")
    if cfg.bypass:
        click.echo(f"bypass:    ON ({cfg.bypass_reason}): no cache read or written, no selection, nothing remote")
    else:
        click.echo("bypass:    off")
    if python is not None:
        click.echo(f"python:    {python.executable} ({python.implementation} {python.version}, "
                   f"{len(python.distributions)} distributions) <- {python.reason}")
    else:
        click.echo(f"python:    NONE: {python_error}")
    switches = _effective_switches(cfg)
    click.echo("in effect: " + ", ".join(f"{name} {'on' if on else 'off'}" for name, on in switches.items()))
    click.echo("")
    shown = {key: _format_value(value) for key, value in values.items()}
    shown["cache.local.max_size"] = format_size(cfg.cache.local.max_size)  # as it is written in the file
    key_width = max(map(len, shown))
    value_width = min(max(map(len, shown.values())), 40)
    for key, text in shown.items():
        click.echo(f"{key:<{key_width}}  {text:<{value_width}}  # {cfg.sources[key]}")


def _python(root: Path, cfg: Config) -> tuple[PythonEnv | None, str | None]:
    """The project interpreter py_test would run with, or why there is none."""
    from ciopt.exec.python_env import resolve_python_env

    try:
        cache = None if cfg.bypass else Path(cfg.cache.local.path)
        return resolve_python_env(root, cfg.python.interpreter, cfg.sources.get("python.interpreter"), cache), None
    except UserError as e:
        return None, str(e)


def _default_target() -> tuple[Path | None, str]:
    """The file `validate` checks without an argument, and its display name."""
    named = os.environ.get("CIOPT_CONFIG")
    if named:
        return Path(named).expanduser(), named
    cwd = Path.cwd()
    try:
        root = find_workspace_root(cwd)
    except WorkspaceNotFound as e:
        fail(f"{e}; give the file to check: ciopt config validate FILE")
    path = root / CONFIG_RELPATH
    try:
        display = os.path.relpath(path, cwd)
    except ValueError:
        display = str(path)
    return (path if path.is_file() else None), display


@config.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@output_option
def validate(file: Path | None, output: str) -> None:
    """Check a configuration file: `ok: FILE`, or every error as FILE:LINE:COLUMN: KEY: PROBLEM (exit 2).

    FILE defaults to $CIOPT_CONFIG, else config/ci-optimization.yaml in the workspace root.
    """
    if file is not None:
        path: Path | None = file
        display = str(file)
    else:
        path, display = _default_target()
        if path is None:  # no file in the workspace: the defaults, which are valid
            if output == "json":
                emit_json({"file": None, "ok": True, "errors": []})
            else:
                click.echo(f"ok: {display} does not exist; all defaults apply")
            return
    errors = validate_file(path, display)
    if output == "json":
        emit_json({
            "file": display,
            "ok": not errors,
            "errors": [
                {"file": e.file, "line": e.line, "column": e.column, "key": e.key, "message": e.message,
                 "text": str(e)}
                for e in errors
            ],
        })
    elif not errors:
        click.echo(f"ok: {display}")
    for e in errors:
        click.echo(f"ciopt: error: {e}", err=True)
    if errors:
        exit_with(EXIT_USAGE)
