"""Where the local Store lives when nobody says otherwise."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_store_path(env: Mapping[str, str] = os.environ) -> Path:
    """`$CIOPT_CACHE_DIR`, else `$XDG_CACHE_HOME/ciopt`, else `~/.cache/ciopt`."""
    if env.get("CIOPT_CACHE_DIR"):
        return Path(env["CIOPT_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "ciopt"
