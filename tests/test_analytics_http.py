"""Records over the HTTP cache: a build with `cache.remote.url: http://...` pointing at a real
`ciopt cache serve` pushes its record there (POST /records, over the build's own cache
connection); `ciopt analytics pull` reads it back (GET /records?after=ID), each invocation
once. A server without the endpoint (nginx, bazel-remote: 404) is left alone, silently."""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from pathlib import Path

import pytest

from buildws import make_workspace
from conftest import CliRunner
from http_servers import ServeFactory, http_request

BUILD = {"a/BUILD": 'genrule(name = "x", outs = ["x.txt"], cmd = "echo x > $@")\n'
                    'genrule(name = "y", srcs = [":x"], outs = ["y.txt"], cmd = "cat $< > $@")\n'}


def config(url: str, analytics: bool = True) -> str:
    return (f"enabled: true\ncache:\n  remote:\n    url: {url}\n    timeout_s: 2\n"
            f"analytics:\n  enabled: {'true' if analytics else 'false'}\n")


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def records_of(tmp_path: Path) -> Path:
    return tmp_path / "cli-store" / "records.sqlite"  # the `cli` fixture's store


def doc(uuid: str, started: float) -> dict:
    return {"v": 1, "invocation": {"uuid": uuid, "command": "build", "started_at": started,
                                   "finished_at": started + 1, "duration_s": 1.0},
            "actions": {"columns": ["label", "status", "duration_s"], "rows": [["//a:b", "executed", 1.0]]}}


request = http_request


def test_a_build_pushes_to_cache_serve_and_pull_merges_each_invocation_once(
        cli: CliRunner, tmp_path: Path, serve: ServeFactory) -> None:
    server = serve()
    ws = make_workspace(tmp_path, BUILD, config(server.url))
    proc = cli("build", "//...", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    assert "not pushed" not in proc.stderr and "warning" not in proc.stderr, proc.stderr
    [(uuid, pushed, actions)] = rows(records_of(tmp_path), "SELECT uuid, pushed_at, actions_total FROM invocations")
    assert pushed is not None and actions == 2
    assert server.status()["records"]["added"] == 1

    team = tmp_path / "team.sqlite"  # a fresh records file: the dashboard host's
    out = json.loads(cli("analytics", "pull", "--records", str(team), "-o", "json", cwd=ws, check=True).stdout)
    [src] = out["sources"]
    assert (src["source"], src["entries"], src["added"], src["duplicates"], src["invalid"]) == (server.url, 1, 1, 0, 0)
    assert rows(team, "SELECT uuid, origin, actions_total FROM invocations") == [(uuid, server.url, 2)]
    assert rows(team, "SELECT label FROM actions ORDER BY label") == [("//a:x",), ("//a:y",)]

    # A second pull reads nothing new; reading everything again adds nothing either.
    again = json.loads(cli("analytics", "pull", "--records", str(team), "-o", "json", cwd=ws, check=True).stdout)
    assert again["sources"][0]["entries"] == 0 and again["sources"][0]["added"] == 0
    cli("build", "//...", cwd=ws, check=True)
    text = cli("analytics", "pull", "--records", str(team), "--from-start", cwd=ws, check=True).stdout
    assert "2 entries read: 1 invocations added" in text and "1 already here" in text, text
    assert len(rows(team, "SELECT 1 FROM invocations")) == 2
    # The same record pushed twice (a push cut short, then retried) is kept once by the server.
    status, body = request(server.url + "/records", "POST", json.dumps({"records": [doc("twice", time.time())] * 2})
                           .encode(), headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["added"] == 1 and json.loads(body)["duplicates"] == 1


def test_a_server_without_a_records_endpoint_is_left_alone_silently(
        cli: CliRunner, tmp_path: Path, nginx: object) -> None:
    ws = make_workspace(tmp_path, BUILD, config(nginx.url("cache")))  # type: ignore[attr-defined]
    for _ in range(2):
        proc = cli("build", "//...", cwd=ws)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr and "record" not in proc.stderr, proc.stderr
    # Not pushed: they stay local (for a later server that takes them), never marked as sent.
    assert rows(records_of(tmp_path), "SELECT pushed_at FROM invocations") == [(None,), (None,)]
    # One POST per build, then nothing more: no catch-up of the records left behind.
    access = (Path(nginx.dir) / "access.log").read_text()  # type: ignore[attr-defined]
    assert access.count("POST /cache/records") == 2, access
    # Pulling from it says what is wrong, in one line.
    proc = cli("analytics", "pull", "--records", str(tmp_path / "t.sqlite"), cwd=ws)
    assert proc.returncode == 1 and "no records endpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_records_endpoint_tokens_caps_and_trimming(tmp_path: Path, serve: ServeFactory) -> None:
    server = serve("--read-token-env", "R", "--write-token-env", "W", env={"R": "read-tok", "W": "write-tok"})
    body = zlib.compress(json.dumps({"records": [doc("a", time.time())]}).encode())
    deflate = {"Content-Type": "application/json", "Content-Encoding": "deflate"}
    assert request(server.url + "/records", "POST", body, headers=deflate)[0] == 401
    assert request(server.url + "/records", "POST", body, token="read-tok", headers=deflate)[0] == 403
    assert request(server.url + "/records")[0] == 401
    status, answer = request(server.url + "/records", "POST", body, token="write-tok", headers=deflate)
    assert status == 200 and json.loads(answer)["added"] == 1
    status, answer = request(server.url + "/records?after=0&limit=10", token="read-tok")
    page = json.loads(answer)
    assert status == 200 and [e["uuid"] for e in page["entries"]] == ["a"] and page["more"] is False
    # Garbage is refused with the reason, and nothing is stored.
    bad = json.dumps({"records": [{"v": 1, "invocation": {"command": "build"}}]}).encode()
    status, answer = request(server.url + "/records", "POST", bad, token="write-tok")
    assert status == 400 and b"uuid" in answer
    status, answer = request(server.url + "/records", "POST", b"x" * 100, token="write-tok", headers=deflate)
    assert status == 400 and b"zlib" in answer

    from ciopt.cache.server import RecordsLog

    log = RecordsLog(tmp_path / "r.sqlite", max_records=10)
    try:
        for n in range(25):
            log.add([doc(f"u{n}", time.time())], retention_days=None)
        page = log.page(0, 100)
        assert [e["uuid"] for e in page["entries"]] == [f"u{n}" for n in range(15, 25)]
        assert log.add([doc("u24", time.time())], None)["duplicates"] == 1  # still there: kept once
        # Ids only grow: a puller's cursor stays right after trimming.
        assert log.page(page["last"], 100)["entries"] == []
    finally:
        log.close()


def test_push_records_to_cache_serve_takes_the_left_behind_along(tmp_path: Path, serve: ServeFactory) -> None:
    from ciopt.analytics import exchange
    from ciopt.analytics.publish import push_records
    from ciopt.analytics.pull import pull_from

    server = serve()
    path = tmp_path / "r.sqlite"
    exchange.merge(path, [doc("one", time.time()), doc("two", time.time())], origin=None)
    with sqlite3.connect(path) as db:  # merged ones are not this runner's own: make them so
        db.execute("UPDATE invocations SET origin = NULL, source = 'ciopt', pushed_at = NULL")
    assert push_records(server.url, path, 2, timeout_s=2.0) == 2
    team = tmp_path / "team.sqlite"
    r = pull_from(server.url, team, timeout_s=2.0, retention_days=90)
    assert (r.entries, r.merged.added) == (2, 2)


@pytest.mark.parametrize("path", ["/records", "/some/prefix/records"])
def test_post_to_other_paths_is_still_refused(serve: ServeFactory, path: str) -> None:
    server = serve()
    assert request(server.url + "/ac/" + "0" * 64, "POST", b"x")[0] == 405
    assert request(server.url + path + "?after=0")[0] == 200
