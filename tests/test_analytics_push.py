"""Records that outlive the runner: every finished `ciopt build` pushes its record to the shared
Redis (a capped stream), never failing the build; `ciopt analytics pull` merges them once.
A real redis-server each time (tests/redis_server.py)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import redis as redis_py

from buildws import make_workspace
from ciopt.analytics import exchange
from ciopt.analytics.stream import RecordStream
from conftest import CliRunner, assert_one_line_error
from redis_server import RedisServer, free_port

BUILD = {"a/BUILD": 'genrule(name = "x", outs = ["x.txt"], cmd = "echo x > $@")\n'
                    'genrule(name = "y", srcs = [":x"], outs = ["y.txt"], cmd = "cat $< > $@")\n'}


def config(url: str, analytics: bool = True) -> str:
    return (f"enabled: true\ncache:\n  remote:\n    url: {url}\n    timeout_s: 0.5\n"
            f"analytics:\n  enabled: {'true' if analytics else 'false'}\n")


def records_of(tmp_path: Path) -> Path:
    return tmp_path / "cli-store" / "records.sqlite"  # the `cli` fixture's store


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def stream_len(url: str) -> int:
    s = RecordStream(url, 2.0)
    try:
        return s.length()
    finally:
        s.close()


def test_builds_push_their_records_and_pull_merges_each_once(cli: CliRunner, tmp_path: Path,
                                                             redis_server: RedisServer) -> None:
    ws = make_workspace(tmp_path, BUILD, config(redis_server.url))
    for _ in range(2):
        proc = cli("build", "//...", cwd=ws)
        assert proc.returncode == 0, proc.stderr
        assert "not pushed" not in proc.stderr
    assert stream_len(redis_server.url) == 2
    local = rows(records_of(tmp_path), "SELECT uuid, pushed_at, actions_total FROM invocations ORDER BY id")
    assert len(local) == 2 and all(p is not None for _, p, _ in local)

    team = tmp_path / "team.sqlite"
    doc = json.loads(cli("analytics", "pull", "--records", str(team), "-o", "json", cwd=ws, check=True).stdout)
    [src] = doc["sources"]
    assert (src["source"], src["entries"], src["added"], src["duplicates"], src["invalid"]) == \
        (redis_server.url, 2, 2, 0, 0)
    merged = rows(team, "SELECT uuid, origin, actions_total FROM invocations ORDER BY started_at")
    assert [(u, n) for u, _, n in merged] == [(u, n) for u, _, n in local]
    assert {o for _, o, _ in merged} == {redis_server.url}
    assert rows(team, "SELECT COUNT(*) FROM actions") == [(4,)]

    # Only what is new is read; and reading everything again adds nothing.
    again = json.loads(cli("analytics", "pull", "--records", str(team), "-o", "json", cwd=ws, check=True).stdout)
    assert again["sources"][0]["entries"] == 0
    cli("build", "//...", cwd=ws, check=True)
    text = cli("analytics", "pull", "--records", str(team), "--from-start", cwd=ws, check=True).stdout
    assert "3 entries read: 1 invocations added" in text and "2 already here" in text
    assert len(rows(team, "SELECT 1 FROM invocations")) == 3


def test_a_hung_server_never_fails_the_build_and_the_record_goes_later(cli: CliRunner, tmp_path: Path,
                                                                      redis_server: RedisServer) -> None:
    ws = make_workspace(tmp_path, BUILD, config(redis_server.url))
    redis_server.pause()  # accepts connections, never answers
    try:
        proc = cli("build", "//...", cwd=ws)
    finally:
        redis_server.resume()
    assert proc.returncode == 0, proc.stderr
    assert "build record not pushed" in proc.stderr and "Traceback" not in proc.stderr
    assert rows(records_of(tmp_path), "SELECT pushed_at FROM invocations") == [(None,)]
    # The next invocation's push takes the one left behind along.
    cli("build", "//...", cwd=ws, check=True)
    assert stream_len(redis_server.url) == 2
    assert rows(records_of(tmp_path), "SELECT COUNT(*) FROM invocations WHERE pushed_at IS NULL") == [(0,)]


def test_nothing_is_pushed_unless_analytics_is_enabled(cli: CliRunner, tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    ws = make_workspace(tmp_path, BUILD, config(redis_server.url, analytics=False))
    cli("build", "//...", cwd=ws, check=True)
    assert stream_len(redis_server.url) == 0
    # A dead server with analytics on: the build still passes, with one warning for the push.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ws2 = make_workspace(tmp_path / "2", BUILD, config(dead))
    proc = cli("build", "//...", cwd=ws2)
    assert proc.returncode == 0 and proc.stderr.count("build record not pushed") == 1, proc.stderr


def doc(uuid: str, started: float) -> dict:
    return {"v": 1, "invocation": {"uuid": uuid, "command": "build", "started_at": started,
                                   "finished_at": started + 1, "duration_s": 1.0},
            "actions": {"columns": ["label", "status", "duration_s"], "rows": [["//a:b", "executed", 1.0]]}}


def test_the_stream_is_capped_and_trimmed_to_the_retention_window(start_redis: object) -> None:
    server = start_redis("--stream-node-max-entries", "5")  # type: ignore[operator]
    stream = RecordStream(server.url, 2.0)
    try:
        for n in range(40):
            stream.push(doc(f"u{n}", time.time()), max_records=10)
        assert 10 <= stream.length() <= 15  # MAXLEN ~ trims whole nodes of 5 entries
        raw = redis_py.Redis.from_url(server.url)
        raw.delete(stream.key)
        old_ms = int((time.time() - 30 * 86400) * 1000)
        for n in range(10):
            raw.xadd(stream.key, {"uuid": f"old{n}", "v": "1", "z": b"x"}, id=f"{old_ms + n}-0")
        stream.push(doc("new", time.time()), retention_days=7)
        assert stream.length() <= 5 and [e.uuid for b in stream.entries() for e in b][-1] == "new"
    finally:
        stream.close()


def test_pull_counts_unreadable_entries_and_merges_the_rest(cli: CliRunner, tmp_path: Path,
                                                            redis_server: RedisServer) -> None:
    stream = RecordStream(redis_server.url, 2.0)
    stream.push(doc("good", time.time()))
    raw = redis_py.Redis.from_url(redis_server.url)
    raw.xadd(stream.key, {"uuid": "bad", "v": "1", "z": b"not zlib"})
    stream.push(doc("also-good", time.time()))
    old = doc("too-old", time.time() - 400 * 86400)
    stream.push(old)
    stream.close()
    team = tmp_path / "team.sqlite"
    proc = cli("analytics", "pull", "--from", redis_server.url, "--records", str(team), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 entries read: 2 invocations added" in proc.stdout and "1 older than retention" in proc.stdout
    assert "1 unreadable" in proc.stdout and "bad" in proc.stderr and "not zlib" in proc.stderr
    assert sorted(u for (u,) in rows(team, "SELECT uuid FROM invocations")) == ["also-good", "good"]


def test_pull_needs_a_redis_server_and_says_when_it_cannot_reach_one(cli: CliRunner, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, BUILD, "enabled: true\n")
    assert_one_line_error(cli("analytics", "pull", cwd=ws), contains="names no Redis server")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    proc = cli("analytics", "pull", "--from", dead, "--records", str(tmp_path / "t.sqlite"), cwd=ws)
    assert_one_line_error(proc, code=1, contains=dead)
    assert_one_line_error(cli("analytics", "pull", "--from", "redis://u:secret@127.0.0.1:1/0", cwd=ws),
                          contains="credentials")
    assert "secret" not in cli("analytics", "pull", "--from", "redis://u:secret@127.0.0.1:1/0", cwd=ws).stderr


def test_push_records_reports_what_it_could_not_do(tmp_path: Path) -> None:
    from ciopt.analytics.publish import push_records
    from ciopt.cache.backend import BackendError

    path = tmp_path / "r.sqlite"
    exchange.merge(path, [doc("x", time.time())], origin=None)
    with pytest.raises(BackendError):
        push_records(f"redis://127.0.0.1:{free_port()}/0", path, 1, timeout_s=0.5)
    assert sys.modules["ciopt.analytics.publish"].PUSH_TIMEOUT_S <= 1.0
