"""A cache is never why a build fails: a damaged local store is moved aside and recreated
(issue 10, degradation), unless `degradation: fail` says otherwise."""

from __future__ import annotations

from pathlib import Path

from buildws import make_workspace, run_json
from conftest import CliRunner

FILES = {
    "BUILD": 'genrule(name = "g", srcs = ["in.txt"], outs = ["out.txt"], cmd = "cp $< $@")\n',
    "in.txt": "hello\n",
}


def damage(store: Path) -> None:
    data = store / "lmdb" / "data.mdb"
    assert data.is_file()
    data.write_bytes(b"\x00garbage, not an LMDB file\xff" * 512)


def test_a_damaged_store_is_moved_aside_and_the_build_goes_on(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, FILES)
    store = tmp_path / "cli-store"
    run_json(cli, ws, "build", "//...")
    damage(store)
    doc = run_json(cli, ws, "build", "//...")
    assert doc["actions"][0]["status"] == "executed"
    assert "moved it aside" in doc["_stderr"] and "Traceback" not in doc["_stderr"]
    broken = [p for p in tmp_path.iterdir() if p.name.startswith("cli-store.broken-")]
    assert len(broken) == 1 and (broken[0] / "lmdb" / "data.mdb").is_file()  # kept for a post-mortem, not deleted
    assert run_json(cli, ws, "build", "//...")["actions"][0]["status"] == "cached_local"


def test_degradation_fail_stops_with_a_one_line_error(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, FILES, config="enabled: true\ndegradation: fail\n")
    run_json(cli, ws, "build", "//...")
    damage(tmp_path / "cli-store")
    proc = cli("build", "//...", cwd=ws)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cache.local.path" in proc.stderr and "degradation: fail" in proc.stderr
