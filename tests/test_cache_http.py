"""The HTTP remote cache (bazel-remote layout) against real servers: nginx with WebDAV PUT and
`ciopt cache serve` as a real process; and Bazel itself against `ciopt cache serve`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import textwrap
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

import ciopt
from ciopt import Digest
from ciopt.cache.backend import STREAM_THRESHOLD, BackendError
from ciopt.cache.http_backend import HttpBackend
from buildws import write_big_file
from conftest import assert_one_line_error
from http_servers import (  # noqa: F401 - the fixtures are used by name
    http_request,
    NGINX_PASSWORD,
    NGINX_TOKEN,
    NGINX_USER,
    Nginx,
    ServeFactory,
    ServeProcess,
    free_port,
    nginx_fixture,
    serve_fixture,
)

FN: Final = "blake3"  # the digest function of the stores these tests serve (Bazel's test uses sha256)
NO_AUTH: dict[str, str] = {}
READ_TOKEN = "reader-token-123"
WRITE_TOKEN = "writer-token-456"
TOKENS_ENV = {"CACHE_READ": READ_TOKEN, "CACHE_WRITE": WRITE_TOKEN}
TOKEN_ARGS = ("--read-token-env", "CACHE_READ", "--write-token-env", "CACHE_WRITE")


def digest_of(data: bytes) -> Digest:
    return ciopt.hash_bytes(data, digest=FN)


def backend(url: str, env: dict[str, str] = NO_AUTH, timeout_s: float = 10.0) -> HttpBackend:
    return HttpBackend(url, timeout_s, env=env)


@pytest.fixture(params=["nginx", "serve"])
def cache_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The base URL of an open cache: nginx WebDAV or `ciopt cache serve`."""
    if request.param == "nginx":
        yield request.getfixturevalue("nginx").url("cache")
    else:
        yield request.getfixturevalue("serve")().url


def write_random_file(path: Path, size: int) -> Digest:
    return write_big_file(path, size, seed=None, digest=FN)


# -- both servers ----------------------------------------------------------------------------


def test_action_cache_round_trip(cache_url: str) -> None:
    with backend(cache_url) as b:
        key = digest_of(b"an action").hash
        assert b.get_action(key) is None
        b.put_action(key, b"result v1")
        assert b.get_action(key) == b"result v1"
        b.put_action(key, b"result v2")  # a rewrite replaces (nginx answers 204, serve 200)
        assert b.get_action(key) == b"result v2"


def test_blobs_round_trip_and_find_missing(cache_url: str, tmp_path: Path) -> None:
    blobs = [f"blob {i}".encode() * (i + 1) for i in range(30)] + [b""]
    present = [digest_of(x) for x in blobs]
    absent = [digest_of(f"never stored {i}".encode()) for i in range(7)]
    with backend(cache_url) as b:
        assert sorted(b.find_missing(present), key=str) == sorted(set(present), key=str)
        b.put_blobs(list(zip(present, blobs, strict=True)))
        asked = absent[:3] + present + absent[3:] + present[:5]  # duplicates are asked once
        assert b.find_missing(asked) == absent
        assert b.find_missing([]) == []
        assert b.get_blobs(present[:3] + absent[:1]) == blobs[:3] + [None]
        assert b.get_blob(present[4]) == blobs[4]
        assert b.get_blob(present[-1]) == b""
        assert b.get_blob(absent[0]) is None
        dest = tmp_path / "out.bin"
        assert b.get_blob_to_file(present[7], dest)
        assert dest.read_bytes() == blobs[7]
        assert not b.get_blob_to_file(absent[1], tmp_path / "absent.bin")
        assert not (tmp_path / "absent.bin").exists()


