"""The remote tier between ephemeral runners (issue 10), through a real redis-server: a fresh
runner (empty local store) gets remote hits, verified; bad blobs and bad signatures are
misses; read-only runners never write; a dying server never fails the build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from buildws import run_json, write_files
from conftest import CliRunner
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis_server import RedisServer

# Real servers per test (tests/conftest.py): redis_server, start_redis, serve (`ciopt cache serve`), nginx.

FILES = {
    "BUILD": """
        genrule(name = "gen", srcs = ["in.txt"], outs = ["out.txt"], cmd = "tr a-z A-Z < $< > $@")
        py_test(name = "test_out", srcs = ["test_out.py"], data = [":gen"])
    """,
    "in.txt": "hello\n",
    "test_out.py": """
        def test_upper():
            assert open("out.txt").read() == "HELLO\\n"
    """,
}


def config(url: str, extra: str = "", remote_extra: str = "") -> str:
    return f"enabled: true\n{extra}cache:\n  remote:\n    url: {url}\n    timeout_s: 2\n{remote_extra}"


def runner(tmp_path: Path, name: str, cfg: str, files: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """A fresh clone on a fresh machine: its own checkout and an empty local store."""
    ws = tmp_path / name / "ws"
    write_files(ws, {"config/ci-optimization.yaml": cfg, **(files or FILES)})
    return ws, {"CIOPT_CACHE_DIR": str(tmp_path / name / "store")}


def statuses(doc: dict) -> dict[str, str]:
    return {a["label"]: a["status"] for a in doc["actions"]}


def test_a_fresh_runner_is_served_by_the_remote_tier(cli: CliRunner, tmp_path: Path,
                                                     redis_server: RedisServer) -> None:
    cfg = config(redis_server.url)
    ws_a, env_a = runner(tmp_path, "a", cfg)
    first = run_json(cli, ws_a, "test", "//...", env=env_a)
    assert set(statuses(first).values()) == {"executed"}
    assert first["summary"]["remote_cache"]["uploads"] == 2

    ws_b, env_b = runner(tmp_path, "b", cfg)
    second = run_json(cli, ws_b, "test", "//...", env=env_b)
    assert set(statuses(second).values()) == {"cached_remote"}
    assert second["summary"]["cached_remote"] == 2 and second["summary"]["remote_cache"]["hits"] == 2
    assert (ws_b / "ciopt-out" / "out.txt").read_text() == "HELLO\n"
    [t] = second["tests"]
    assert t["cases"][0]["outcome"] == "passed"  # per-test results travel too
    assert "remote cache: 2 hits" in second["_stderr"]
    # Now local: the remote hit was written to this runner's store.
    assert set(statuses(run_json(cli, ws_b, "test", "//...", env=env_b)).values()) == {"cached_local"}
    # `ciopt cache stats` shows the remote tier's figures.
    stats = json.loads(cli("cache", "stats", "-o", "json", cwd=ws_b, env=env_b, check=True).stdout)["remote"]
    assert stats["hits"] == 2 and stats["backend"] == redis_server.url and stats["last_lookup_ms_p50"] is not None


@pytest.mark.parametrize("server", ["serve", "nginx"])
def test_the_http_layout_serves_fresh_runners_too(cli: CliRunner, tmp_path: Path, request: pytest.FixtureRequest,
                                                  server: str) -> None:
    if server == "serve":
        url = request.getfixturevalue("serve")("--write-token-env", "WRITE_TOKEN",
                                               env={"WRITE_TOKEN": "w-secret"}).url
    else:
        url = request.getfixturevalue("nginx").url()
    cfg = config(url)
    writer = {"CIOPT_CACHE_TOKEN": "w-secret"}
    ws_a, env_a = runner(tmp_path, "a", cfg)
    assert set(statuses(run_json(cli, ws_a, "test", "//...", env={**env_a, **writer})).values()) == {"executed"}
    ws_b, env_b = runner(tmp_path, "b", cfg)
    doc = run_json(cli, ws_b, "test", "//...", env=env_b)
    assert set(statuses(doc).values()) == {"cached_remote"}, doc["_stderr"]
    if server == "serve":
        # Without the write token a runner reads but cannot write: a warning, never a failure.
        ws_c, env_c = runner(tmp_path, "c", cfg, {**FILES, "in.txt": "other\n"})
        doc = run_json(cli, ws_c, "build", "//:gen", env=env_c)
        assert statuses(doc) == {"//:gen": "executed"}


def test_a_blob_that_does_not_match_its_digest_is_a_miss(cli: CliRunner, tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    from ciopt import Digest
    from ciopt.cache.redis_backend import RedisBackend

    cfg = config(redis_server.url)
    ws_a, env_a = runner(tmp_path, "a", cfg)
    run_json(cli, ws_a, "build", "//:gen", env=env_a)
    out = (ws_a / "ciopt-out" / "out.txt").read_bytes()
    import ciopt

    digest: Digest = ciopt.hash_bytes(out)
    backend = RedisBackend(redis_server.url, 2.0)
    backend.put_blob(digest, b"EVIL\n")  # same length, other bytes, under the honest digest
    backend.close()

    ws_b, env_b = runner(tmp_path, "b", cfg)
    doc = run_json(cli, ws_b, "build", "//:gen", env=env_b)
    assert statuses(doc) == {"//:gen": "executed"}
    assert doc["summary"]["remote_cache"]["verify_failures"] == 1
    assert (ws_b / "ciopt-out" / "out.txt").read_bytes() == out


def test_signed_entries_and_a_tampered_one_is_refused(cli: CliRunner, tmp_path: Path,
                                                      redis_server: RedisServer) -> None:
    from ciopt.cache.redis_backend import RedisBackend

    cfg = config(redis_server.url, remote_extra="    signing_key_env: CI_CACHE_KEY\n")
    key = {"CI_CACHE_KEY": "a-team-secret-of-32-bytes-length"}
    ws_a, env_a = runner(tmp_path, "a", cfg)
    first = run_json(cli, ws_a, "build", "//:gen", env={**env_a, **key})
    [action] = first["actions"]
    ws_b, env_b = runner(tmp_path, "b", cfg)
    assert statuses(run_json(cli, ws_b, "build", "//:gen", env={**env_b, **key})) == {"//:gen": "cached_remote"}

    # Someone with write access to Redis but not the secret replaces the entry.
    backend = RedisBackend(redis_server.url, 2.0)
    good = backend.get_action(action["key"])
    assert good is not None and good.startswith(b"ciopt-sig1")
    backend.put_action(action["key"], good[len(b"ciopt-sig1\0") + 32:])  # the payload, unsigned
    backend.close()
    ws_c, env_c = runner(tmp_path, "c", cfg)
    doc = run_json(cli, ws_c, "build", "//:gen", env={**env_c, **key})
    assert statuses(doc) == {"//:gen": "executed"}
    assert doc["summary"]["remote_cache"]["signature_failures"] == 1
    assert "refused" in doc["_stderr"]

    # Without the secret a runner cannot verify anything: it does not use the remote at all.
    ws_d, env_d = runner(tmp_path, "d", cfg)
    doc = run_json(cli, ws_d, "build", "//:gen", env=env_d)
    assert statuses(doc) == {"//:gen": "executed"} and "CI_CACHE_KEY" in doc["_stderr"]


def test_read_only_runners_never_write(cli: CliRunner, tmp_path: Path,
                                       redis_server: RedisServer) -> None:
    import redis

    ws, env = runner(tmp_path, "fork-pr", config(redis_server.url, remote_extra="    read_only: true\n"))
    doc = run_json(cli, ws, "test", "//...", env=env)
    assert set(statuses(doc).values()) == {"executed"}
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0


def test_a_server_killed_mid_build_costs_one_warning_not_the_build(cli: CliRunner, tmp_path: Path,
                                                                   redis_server: RedisServer) -> None:
    pid = redis_server._proc.pid  # type: ignore[union-attr]
    files = {
        **FILES,
        "BUILD": FILES["BUILD"] + f"""
        genrule(name = "killer", outs = ["killed.txt"], cmd = "kill -9 {pid}; sleep 0.5; echo done > $@")
        genrule(name = "after", srcs = [":killer"], outs = ["after.txt"], cmd = "cp $< $@")
        """,
    }
    ws, env = runner(tmp_path, "a", config(redis_server.url), files)
    doc = run_json(cli, ws, "build", "//...", env=env)
    assert set(statuses(doc).values()) == {"executed"} and doc["summary"]["exit_code"] == 0
    assert doc["_stderr"].count("remote cache unavailable") == 1, doc["_stderr"]
    # Local results are intact: the next run is all local hits, with the server still gone.
    again = run_json(cli, ws, "build", "//...", env=env)
    assert set(statuses(again).values()) == {"cached_local"}


def test_degradation_fail_names_the_backend(cli: CliRunner, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    url = f"redis://127.0.0.1:{port}/0"  # nothing listens there
    ws, env = runner(tmp_path, "a", config(url, extra="degradation: fail\n"))
    proc = cli("build", "//...", cwd=ws, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "127.0.0.1" in proc.stderr and "degradation: fail" in proc.stderr
    ws2, env2 = runner(tmp_path, "b", config(url))
    doc = run_json(cli, ws2, "build", "//...", env=env2)
    assert set(statuses(doc).values()) == {"executed"} and "remote cache unavailable" in doc["_stderr"]


def test_dependency_snapshot_moves_only_what_changed(cli: CliRunner, tmp_path: Path,
                                                     redis_server: RedisServer) -> None:
    cfg = config(redis_server.url)
    ws_a, env_a = runner(tmp_path, "a", cfg, {"requirements.txt": "pkg==1\n"})
    venv = ws_a / "venv"
    for i in range(50):
        write_files(venv, {f"lib/pkg{i}/__init__.py": f"X = {i}\n" + "# padding\n" * 200})
    (venv / "bin").mkdir()
    (venv / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (venv / "bin" / "tool").chmod(0o755)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")

    def cache(ws: Path, env: dict[str, str], *args: str) -> dict:
        proc = cli("cache", *args, "-o", "json", cwd=ws, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    saved = cache(ws_a, env_a, "save", "venv", "venv", "--key-file", "requirements.txt")
    assert saved["files"] == 51 and saved["bytes_uploaded"] > 0
    # One package bumped: the second save uploads only that file (and the new manifest).
    write_files(venv, {"lib/pkg7/__init__.py": "X = 'bumped'\n"})
    (ws_a / "requirements.txt").write_text("pkg==2\n")
    second = cache(ws_a, env_a, "save", "venv", "venv", "--key-file", "requirements.txt")
    assert 0 < second["bytes_uploaded"] < saved["bytes_uploaded"] / 10, (saved, second)

    # A fresh runner: exact hit, everything restored, modes and symlinks kept.
    ws_b, env_b = runner(tmp_path, "b", cfg, {"requirements.txt": "pkg==2\n"})
    got = cache(ws_b, env_b, "restore", "venv", "venv", "--key-file", "requirements.txt")
    assert got["result"] == "hit" and got["files_written"] == 52
    assert (ws_b / "venv/lib/pkg7/__init__.py").read_text() == "X = 'bumped'\n"
    assert (ws_b / "venv/bin/tool").stat().st_mode & 0o100
    assert str((ws_b / "venv/bin/python").readlink()) == "/usr/bin/python3"
    # Another lockfile: the newest snapshot of the same name, reported partial; only the files
    # that differ are rewritten.
    (ws_b / "requirements.txt").write_text("pkg==3\n")
    write_files(ws_b, {"venv/lib/pkg3/__init__.py": "stale\n"})
    partial = cache(ws_b, env_b, "restore", "venv", "venv", "--key-file", "requirements.txt")
    assert partial["result"] == "partial" and partial["files_written"] == 1
    # Nothing saved under this name at all: a miss, exit 0.
    shutil.rmtree(ws_b / "venv")
    assert cache(ws_b, env_b, "restore", "node", "venv", "--key-file", "requirements.txt")["result"] == "miss"


def test_shards_spread_keys_and_a_new_shard_moves_only_its_share(start_redis) -> None:  # noqa: ANN001
    import ciopt
    from ciopt.cache.redis_backend import RedisBackend
    from ciopt.cache.shards import ShardedBackend

    servers = [start_redis() for _ in range(3)]
    backends = [RedisBackend(s.url, 2.0) for s in servers]
    two = ShardedBackend(backends[:2])
    keys = [ciopt.hash_bytes(str(i).encode()).hash for i in range(3000)]
    placed = {k: two.shard_for(k).name for k in keys}
    share = sum(1 for v in placed.values() if v == backends[0].name) / len(keys)
    assert 0.45 < share < 0.55
    three = ShardedBackend(backends)
    moved = [k for k in keys if three.shard_for(k).name != placed[k]]
    assert all(three.shard_for(k).name == backends[2].name for k in moved)  # only to the new shard
    assert 0.28 < len(moved) / len(keys) < 0.39  # about a third

    blobs = [b"blob %d" % i for i in range(200)]
    digests = [ciopt.hash_bytes(b) for b in blobs]
    three.put_blobs(list(zip(digests, blobs)))
    assert three.get_blobs(digests) == blobs and three.find_missing(digests) == []
    # A dead shard: its share raises (the tier turns that into misses); the others still answer.
    servers[1].kill()
    alive = [d for d in digests if three.shard_for(d.hash).name != backends[1].name]
    assert three.get_blobs(alive) == [blobs[digests.index(d)] for d in alive]
    three.close()


def test_a_fresh_runner_asks_about_ready_actions_in_batches(cli: CliRunner, tmp_path: Path,
                                                             redis_server: RedisServer) -> None:
    import redis

    rules = "".join(f'genrule(name = "g{i}", srcs = ["in.txt"], outs = ["o{i}.txt"], cmd = "cp $< $@")\n'
                    for i in range(20))
    files = {"BUILD": rules, "in.txt": "x\n"}
    cfg = config(redis_server.url)
    ws_a, env_a = runner(tmp_path, "a", cfg, files)
    run_json(cli, ws_a, "build", "//...", env=env_a)
    client = redis.Redis.from_url(redis_server.url)
    client.config_resetstat()
    ws_b, env_b = runner(tmp_path, "b", cfg, files)
    doc = run_json(cli, ws_b, "build", "//...", env=env_b)
    assert set(statuses(doc).values()) == {"cached_remote"}
    stats = client.info("commandstats")
    # 20 ready actions: their entries in one MGET and their blobs in another, not 40 round trips.
    assert stats.get("cmdstat_get", {}).get("calls", 0) <= 1, stats
    assert stats["cmdstat_mget"]["calls"] <= 3, stats
    assert (ws_b / "ciopt-out" / "o7.txt").read_text() == "x\n"
