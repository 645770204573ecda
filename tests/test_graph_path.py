"""`ciopt graph PATH`: only the files under PATH, with workspace-relative paths and imports
resolved against the whole workspace and its source roots (as `ruff analyze graph PATH`).

The regression: PATH used to become a root of its own, so `ciopt graph django` in a Django
checkout saw `django/db/models.py` as `db/models.py` and left every `django.*` import unresolved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildws import make_workspace
from conftest import CliRunner

# Absolute and relative imports across subpackages, in two layouts; tests outside the package
# import into it, and the package imports a top-level module outside PATH.
PACKAGE = {
    "__init__.py": "",
    "core/__init__.py": "from .models import Model\n",
    "core/models.py": "import {top}.settings\n",
    "api/__init__.py": "",
    "api/views.py": "from {top}.core import models\nfrom ..core.models import Model\nimport helpers\n",
    "api/serializers.py": "from {top}.api.views import *\nfrom . import views\n",
}


def files_for(prefix: str, top: str) -> dict[str, str]:
    out = {f"{prefix}{top}/{rel}": text.format(top=top) for rel, text in PACKAGE.items()}
    out[f"{prefix}{top}/settings.py"] = "DEBUG = False\n"
    out[f"{prefix}helpers.py"] = "X = 1\n"
    out["tests/test_views.py"] = f"from {top}.api import views\n\ndef test_x():\n    assert views\n"
    return out


def graph(cli: CliRunner, cwd: Path, *args: str) -> dict:
    proc = cli("graph", *args, "-o", "json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("prefix", ["", "src/"], ids=["flat", "src-layout"])
def test_path_restricts_files_and_keeps_whole_tree_edges(cli: CliRunner, tmp_path: Path, prefix: str) -> None:
    ws = make_workspace(tmp_path, files_for(prefix, "mypkg"))
    whole = graph(cli, ws)
    part = graph(cli, ws, f"{prefix}mypkg")

    under = {f: deps for f, deps in whole["files"].items() if f.startswith(f"{prefix}mypkg/")}
    assert part["files"] == under
    # Workspace-relative paths, and imports resolved (not "core/models.py", not unresolved).
    views = part["files"][f"{prefix}mypkg/api/views.py"]
    assert f"{prefix}mypkg/core/models.py" in views
    assert f"{prefix}mypkg/core/__init__.py" in views
    assert f"{prefix}helpers.py" in views  # a dependency outside PATH is kept, as ruff does
    assert part["files"][f"{prefix}mypkg/core/models.py"] == [f"{prefix}mypkg/__init__.py",
                                                              f"{prefix}mypkg/settings.py"]
    assert part["external"] == {}
    assert "tests/test_views.py" not in part["files"]
    assert part["test_files"] == []
    assert part["source_roots"] == whole["source_roots"]


def test_subpackage_and_file_paths(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, files_for("", "mypkg"))
    whole = graph(cli, ws)
    api = graph(cli, ws, "mypkg/api")
    assert sorted(api["files"]) == ["mypkg/api/__init__.py", "mypkg/api/serializers.py", "mypkg/api/views.py"]
    assert all(api["files"][f] == whole["files"][f] for f in api["files"])
    one = graph(cli, ws, "mypkg/api/views.py")
    assert one["files"] == {"mypkg/api/views.py": whole["files"]["mypkg/api/views.py"]}
    tests = graph(cli, ws, "tests")
    assert tests["test_files"] == ["tests/test_views.py"]
    assert tests["files"]["tests/test_views.py"] == whole["files"]["tests/test_views.py"]


def test_path_typed_from_a_subdirectory_is_relative_to_it(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, files_for("src/", "mypkg"))
    from_root = graph(cli, ws, "src/mypkg/core")
    from_src = graph(cli, ws / "src", "mypkg/core")
    assert from_src["files"] == from_root["files"]
    assert sorted(from_src["files"]) == ["src/mypkg/core/__init__.py", "src/mypkg/core/models.py"]


def test_text_and_dot_outputs_use_workspace_paths(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, files_for("", "mypkg"))
    text = cli("graph", "mypkg/core", "-o", "text", cwd=ws)
    assert text.returncode == 0, text.stderr
    assert "mypkg/core/models.py: mypkg/__init__.py mypkg/settings.py" in text.stdout.splitlines()
    dot = cli("graph", "mypkg/core", "-o", "dot", cwd=ws)
    assert '"mypkg/core/models.py" -> "mypkg/settings.py";' in dot.stdout


def test_missing_path_is_a_usage_error(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, files_for("", "mypkg"))
    proc = cli("graph", "nope", cwd=ws)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr
