"""`ciopt hash` and `ciopt cache` through the real command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import blake3
import pytest

from conftest import CliRunner, assert_one_line_error


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    d = tmp_path / "in"
    d.mkdir()
    out = []
    for name, data in [("a.txt", b"alpha\n"), ("with space.bin", os.urandom(5000)), ("empty", b""),
                       ("back\\slash", b"x"), ("big.bin", os.urandom(3 << 20))]:
        p = d / name
        p.write_bytes(data)
        out.append(p)
    return out


def test_hash_blake3_lines_match_b3sum_format(cli: CliRunner, files: list[Path]) -> None:
    proc = cli("hash", *files, check=True)
    want = []
    for p in files:
        h = blake3.blake3(p.read_bytes()).hexdigest()
        name = str(p)
        want.append(("\\" + h + "  " + name.replace("\\", "\\\\")) if "\\" in name else f"{h}  {name}")
    assert proc.stdout.splitlines() == want
    if shutil.which("b3sum"):
        ref = subprocess.run(["b3sum", *map(str, files)], capture_output=True, text=True, check=True)
        assert proc.stdout == ref.stdout


def test_hash_sha256_byte_identical_to_sha256sum(cli: CliRunner, files: list[Path]) -> None:
    ours = cli("hash", "--digest", "sha256", *files, check=True)
    ref = subprocess.run(["sha256sum", *map(str, files)], capture_output=True, text=True, check=True)
    assert ours.stdout == ref.stdout


def test_hash_directory_recurses_honoring_gitignore(cli: CliRunner, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "m.py").write_text("x = 1\n")
    (root / "out.log").write_text("noise")
    (root / ".gitignore").write_text("*.log\n")
    proc = cli("hash", "-o", "json", root, check=True)
    doc = json.loads(proc.stdout)
    assert [f["path"] for f in doc["files"]] == [f"{root}/.gitignore", f"{root}/src/m.py"]
    assert doc["files"][1]["hash"] == blake3.blake3(b"x = 1\n").hexdigest()


def test_hash_missing_path_is_a_one_line_error(cli: CliRunner, tmp_path: Path) -> None:
    assert_one_line_error(cli("hash", tmp_path / "missing.txt"), 2, "missing.txt")


def test_cache_commands_json(cli: CliRunner, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(1000))
    store = tmp_path / "store"
    first = json.loads(cli("cache", "ingest", src, "--store", store, "-o", "json", check=True).stdout)
    assert first["files"] == 20 and first["blobs_stored"] == 20 and first["files_read"] == 20
    second = json.loads(cli("cache", "ingest", src, "--store", store, "-o", "json", check=True).stdout)
    assert second["blobs_stored"] == 0 and second["tree"] == first["tree"]
    stats = json.loads(cli("cache", "stats", "--store", store, "-o", "json", check=True).stdout)
    assert stats["blobs"] == 20 and stats["blob_bytes"] == 20_000 and stats["digest_function"] == "blake3"
    gc = json.loads(cli("cache", "gc", "--store", store, "--max-size", "10KB", "-o", "json", check=True).stdout)
    assert gc["remaining_bytes"] <= 10_000 and gc["evicted"] == 10
    verify = json.loads(cli("cache", "verify", "--store", store, "-o", "json", check=True).stdout)
    assert verify["ok"] and verify["checked"] == 10


def test_cache_verify_exits_1_on_corruption(cli: CliRunner, tmp_path: Path) -> None:
    import ciopt

    s = ciopt.Store(tmp_path / "store")
    d = s.put(os.urandom((1 << 20) + 1))
    blob = Path(s.path) / "blobs" / d.hash[:2] / d.hash
    blob.write_bytes(b"garbage")
    proc = cli("cache", "verify", "--store", tmp_path / "store")
    assert proc.returncode == 1
    assert f"corrupt (removed): {d}" in proc.stdout


def test_bad_store_inputs_are_one_line_errors(cli: CliRunner, tmp_path: Path) -> None:
    f = tmp_path / "a-file"
    f.write_text("x")
    assert_one_line_error(cli("cache", "stats", "--store", f), 2, "is not a directory")
    store = tmp_path / "store"
    cli("cache", "ingest", tmp_path, "--store", store, check=True)
    assert_one_line_error(cli("cache", "ingest", tmp_path, "--store", store, "--digest", "sha256"), 2,
                          "uses digest function blake3, not sha256")
    assert_one_line_error(cli("cache", "gc", "--store", store, "--max-size", "lots"), 2, "--max-size")


def test_help_teaches(cli: CliRunner) -> None:
    proc = cli("--help", check=True)
    assert "ciopt hash" in proc.stdout and "cache" in proc.stdout
    assert "Examples" in cli("hash", "--help", check=True).stdout