def test_a_50mb_blob_streams_both_ways_in_bounded_memory(cache_url: str, tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    src = tmp_path / "big.bin"
    d = write_random_file(src, size)
    dest = tmp_path / "big.out"
    with backend(cache_url, timeout_s=60) as b:
        tracemalloc.start()
        try:
            b.put_blob_file(d, src)
            _, put_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            assert b.find_missing([d]) == []
            assert b.get_blob_to_file(d, dest)
            _, get_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert ciopt.hash_file(dest, digest=FN) == d
    # A few chunks at most, never the blob (nor the stream threshold's worth).
    assert put_peak < STREAM_THRESHOLD // 2, put_peak
    assert get_peak < STREAM_THRESHOLD // 2, get_peak


def test_a_url_prefix_is_part_of_every_path(cache_url: str) -> None:
    # Bazel and bazel-remote put an instance name before ac/ and cas/; nginx stores it as a
    # directory, serve ignores it. Either way the backend must keep the base path.
    with backend(cache_url + "/team-a/") as b:
        d = digest_of(b"prefixed")
        b.put_blob(d, b"prefixed")
        assert b.get_blob(d) == b"prefixed"
        assert b.name.endswith("/team-a")


# -- failures --------------------------------------------------------------------------------


def test_a_stopped_server_is_a_quick_one_line_backend_error(serve: ServeFactory) -> None:
    server = serve()
    b = backend(server.url, timeout_s=5)
    d = digest_of(b"x")
    b.put_blob(d, b"x")  # the connection is kept alive ...
    assert server.stop() == 0  # ... and the server goes away (SIGTERM: a clean exit)
    for call in (lambda: b.get_blob(d), lambda: b.find_missing([d, digest_of(b"y")]),
                 lambda: b.put_action(d.hash, b"r")):
        start = time.monotonic()
        with pytest.raises(BackendError) as e:
            call()
        assert time.monotonic() - start < 2
        msg = str(e.value)
        assert msg.startswith(f"http {server.url}: "), msg
        assert "\n" not in msg
    b.close()


def test_connection_refused_names_the_server(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    with backend(f"http://127.0.0.1:{port}/cache", timeout_s=5) as b:
        start = time.monotonic()
        with pytest.raises(BackendError, match=rf"^http http://127.0.0.1:{port}/cache: GET ac/.*connection refused$"):
            b.get_action("ab" * 32)
        assert time.monotonic() - start < 2


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (the backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        with backend(f"http://127.0.0.1:{port}", timeout_s=0.5) as b:
            start = time.monotonic()
            with pytest.raises(BackendError, match=r"timed out after 0.5s"):
                b.find_missing([digest_of(b"a"), digest_of(b"b")])
            assert time.monotonic() - start < 3


def test_an_answer_cut_short_is_an_error_and_leaves_no_file(tmp_path: Path) -> None:
    def truncating_server(listener: socket.socket) -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        thread = threading.Thread(target=truncating_server, args=(listener,), daemon=True)
        thread.start()
        d = digest_of(b"y" * 1000)
        with backend(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=5) as b:
            with pytest.raises(BackendError, match=r"GET cas/.*cut short"):
                b.get_blob(d)
            with pytest.raises(BackendError, match=r"GET cas/.*cut short"):
                b.get_blob_to_file(d, tmp_path / "partial.bin")
        thread.join(5)
    assert not (tmp_path / "partial.bin").exists()


def test_a_restarted_server_is_reached_again_on_a_fresh_connection(serve: ServeFactory, tmp_path: Path) -> None:
    first = serve(store=tmp_path / "shared-store")
    with backend(first.url) as b:
        d = digest_of(b"kept")
        b.put_blob(d, b"kept")
        first.stop()
        # Same port, same store: the kept-alive connection is stale and must be replaced
        # silently, not reported as an error.
        serve("--bind", f"127.0.0.1:{first.port}", store=tmp_path / "shared-store")
        assert b.get_blob(d) == b"kept"


def test_bad_urls_and_credentials_in_urls_are_refused() -> None:
    with pytest.raises(BackendError, match="expected an http:// or https:// URL"):
        HttpBackend("ftp://cache:21", 1)
    with pytest.raises(BackendError) as e:
        HttpBackend("https://me:hunter2@cache.example:8443/c", 1)
    assert "hunter2" not in str(e.value)
    assert str(e.value).startswith("http https://cache.example:8443/c: credentials in the URL are not accepted")


# -- nginx: layout and auth ------------------------------------------------------------------


def test_nginx_sees_the_bazel_remote_layout(nginx: Nginx) -> None:
    with backend(nginx.url("cache")) as b:
        d = digest_of(b"on disk")
        b.put_blob(d, b"on disk")
        b.put_action("cd" * 32, b"an action result")
    assert (nginx.files("cache") / "cas" / d.hash).read_bytes() == b"on disk"
    assert (nginx.files("cache") / "ac" / ("cd" * 32)).read_bytes() == b"an action result"


def test_nginx_basic_auth(nginx: Nginx) -> None:
    url = nginx.url("basic")
    d = digest_of(b"secret")
    with backend(url, {"CIOPT_CACHE_USER": NGINX_USER, "CIOPT_CACHE_PASSWORD": NGINX_PASSWORD}) as b:
        b.put_blob(d, b"secret")
        assert b.get_blob(d) == b"secret"
        assert b.find_missing([d]) == []
    no_credentials = "HTTP 401 Unauthorized .no credentials: set CIOPT_CACHE_TOKEN"
    with backend(url) as b, pytest.raises(BackendError, match=no_credentials):
        b.get_blob(d)
    wrong = {"CIOPT_CACHE_USER": NGINX_USER, "CIOPT_CACHE_PASSWORD": "wrong"}
    with backend(url, wrong) as b, pytest.raises(BackendError, match=r"HTTP 401 .*credentials refused"):
        b.find_missing([d])


def test_nginx_bearer_token(nginx: Nginx) -> None:
    url = nginx.url("bearer")
    d = digest_of(b"token")
    with backend(url, {"CIOPT_CACHE_TOKEN": NGINX_TOKEN}) as b:
        b.put_blob(d, b"token")
        assert b.get_blob(d) == b"token"
    with backend(url, {"CIOPT_CACHE_TOKEN": "nope"}) as b, pytest.raises(BackendError, match="HTTP 401"):
        b.get_blob(d)


def test_https_with_a_private_ca(nginx: Nginx, monkeypatch: pytest.MonkeyPatch) -> None:
    url = nginx.tls_url("cache")
    if url is None:
        pytest.skip("openssl could not make a self-signed certificate for the TLS server")
    d = digest_of(b"over tls")
    with backend(url) as b, pytest.raises(BackendError, match=r"TLS error: CERTIFICATE_VERIFY_FAILED"):
        b.get_blob(d)  # a certificate nobody vouches for is refused
    monkeypatch.setenv("SSL_CERT_FILE", str(nginx.ca_file))  # the usual way to trust a private CA
    with backend(url) as b:
        b.put_blob(d, b"over tls")
        assert b.find_missing([d, digest_of(b"no")]) == [digest_of(b"no")]
        assert b.get_blob(d) == b"over tls"


# -- ciopt cache serve -----------------------------------------------------------------------


def test_serve_refuses_a_put_whose_body_does_not_match_its_digest(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve()
    with backend(server.url) as b:
        claimed = digest_of(b"what the client claims")
        with pytest.raises(BackendError, match=r"PUT cas/.*HTTP 400 Bad Request: digest mismatch: the body hashes to"):
            b.put_blob(claimed, b"something else")
        # A large body takes the streaming path (temp file, then the store): checked all the same.
        big = tmp_path / "big.bin"
        write_random_file(big, 3 * 1024 * 1024 + 5)
        with pytest.raises(BackendError, match="digest mismatch"):
            b.put_blob_file(claimed, big)
        assert b.find_missing([claimed]) == [claimed]
        assert b.get_blob(claimed) is None
        # The connection survives a refusal.
        good = digest_of(b"fine")
        b.put_blob(good, b"fine")
        assert b.get_blob(good) == b"fine"
    status = server.status()
    assert status["rejected_puts"] == 2
    assert status["store"]["blobs"] == 1
    assert list((server.store / "incoming").iterdir()) == []  # staging files are removed


def test_serve_tokens(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve(*TOKEN_ARGS, env=TOKENS_ENV)
    d = digest_of(b"guarded")
    with backend(server.url, {"CIOPT_CACHE_TOKEN": WRITE_TOKEN}) as writer:
        writer.put_blob(d, b"guarded")
        writer.put_action("ef" * 32, b"r")
        assert writer.get_blob(d) == b"guarded"
    with backend(server.url, {"CIOPT_CACHE_TOKEN": READ_TOKEN}) as reader:
        assert reader.get_blob(d) == b"guarded"
        assert reader.get_action("ef" * 32) == b"r"
        assert reader.find_missing([d]) == []
        with pytest.raises(BackendError, match=r"PUT cas/.*HTTP 403 Forbidden .not allowed.*: this token may read"):
            reader.put_blob(digest_of(b"x"), b"x")
    # Basic auth with the token as password: what Bazel sends for http://user:TOKEN@host.
    with backend(server.url, {"CIOPT_CACHE_USER": "bazel", "CIOPT_CACHE_PASSWORD": READ_TOKEN}) as basic:
        assert basic.get_blob(d) == b"guarded"
    big = tmp_path / "big.bin"
    big_digest = write_random_file(big, 3 * 1024 * 1024)
    with backend(server.url) as anonymous:
        with pytest.raises(BackendError, match=r"HTTP 401 Unauthorized .no credentials"):
            anonymous.get_blob(d)
        with pytest.raises(BackendError, match="HTTP 401"):
            anonymous.put_blob(digest_of(b"y"), b"y")
        # Refused before its body is read: still the server's answer, not "broken pipe".
        with pytest.raises(BackendError, match="HTTP 401"):
            anonymous.put_blob_file(big_digest, big)
    with backend(server.url, {"CIOPT_CACHE_TOKEN": "forged"}) as forged, pytest.raises(BackendError, match="401"):
        forged.find_missing([d])
    with pytest.raises(urllib.error.HTTPError, match="401"):
        server.status()
    assert server.status(READ_TOKEN)["unauthorized"] >= 4


def test_serve_with_only_a_write_token_leaves_reads_open(serve: ServeFactory) -> None:
    server = serve("--write-token-env", "CACHE_WRITE", env=TOKENS_ENV)
    d = digest_of(b"public")
    with backend(server.url, {"CIOPT_CACHE_TOKEN": WRITE_TOKEN}) as writer:
        writer.put_blob(d, b"public")
    with backend(server.url) as anonymous:
        assert anonymous.get_blob(d) == b"public"
        with pytest.raises(BackendError, match="HTTP 401"):
            anonymous.put_blob(d, b"public")


def test_serve_status_counts_hits_misses_and_bytes(serve: ServeFactory) -> None:
    server = serve()
    with backend(server.url) as b:
        d = digest_of(b"counted")
        assert b.get_blob(d) is None
        b.put_blob(d, b"counted")
        assert b.get_blob(d) == b"counted"
        assert b.get_action("12" * 32) is None
        b.find_missing([d])
    s = server.status()
    assert (s["hits"], s["misses"], s["puts"], s["checks"]) == (1, 2, 1, 1)
    assert s["cas"] == {"hits": 1, "misses": 1, "puts": 1}
    assert s["bytes_served"] == len(b"counted") and s["bytes_received"] == len(b"counted")
    assert s["digest_function"] == FN and s["uptime_s"] > 0
    assert s["store"]["blobs"] == 1 and s["store"]["digest_function"] == FN


def test_serve_streams_large_blobs_without_holding_them(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve()
    src = tmp_path / "big.bin"
    d = write_random_file(src, 50 * 1024 * 1024)
    with backend(server.url, timeout_s=60) as b:
        warm = digest_of(b"warm")
        b.put_blob(warm, b"warm")
        assert b.get_blob(warm) == b"warm"
        with MemorySampler(server) as memory:
            b.put_blob_file(d, src)
            assert b.get_blob_to_file(d, tmp_path / "back.bin")
    assert ciopt.hash_file(tmp_path / "back.bin", digest=FN) == d
    # Upload (staged to a file, then the store) and download (from the store's blob file)
    # grew the server's memory by a few chunks, never by the 50 MB blob.
    assert memory.samples > 20
    assert memory.growth < 16 * 1024 * 1024, memory.growth


class MemorySampler:
    """Samples a server's anonymous memory every few milliseconds while the block runs."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        self.base = server.anon_rss_bytes()
        self.peak = self.base
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.base

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.server.anon_rss_bytes())
            self.samples += 1

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_serve_evicts_to_the_size_cap_after_writes(serve: ServeFactory) -> None:
    server = serve("--max-size", "3MiB", "--gc-interval", "0.2")
    blobs = [os.urandom(700 * 1024) for _ in range(10)]
    with backend(server.url) as b:
        b.put_blobs([(digest_of(x), x) for x in blobs])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        s = server.status()
        if s["store"]["blob_bytes"] <= 3 * 1024 * 1024 and s["gc"]["evicted"] > 0:
            break
        time.sleep(0.1)
    assert s["store"]["blob_bytes"] <= 3 * 1024 * 1024, s
    assert s["gc"]["evicted"] >= 5, s


def test_serve_accepts_chunked_uploads_and_refuses_other_methods(serve: ServeFactory) -> None:
    server = serve()
    data = b"chunked body " * 1000
    d = digest_of(data)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 777):
            yield data[i:i + 777]

    req = urllib.request.Request(f"{server.url}/cas/{d.hash}", data=chunks(), method="PUT",
                                 headers={"Transfer-Encoding": "chunked"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    with backend(server.url) as b:
        assert b.get_blob(d) == data
    with pytest.raises(urllib.error.HTTPError, match="405"):
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/cas/{d.hash}", method="DELETE"), timeout=10)
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"{server.url}/cas/not-a-digest", timeout=10)


# -- the command line ------------------------------------------------------------------------


def test_serve_help_teaches(cli) -> None:
    proc = cli("cache", "serve", "--help")
    assert proc.returncode == 0
    for needle in ("Examples:", "ciopt cache serve --bind 127.0.0.1:8080", "--remote_cache=http://",
                   "--read-token-env", "/status", "CIOPT_CACHE_TOKEN"):
        assert needle in proc.stdout, needle


@pytest.mark.parametrize("args, env, message", [
    (["--bind", "8080"], {}, "--bind '8080': expected HOST:PORT"),
    (["--bind", "localhost:http"], {}, "expected HOST:PORT"),
    (["--bind", "127.0.0.1:0", "--max-size", "lots"], {}, "--max-size: invalid size 'lots'"),
    (["--bind", "127.0.0.1:0", "--write-token-env", "UNSET_TOKEN_VAR"], {},
     "--write-token-env UNSET_TOKEN_VAR: that environment variable is not set"),
    (["--bind", "127.0.0.1:0", "--read-token-env", "CACHE_READ"], TOKENS_ENV,
     "--read-token-env needs --write-token-env"),
    (["--bind", "127.0.0.1:0", "--gc-interval", "0"], {}, "--gc-interval"),
])
def test_serve_usage_errors_are_one_line(cli, tmp_path: Path, args: list[str], env: dict[str, str],
                                         message: str) -> None:
    proc = cli("cache", "serve", "--store", tmp_path / "s", *args, env=env, cwd=tmp_path)
    assert_one_line_error(proc, 2, message)


def test_serve_on_a_taken_port_is_a_one_line_error(cli, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = cli("cache", "serve", "--bind", f"127.0.0.1:{port}", "--store", tmp_path / "s", cwd=tmp_path)
    assert_one_line_error(proc, 2, f"cannot listen on 127.0.0.1:{port}: Address already in use")


def test_serve_warns_when_open_to_the_network(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve("--bind", "0.0.0.0:0")
    assert "ciopt: warning: serving on 0.0.0.0:0 without tokens" in server.log()
    quiet = serve(*TOKEN_ARGS, "--bind", "0.0.0.0:0", env=TOKENS_ENV)
    assert "warning" not in quiet.log()


def test_serve_stops_cleanly_on_sigterm(serve: ServeFactory) -> None:
    server = serve()
    assert server.stop() == 0
    assert "stopped" in server.log()


# -- Bazel -----------------------------------------------------------------------------------


BAZEL_BUILD = """\
genrule(name = "x", outs = ["x.txt"], cmd = "echo hello from bazel > $@")
genrule(name = "y", srcs = [":x"], outs = ["y.txt"], cmd = "tr a-z A-Z < $< > $@")
"""


@pytest.mark.timeout(600)
def test_bazel_uses_serve_as_its_remote_cache(serve: ServeFactory, tmp_path: Path) -> None:
    bazel = shutil.which("bazel")
    if bazel is None:
        pytest.skip("bazel is not installed (Debian: apt-get install bazel-bootstrap); the interop test needs it")
    server = serve("--digest", "sha256")
    ws = tmp_path / "bazel-ws"
    ws.mkdir()
    (ws / "WORKSPACE").write_text("")
    (ws / "BUILD").write_text(textwrap.dedent(BAZEL_BUILD))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    env.pop("BAZELISK_HOME", None)
    # --batch: no server outlives the test; its own output root: nothing lands in ~/.cache/bazel.
    # The system bazelrc stays: Debian's points Bazel at its install base.
    startup = [bazel, "--batch", f"--output_user_root={tmp_path / 'bazel-root'}", "--nohome_rc"]
    build = ["build", "//:y", f"--remote_cache={server.url}", "--spawn_strategy=local", "--noshow_progress"]

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*startup, *args], cwd=ws, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    try:
        first = run(*build)
        assert "remote cache hit" not in first.stderr
        assert (ws / "bazel-bin" / "y.txt").read_text() == "HELLO FROM BAZEL\n"
        uploaded = server.status()
        assert uploaded["ac"]["puts"] == 2 and uploaded["cas"]["puts"] >= 2, uploaded
        run("clean")
        second = run(*build)
        # Bazel's process summary: "3 processes: 2 remote cache hit, 1 internal."
        hits = re.search(r"(\d+) remote cache hits?\b", second.stderr)
        assert hits and int(hits.group(1)) == 2, second.stderr[-4000:]
        assert (ws / "bazel-bin" / "y.txt").read_text() == "HELLO FROM BAZEL\n"
        assert server.status()["ac"]["hits"] == 2
    finally:
        subprocess.run([*startup, "shutdown"], cwd=ws, env=env, capture_output=True, timeout=120, check=False)


# -- batch endpoints: POST /cas:missing and /cas:read ------------------------------------------


def _post(url: str, body: bytes, token: str | None = None) -> tuple[int, bytes]:
    return http_request(url, "POST", body, token, headers={"Content-Type": "text/plain"})


def test_serve_batch_endpoints_answer_like_one_request_per_blob(serve: ServeFactory) -> None:
    server = serve()
    blobs = [f"batch {i}".encode() * (i + 1) for i in range(40)] + [b"", os.urandom(3 * 1024 * 1024)]
    present = [digest_of(x) for x in blobs]
    absent = [digest_of(f"never stored {i}".encode()) for i in range(5)]
    with backend(server.url) as b, backend(server.url) as per_blob:
        per_blob._batch = False  # the fallback path: HEAD and GET per blob
        b.put_blobs(list(zip(present, blobs, strict=True)))
        asked = absent[:2] + present + absent[2:] + present[:3]
        assert b.find_missing(asked) == per_blob.find_missing(asked) == absent
        wanted = [absent[0], *present, present[1], absent[1]]
        assert b.get_blobs(wanted) == per_blob.get_blobs(wanted) == [None, *blobs, blobs[1], None]
        assert b._batch is True
    # Each digest checked once by the batch and once by a HEAD.
    status = server.status()
    assert status["checks"] == len(set(asked)) * 2
    # A digest whose size is wrong is not that blob: missing, and not served.
    wrong_size = Digest(present[5].hash, present[5].size + 1)
    with backend(server.url) as b:
        assert b.find_missing([wrong_size, present[5]]) == [wrong_size]
        assert b.get_blobs([wrong_size, present[5]]) == [None, blobs[5]]


def test_serve_batch_splits_big_reads(serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import ciopt.cache.http_backend as hb

    monkeypatch.setattr(hb, "_READ_BYTES_PER_REQUEST", 5000)
    monkeypatch.setattr(hb, "_READ_PER_REQUEST", 7)
    monkeypatch.setattr(hb, "_MISSING_PER_REQUEST", 9)
    server = serve()
    blobs = [os.urandom(1000 + i) for i in range(60)]
    ds = [digest_of(x) for x in blobs]
    with backend(server.url) as b:
        b.put_blobs(list(zip(ds[:50], blobs[:50], strict=True)))
        assert b.find_missing(ds) == ds[50:]
        assert b.get_blobs(ds) == blobs[:50] + [None] * 10


def test_nginx_falls_back_and_asks_the_batch_endpoint_once(nginx: Nginx) -> None:
    blobs = [f"nginx batch {i}".encode() for i in range(10)]
    ds = [digest_of(x) for x in blobs]
    absent = digest_of(b"not there")
    with backend(nginx.url("cache")) as b:
        b.put_blobs(list(zip(ds, blobs, strict=True)))
        for _ in range(3):
            assert b.find_missing([absent, *ds]) == [absent]
            assert b.get_blobs([*ds, absent]) == [*blobs, None]
        assert b._batch is False
    log = (nginx.dir / "access.log").read_text()
    assert log.count("POST /cache/cas:") == 1, log


def test_serve_batch_refuses_garbled_and_oversized_requests(serve: ServeFactory) -> None:
    import ciopt.cache.server as srv

    server = serve()
    d = digest_of(b"x")
    for body in (b"not a digest\n", d.hash.upper().encode() + b"/1\n", d.hash.encode() + b"/-1\n",
                 d.hash.encode() + b"\n"):
        for endpoint in ("cas:missing", "cas:read"):
            code, answer = _post(f"{server.url}/{endpoint}", body)
            assert code == 400, (endpoint, body, answer)
    too_many = b"".join(f"{digest_of(str(i).encode()).hash}/1\n".encode() for i in range(srv.BATCH_DIGESTS_MAX + 1))
    code, answer = _post(f"{server.url}/cas:missing", too_many)
    assert code == 413 and b"100000 digests" in answer
    too_big = f"{'ab' * 32}/{STREAM_THRESHOLD + 1}\n".encode()
    assert _post(f"{server.url}/cas:read", too_big)[0] == 413
    too_much = b"".join(f"{digest_of(str(i).encode()).hash}/{STREAM_THRESHOLD}\n".encode() for i in range(9))
    code, answer = _post(f"{server.url}/cas:read", too_much)
    assert code == 413 and b"split it" in answer
    # The frame format, raw: `<hex> <size>` then the bytes, or `<hex> -1`.
    with backend(server.url) as b:
        b.put_blob(d, b"x")
    missing = digest_of(b"y")
    code, answer = _post(f"{server.url}/prefix/cas:read", f"{d}\n{missing}\n".encode())
    assert code == 200 and answer == f"{d.hash} 1\nx{missing.hash} -1\n".encode()
    assert _post(f"{server.url}/cas:missing", f"{d}\n{missing}\n".encode()) == (200, f"{missing}\n".encode())


def test_serve_batch_endpoints_need_the_read_token(serve: ServeFactory) -> None:
    server = serve(*TOKEN_ARGS, env=TOKENS_ENV)
    d = digest_of(b"guarded batch")
    with backend(server.url, {"CIOPT_CACHE_TOKEN": WRITE_TOKEN}) as writer:
        writer.put_blob(d, b"guarded batch")
    for token in (READ_TOKEN, WRITE_TOKEN):
        with backend(server.url, {"CIOPT_CACHE_TOKEN": token}) as reader:
            assert reader.find_missing([d, digest_of(b"no")]) == [digest_of(b"no")]
            assert reader.get_blobs([d, digest_of(b"no")]) == [b"guarded batch", None]
            assert reader._batch is True
    for token in (None, "forged"):
        for endpoint in ("cas:missing", "cas:read"):
            assert _post(f"{server.url}/{endpoint}", f"{d}\n".encode(), token)[0] == 401
        with backend(server.url, {"CIOPT_CACHE_TOKEN": token} if token else NO_AUTH) as anonymous:
            with pytest.raises(BackendError, match=r"POST cas:missing: HTTP 401"):
                anonymous.find_missing([d, digest_of(b"no")])
            with pytest.raises(BackendError, match=r"POST cas:read: HTTP 401"):
                anonymous.get_blobs([d, digest_of(b"no")])
            assert anonymous._batch is None  # a refusal is not "no such endpoint"
