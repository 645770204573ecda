"""The Redis backend against real redis-server processes (tests/redis_server.py)."""

from __future__ import annotations

import filecmp
import random
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from ciopt import Digest, hash_bytes, hash_file
from ciopt.cache.backend import STREAM_THRESHOLD, BackendError
from ciopt.cache.redis_backend import CHUNK_SIZE, KEYS_PER_TRIP, RedisBackend
from buildws import write_big_file

if TYPE_CHECKING:
    from redis_server import RedisServer, Servers

# The redis_server and start_redis fixtures come from tests/conftest.py (pytest_plugins); the module
# is imported as a plugin first, so that pytest rewrites its asserts.
TIMEOUT_S = 1.0


@pytest.fixture
def backend(redis_server: RedisServer) -> RedisBackend:
    b = RedisBackend(redis_server.url, TIMEOUT_S)
    yield b
    b.close()


def raw(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port)


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_one_line(e: BaseException, server_name: str) -> None:
    text = str(e)
    assert "\n" not in text, text
    assert text.startswith(f"redis {server_name}: "), text


# -- ActionCache and small blobs


def test_action_put_get_overwrite(backend: RedisBackend, redis_server: RedisServer) -> None:
    assert backend.get_action("ab" * 32) is None
    backend.put_action("ab" * 32, b"result-1")
    assert backend.get_action("ab" * 32) == b"result-1"
    backend.put_action("ab" * 32, b"result-2")
    assert backend.get_action("ab" * 32) == b"result-2"
    assert raw(redis_server).get("ciopt:ac:" + "ab" * 32) == b"result-2"  # the documented layout


def test_namespace_separates_caches(redis_server: RedisServer) -> None:
    a = RedisBackend(redis_server.url, TIMEOUT_S, namespace="team-a")
    b = RedisBackend(redis_server.url, TIMEOUT_S, namespace="team-b")
    a.put_action("k", b"a")
    assert b.get_action("k") is None
    assert raw(redis_server).get("team-a:ac:k") == b"a"


def test_small_blob_round_trips(backend: RedisBackend, tmp_path: Path) -> None:
    data = blob(1000)
    d = hash_bytes(data)
    assert backend.get_blob(d) is None
    assert backend.get_blob_to_file(d, tmp_path / "absent") is False
    assert not (tmp_path / "absent").exists()
    backend.put_blob(d, data)
    assert backend.get_blob(d) == data
    assert backend.get_blob_to_file(d, tmp_path / "out") is True
    assert (tmp_path / "out").read_bytes() == data
    (tmp_path / "src").write_bytes(b"from a file")
    fd = hash_file(tmp_path / "src")
    backend.put_blob_file(fd, tmp_path / "src")
    assert backend.get_blob(fd) == b"from a file"
    empty = hash_bytes(b"")
    backend.put_blob(empty, b"")
    assert backend.get_blob(empty) == b""


