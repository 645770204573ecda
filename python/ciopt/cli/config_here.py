"""The configuration of the workspace around the current directory, for commands that also
run outside any workspace (daemons, `ciopt hardware`): None there, and the defaults apply."""

from __future__ import annotations

from pathlib import Path

import click

from ciopt.cli.errors import fail
from ciopt.config import Config, ConfigError, load_config
from ciopt.workspace_root import WorkspaceNotFound, find_workspace_root


def load_reporting(root: Path) -> Config:
    """The configuration of `root`; a broken file is a one-line error (exit 2), warnings go to stderr."""
    try:
        cfg = load_config(root)
    except ConfigError as e:
        fail(str(e))
    for warning in cfg.warnings:
        click.echo(f"ciopt: warning: {warning}", err=True)
    return cfg


def config_here() -> Config | None:
    """None outside a workspace; a broken configuration file is a one-line error (exit 2)."""
    try:
        root = find_workspace_root(Path.cwd())
    except WorkspaceNotFound:
        return None
    return load_reporting(root)


__all__ = ["config_here", "load_reporting"]
