"""`ciopt config show|validate` through the real command line, and the workspace root finder."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from ciopt.workspace_root import WorkspaceNotFound, find_workspace_root, git_toplevel
from conftest import CliRunner, assert_one_line_error

REPO_ROOT = Path(__file__).resolve().parents[1]
FILE = "config/ci-optimization.yaml"
# The tests decide these; whatever the calling shell has set must not leak in.
CLEAN = {"CIOPT_DISABLE": "", "CIOPT_CONFIG": ""}

GOOD = """\
enabled: true
cache:
  local:
    max_size: 512MiB
  remote:
    url: redis://cache:6379/0
execution:
  jobs: 8
"""


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory in no workspace: no config above it and not in a git work tree."""
    if git_toplevel(tmp_path) is not None:
        pytest.skip(f"{tmp_path} is inside a git work tree")
    return tmp_path


def workspace(root: Path, text: str = GOOD) -> Path:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / FILE).write_text(textwrap.dedent(text))
    (root / "pkg" / "sub").mkdir(parents=True, exist_ok=True)
    return root


def show_json(cli: CliRunner, cwd: Path, **env: str) -> dict:
    proc = cli("config", "show", "--output", "json", cwd=cwd, env=CLEAN | env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- show ----------------------------------------------------------------------


def test_show_json_gives_every_value_with_its_source_line(cli: CliRunner, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    doc = show_json(cli, ws / "pkg" / "sub")  # found from a subdirectory
    assert doc["workspace"] == str(ws)
    assert doc["file"] == str(ws / FILE)
    values = doc["values"]
    assert values["enabled"] == {"value": True, "source": f"{FILE}:1"}
    assert values["cache.local.max_size"] == {"value": 512 * 1024**2, "source": f"{FILE}:4"}
    assert values["cache.remote.url"] == {"value": "redis://cache:6379/0", "source": f"{FILE}:6"}
    assert values["cache.remote.backend"] == {"value": "redis", "source": "derived from cache.remote.url"}
    assert values["execution.jobs"] == {"value": 8, "source": f"{FILE}:8"}
    assert values["degradation"] == {"value": "fallback", "source": "default"}
    # The cli fixture sets CIOPT_CACHE_DIR.
    assert values["cache.local.path"] == {"value": str(tmp_path / "cli-store"), "source": "env CIOPT_CACHE_DIR"}
    assert values["analytics.path"]["value"] == str(tmp_path / "cli-store" / "records.sqlite")
    assert doc["bypass"] is False and doc["bypass_reason"] is None
    assert doc["effective"] == {"local_cache": True, "remote_cache": True, "selection": False,
                                "remote_execution": False, "analytics": False}
    # Every schema key is there, with a source.
    assert len(values) == 33 and all(v["source"] for v in values.values())


def test_show_text_lists_values_and_sources(cli: CliRunner, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    proc = cli("config", "show", cwd=ws, env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "bypass:    off" in lines
    by_key = {l.split()[0]: l for l in lines if "  # " in l}
    assert by_key["enabled"].split() == ["enabled", "true", "#", f"{FILE}:1"]
    assert by_key["cache.local.max_size"].split() == ["cache.local.max_size", "512MiB", "#", f"{FILE}:4"]
    assert by_key["degradation"].split() == ["degradation", "fallback", "#", "default"]


def test_show_the_shipped_config_names_a_line_for_every_key(cli: CliRunner) -> None:
    doc = show_json(cli, REPO_ROOT / "python" / "ciopt")
    assert doc["workspace"] == str(REPO_ROOT)
    not_from_file = {k: v["source"] for k, v in doc["values"].items() if not v["source"].startswith(f"{FILE}:")}
    assert not_from_file == {"cache.local.path": "env CIOPT_CACHE_DIR"}


def test_show_with_cioptdisable_reports_the_bypass(cli: CliRunner, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    doc = show_json(cli, ws, CIOPT_DISABLE="1")
    assert doc["bypass"] is True
    assert "CIOPT_DISABLE=1" in doc["bypass_reason"]
    assert doc["values"]["emergency_bypass"] == {"value": True, "source": "env CIOPT_DISABLE"}
    assert not any(doc["effective"][k] for k in ("local_cache", "remote_cache", "selection", "remote_execution"))

    text = cli("config", "show", cwd=ws, env=CLEAN | {"CIOPT_DISABLE": "1"})
    assert text.returncode == 0
    assert any(l.startswith("bypass:    ON (CIOPT_DISABLE=1") for l in text.stdout.splitlines()), text.stdout


def test_show_bypass_from_the_file_names_its_line(cli: CliRunner, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", "enabled: true\n\nemergency_bypass: true\n")
    doc = show_json(cli, ws)
    assert doc["bypass"] is True and doc["bypass_reason"] == f"emergency_bypass: true in {FILE}:3"


def test_show_with_a_broken_config_is_a_one_line_error(cli: CliRunner, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", "enabled: true\ncache:\n  locl: {}\n")
    proc = cli("config", "show", cwd=ws, env=CLEAN)
    assert_one_line_error(proc, 2, f"{FILE}:3:3: unknown key 'cache.locl' (did you mean 'cache.local'?)")
    assert proc.stdout == ""


def test_show_with_a_broken_config_under_cioptdisable_warns_and_shows_defaults(cli: CliRunner, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", "enabled: true\ncache:\n  locl: {}\n")
    doc = show_json(cli, ws, CIOPT_DISABLE="1")
    assert doc["bypass"] is True
    assert doc["values"]["enabled"] == {"value": False, "source": "default"}
    assert len(doc["warnings"]) == 1 and f"{FILE}:3:3" in doc["warnings"][0]


def test_show_outside_any_workspace_uses_the_defaults(cli: CliRunner, outside: Path) -> None:
    nowhere = outside / "nowhere"
    nowhere.mkdir()
    doc = show_json(cli, nowhere)
    assert doc["workspace"] == str(nowhere) and doc["file"] is None
    sources = {k: v["source"] for k, v in doc["values"].items()}
    assert set(sources.values()) == {"default", "env CIOPT_CACHE_DIR"}


def test_show_uses_cioptconfig(cli: CliRunner, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("\ndegradation: fail\n")
    doc = show_json(cli, workspace(tmp_path / "ws"), CIOPT_CONFIG=str(other))
    assert doc["file"] == str(other)
    assert doc["values"]["degradation"] == {"value": "fail", "source": f"{other}:2"}
    assert doc["values"]["enabled"]["source"] == "default"  # the workspace file is not read


# --- validate ------------------------------------------------------------------------


def test_validate_a_good_file(cli: CliRunner, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    proc = cli("config", "validate", "good.yaml", cwd=tmp_path, env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok: good.yaml\n"


def test_validate_the_shipped_file(cli: CliRunner) -> None:
    proc = cli("config", "validate", cwd=REPO_ROOT, env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ok: {FILE}\n"


def test_validate_a_bad_file_names_file_line_and_key(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("enabled: true\nremote_execution:\n  retries: many\n")
    proc = cli("config", "validate", "bad.yaml", cwd=tmp_path, env=CLEAN)
    assert_one_line_error(proc, 2, "bad.yaml:3:12: remote_execution.retries: expected an integer >= 0, got 'many'")
    assert proc.stdout == ""


def test_validate_reports_every_error_one_line_each(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("enabled: nope\ncache:\n  locl: {}\ndegradation: explode\n")
    proc = cli("config", "validate", str(bad), env=CLEAN)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"ciopt: error: {bad}:1:10: enabled: expected true or false, got 'nope'",
        f"ciopt: error: {bad}:3:3: unknown key 'cache.locl' (did you mean 'cache.local'?)",
        f"ciopt: error: {bad}:4:14: degradation: expected one of fallback, fail, got 'explode'",
    ]


def test_validate_json(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache:\n  remote:\n    timeout_s: 0\n")
    proc = cli("config", "validate", "-o", "json", "bad.yaml", cwd=tmp_path, env=CLEAN)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["file"] == "bad.yaml"
    [err] = doc["errors"]
    assert (err["file"], err["line"], err["column"], err["key"]) == ("bad.yaml", 3, 16, "cache.remote.timeout_s")


def test_validate_yaml_syntax_error_has_a_position(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("enabled: true\ncache: [unclosed\n")
    proc = cli("config", "validate", "bad.yaml", cwd=tmp_path, env=CLEAN)
    assert_one_line_error(proc, 2, "bad.yaml:3:1: invalid YAML")


def test_validate_ignores_cioptdisable(cli: CliRunner, tmp_path: Path) -> None:
    # The bypass lets builds run past a broken file; the checker must still say it is broken.
    (tmp_path / "bad.yaml").write_text("enabled: nope\n")
    proc = cli("config", "validate", "bad.yaml", cwd=tmp_path, env=CLEAN | {"CIOPT_DISABLE": "1"})
    assert_one_line_error(proc, 2, "bad.yaml:1:10")


def test_validate_without_argument_checks_the_workspace_file(cli: CliRunner, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", "execution:\n  jobs: 0\n")
    proc = cli("config", "validate", cwd=ws / "pkg" / "sub", env=CLEAN)
    assert_one_line_error(proc, 2, f"../../{FILE}:2:9: execution.jobs: expected an integer >= 1 or null, got 0")


def test_validate_missing_file(cli: CliRunner, tmp_path: Path) -> None:
    proc = cli("config", "validate", "nope.yaml", cwd=tmp_path, env=CLEAN)
    assert_one_line_error(proc, 2, "nope.yaml: cannot read configuration")


def test_validate_outside_a_workspace_asks_for_a_file(cli: CliRunner, outside: Path) -> None:
    proc = cli("config", "validate", cwd=outside, env=CLEAN)
    assert_one_line_error(proc, 2, "no workspace at")


def test_validate_in_a_workspace_without_a_config_file(cli: CliRunner, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    proc = cli("config", "validate", cwd=repo, env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: ") and "all defaults apply" in proc.stdout


# --- the workspace root -------------------------------------------------------------------


def test_root_is_the_nearest_ancestor_with_the_config(tmp_path: Path) -> None:
    outer = workspace(tmp_path / "outer")
    inner = workspace(outer / "pkg" / "inner")
    assert find_workspace_root(outer / "pkg" / "sub") == outer
    assert find_workspace_root(inner / "pkg" / "sub") == inner
    assert find_workspace_root(inner) == inner
    (outer / "pkg" / "file.py").write_text("")
    assert find_workspace_root(outer / "pkg" / "file.py") == outer


def test_root_falls_back_to_the_git_root(cli: CliRunner, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "a" / "b").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert find_workspace_root(repo / "a" / "b").resolve() == repo.resolve()
    doc = show_json(cli, repo / "a" / "b")
    assert Path(doc["workspace"]).resolve() == repo.resolve() and doc["file"] is None


def test_no_root_is_an_error(outside: Path) -> None:
    with pytest.raises(WorkspaceNotFound, match="no workspace at"):
        find_workspace_root(outside)