def test_find_missing_is_batched(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    digests = [hash_bytes(b"blob %d" % i) for i in range(2 * KEYS_PER_TRIP + 500)]
    present = digests[::3]
    backend.put_blobs((d, b"blob %d" % i) for i, d in enumerate(digests) if i % 3 == 0)
    trips = 0
    send = redis.connection.Connection.send_packed_command

    def counting(self: redis.connection.Connection, *args: object, **kwargs: object) -> object:
        nonlocal trips
        trips += 1
        return send(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    missing = backend.find_missing(digests)
    assert trips == 3  # 2,500 digests, 1,000 per round trip
    assert missing == [d for d in digests if d not in set(present)]
    assert backend.find_missing([]) == []


def test_batch_put_get_mixed_sizes(backend: RedisBackend) -> None:
    small = [blob(6500, seed=i) for i in range(3000)]  # several MSET/MGET round trips
    large = blob(STREAM_THRESHOLD + 12345, seed=99)
    items = [(hash_bytes(b), b) for b in [*small[:1500], large, *small[1500:]]]
    backend.put_blobs(items)
    absent = hash_bytes(b"never stored")
    wanted = [d for d, _ in items] + [absent]
    got = backend.get_blobs(wanted)
    assert got[:-1] == [b for _, b in items]
    assert got[-1] is None
    assert backend.find_missing(wanted) == [absent]


# -- large blobs: chunked, bounded memory


@pytest.mark.parametrize("size", [STREAM_THRESHOLD, STREAM_THRESHOLD + 1, 9 * CHUNK_SIZE])
def test_sizes_around_the_threshold(backend: RedisBackend, redis_server: RedisServer, tmp_path: Path,
                                    size: int) -> None:
    data = blob(size, seed=size)
    d = hash_bytes(data)
    backend.put_blob(d, data)
    assert backend.get_blob(d) == data
    assert backend.get_blob_to_file(d, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    stored = raw(redis_server).get(f"ciopt:cas:{d.hash}")
    if size <= STREAM_THRESHOLD:
        assert stored == data
    else:
        assert stored == b"ciopt-chunked/1 %d %d" % (size, CHUNK_SIZE)
        chunks = -(-size // CHUNK_SIZE)
        assert raw(redis_server).exists(*(f"ciopt:chunk:{d.hash}:{i}" for i in range(chunks))) == chunks


def test_50mb_blob_through_files_with_bounded_memory(backend: RedisBackend, tmp_path: Path) -> None:
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    d = write_big_file(src, 50 * 1000 * 1000)
    up = peak_bytes(lambda: backend.put_blob_file(d, src))
    assert backend.find_missing([d]) == []
    dest.write_bytes(b"stale bytes, to be truncated")
    down = peak_bytes(lambda: backend.get_blob_to_file(d, dest))
    assert filecmp.cmp(src, dest, shallow=False)
    assert hash_file(dest) == d
    # Chunks move CHUNKS_PER_TRIP (8 x 1 MiB) at a time: far below the blob's 50 MB.
    assert up < 20 * 2**20, up
    assert down < 20 * 2**20, down


def test_evicted_chunk_is_a_miss_and_heals(backend: RedisBackend, redis_server: RedisServer,
                                           tmp_path: Path) -> None:
    data = blob(STREAM_THRESHOLD + 5 * CHUNK_SIZE, seed=7)
    d = hash_bytes(data)
    backend.put_blob(d, data)
    raw(redis_server).delete(f"ciopt:chunk:{d.hash}:9")  # as an LRU eviction would
    dest = tmp_path / "dest"
    assert backend.get_blob_to_file(d, dest) is False
    assert not dest.exists()  # no partial blob left behind
    assert backend.get_blob(d) is None
    # Reported missing, so the next writer sends it again.
    assert backend.find_missing([d]) == [d]
    backend.put_blob(d, data)
    assert backend.find_missing([d]) == []
    assert backend.get_blob(d) == data


def test_garbled_manifest_is_a_miss(backend: RedisBackend, redis_server: RedisServer) -> None:
    d = Digest("cd" * 32, STREAM_THRESHOLD + 1)
    raw(redis_server).set(f"ciopt:cas:{d.hash}", b"not a manifest")
    assert backend.get_blob(d) is None
    assert backend.find_missing([d]) == [d]  # its chunks are absent


def test_reader_needs_no_write_permission(start_redis: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only runner (cache.remote.read_only) can hold an ACL user that cannot write."""
    # The users of docs/cache-redis.md.
    reads = ("-@all", "+get", "+mget", "+exists")
    server = start_redis("--user", "writer", "on", ">w", "~ciopt:*", *reads, "+set", "+mset",
                         "--user", "reader", "on", ">r", "~ciopt:*", *reads)
    small, large = blob(100), blob(STREAM_THRESHOLD + 2 * CHUNK_SIZE)
    monkeypatch.setenv("CIOPT_REDIS_USERNAME", "writer")
    monkeypatch.setenv("CIOPT_REDIS_PASSWORD", "w")
    writer = RedisBackend(server.url, TIMEOUT_S)
    writer.put_blobs([(hash_bytes(small), small), (hash_bytes(large), large)])
    writer.put_action("k", b"v")
    raw(server).delete(f"ciopt:chunk:{hash_bytes(large).hash}:3")  # evicted, say
    monkeypatch.setenv("CIOPT_REDIS_USERNAME", "reader")
    monkeypatch.setenv("CIOPT_REDIS_PASSWORD", "r")
    reader = RedisBackend(server.url, TIMEOUT_S)
    assert reader.get_action("k") == b"v"
    assert reader.get_blobs([hash_bytes(small), hash_bytes(large)]) == [small, None]
    assert reader.find_missing([hash_bytes(small), hash_bytes(large)]) == [hash_bytes(large)]
    with pytest.raises(BackendError, match="NOPERM|permission"):
        reader.put_action("k", b"poison")


def test_allkeys_lru_server_never_returns_wrong_bytes(start_redis: Servers) -> None:
    """The documented operator setting: a full server evicts, and what it evicted is a miss."""
    server = start_redis("--maxmemory", "40mb", "--maxmemory-policy", "allkeys-lru")
    backend = RedisBackend(server.url, TIMEOUT_S)
    blobs = [blob(STREAM_THRESHOLD + 3 * CHUNK_SIZE, seed=i) for i in range(5)]  # 55 MiB in all
    for b in blobs:
        backend.put_blob(hash_bytes(b), b)
    got = [backend.get_blob(hash_bytes(b)) for b in blobs]
    # Which keys go is the server's (sampled, approximate) LRU, so which blobs survive whole
    # varies from run to run (once, all five did): only that it evicted, and that every blob it
    # answers is right.
    assert raw(server).info("stats")["evicted_keys"] > 0
    assert all(g is None or g == b for g, b in zip(got, blobs))


def test_full_server_without_eviction_names_the_fix(start_redis: Servers) -> None:
    server = start_redis("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    backend = RedisBackend(server.url, TIMEOUT_S)
    with pytest.raises(BackendError, match="allkeys-lru") as e:
        for i in range(10):
            data = blob(1 << 20, seed=i)
            backend.put_blob(hash_bytes(data), data)
    assert_one_line(e.value, server.url)


# -- URLs and credentials


def test_unix_socket_url(redis_server: RedisServer) -> None:
    backend = RedisBackend(f"unix://{redis_server.socket}?db=2", TIMEOUT_S)
    backend.put_action("k", b"over the socket")
    assert backend.get_action("k") == b"over the socket"
    assert redis.Redis(unix_socket_path=str(redis_server.socket), db=2).get("ciopt:ac:k") == b"over the socket"
    assert raw(redis_server).get("ciopt:ac:k") is None  # database 2, not 0


def test_database_from_path(redis_server: RedisServer) -> None:
    RedisBackend(f"redis://127.0.0.1:{redis_server.port}/3", TIMEOUT_S).put_action("k", b"v")
    assert redis.Redis(host="127.0.0.1", port=redis_server.port, db=3).get("ciopt:ac:k") == b"v"


def test_password_from_env(start_redis: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_redis("--requirepass", "s3cret")
    monkeypatch.delenv("CIOPT_REDIS_USERNAME", raising=False)
    monkeypatch.delenv("CIOPT_REDIS_PASSWORD", raising=False)
    with pytest.raises(BackendError) as e:
        RedisBackend(server.url, TIMEOUT_S).get_action("k")
    assert_one_line(e.value, server.url)
    assert "auth" in str(e.value).lower()
    monkeypatch.setenv("CIOPT_REDIS_PASSWORD", "wrong")
    with pytest.raises(BackendError):
        RedisBackend(server.url, TIMEOUT_S).get_action("k")
    monkeypatch.setenv("CIOPT_REDIS_PASSWORD", "s3cret")
    backend = RedisBackend(server.url, TIMEOUT_S)
    backend.put_action("k", b"authenticated")
    assert backend.get_action("k") == b"authenticated"
    assert "s3cret" not in backend.name


def test_username_and_password_from_env(start_redis: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_redis("--user", "default", "off", "--user", "ci", "on", ">ci-pass", "~ciopt:*", "+@all")
    monkeypatch.setenv("CIOPT_REDIS_USERNAME", "ci")
    monkeypatch.setenv("CIOPT_REDIS_PASSWORD", "ci-pass")
    backend = RedisBackend(server.unix_url, TIMEOUT_S)
    backend.put_action("k", b"as ci")
    assert backend.get_action("k") == b"as ci"


@pytest.mark.parametrize("url", [
    "redis://:s3cret@127.0.0.1:6379/0",
    "redis://alice:s3cret@127.0.0.1:6379/0",
    "rediss://alice:s3cret@cache.example:6380/0",
    "unix:///tmp/redis.sock?db=0&password=s3cret",
])
def test_credentials_in_url_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="CIOPT_REDIS_PASSWORD") as e:
        RedisBackend(url, TIMEOUT_S)
    assert "s3cret" not in str(e.value)


def test_bad_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match=r"redis://, rediss://, unix://"):
        RedisBackend("http://cache:8080", TIMEOUT_S)


def test_name_is_the_url() -> None:
    assert RedisBackend("redis://cache:6379/0", TIMEOUT_S).name == "redis://cache:6379/0"


def make_tls_files(d: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=ciopt test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext")


def test_tls_url(start_redis: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make the test certificates)")
    from redis_server import free_port

    make_tls_files(tmp_path)
    tls_port = free_port()
    start_redis("--tls-port", str(tls_port), "--tls-cert-file", str(tmp_path / "server.pem"),
                "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
                "--tls-auth-clients", "no")
    backend = RedisBackend(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}", TIMEOUT_S)
    backend.put_action("k", b"over tls")
    assert backend.get_action("k") == b"over tls"
    # A private CA through the environment, as OpenSSL reads it (no URL parameter).
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    assert RedisBackend(f"rediss://127.0.0.1:{tls_port}/0", TIMEOUT_S).get_action("k") == b"over tls"
    # An untrusted server certificate is an error, not a silent plain connection.
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(BackendError, match="certificate"):
        RedisBackend(f"rediss://127.0.0.1:{tls_port}/0", TIMEOUT_S).get_action("k")


# -- failures: one line, within the timeout


def test_unreachable_server_is_a_backend_error() -> None:
    from redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    backend = RedisBackend(url, TIMEOUT_S)  # connecting is lazy: constructing never fails
    for call in (lambda: backend.get_action("k"), lambda: backend.find_missing([hash_bytes(b"x")])):
        with pytest.raises(BackendError) as e:
            call()
        assert_one_line(e.value, url)


def test_server_killed_mid_use(redis_server: RedisServer, backend: RedisBackend, tmp_path: Path) -> None:
    data = blob(STREAM_THRESHOLD + 1)
    d = hash_bytes(data)
    backend.put_blob(d, data)
    backend.put_action("k", b"v")
    redis_server.kill()
    calls: list[Callable[[], object]] = [
        lambda: backend.get_action("k"),
        lambda: backend.put_action("k", b"v"),
        lambda: backend.find_missing([d]),
        lambda: backend.get_blob(d),
        lambda: backend.get_blob_to_file(d, tmp_path / "out"),
        lambda: backend.put_blob(d, data),
        lambda: backend.put_blobs([(hash_bytes(b"x"), b"x")]),
        lambda: backend.get_blobs([hash_bytes(b"x")]),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(BackendError) as e:
            call()
        assert time.monotonic() - start < TIMEOUT_S + 1.0
        assert_one_line(e.value, redis_server.url)
    assert not (tmp_path / "out").exists()


def test_hung_server_times_out(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, 0.5)
    backend.put_action("k", b"v")  # connected before the server stops answering
    redis_server.pause()
    try:
        for call in (lambda: backend.get_action("k"), lambda: backend.find_missing([hash_bytes(b"x")])):
            start = time.monotonic()
            with pytest.raises(BackendError, match="[Tt]imeout") as e:
                call()
            assert time.monotonic() - start < 0.5 + 1.0  # one timeout, no retries
            assert_one_line(e.value, redis_server.url)
    finally:
        redis_server.resume()


# -- concurrency

WRITER = textwrap.dedent("""
    import random, sys, time
    from ciopt import hash_bytes
    from ciopt.cache.backend import STREAM_THRESHOLD
    from ciopt.cache.redis_backend import RedisBackend

    url, start_at = sys.argv[1], float(sys.argv[2])
    small = [random.Random(i).randbytes(6500) for i in range(300)]
    large = [random.Random(1000 + i).randbytes(STREAM_THRESHOLD + 3 * 2**20 + i) for i in range(2)]
    backend = RedisBackend(url, 5.0)
    while time.time() < start_at:  # all writers start together
        time.sleep(0.001)
    for round in range(3):
        backend.put_blobs((hash_bytes(b), b) for b in small)
        for b in large:
            backend.put_blob(hash_bytes(b), b)
        for i, b in enumerate(small[:50]):
            backend.put_action("action-%d" % i, hash_bytes(b).hash.encode())
""")


def test_four_writers_same_keys(redis_server: RedisServer, backend: RedisBackend, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start_at = time.time() + 1.5
    writers = [subprocess.Popen([sys.executable, str(script), redis_server.url, str(start_at)],
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for w in writers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    small = [random.Random(i).randbytes(6500) for i in range(300)]
    large = [random.Random(1000 + i).randbytes(STREAM_THRESHOLD + 3 * 2**20 + i) for i in range(2)]
    digests = [hash_bytes(b) for b in small + large]
    assert backend.find_missing(digests) == []
    assert backend.get_blobs(digests) == small + large
    for i, b in enumerate(large):
        out = tmp_path / f"large-{i}"
        assert backend.get_blob_to_file(hash_bytes(b), out)
        assert hash_file(out) == hash_bytes(b)
    for i, b in enumerate(small[:50]):
        assert backend.get_action(f"action-{i}") == hash_bytes(b).hash.encode()
