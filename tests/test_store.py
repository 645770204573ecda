"""Store semantics: round trips, digest function, corruption never served, gc to a cap."""

from __future__ import annotations

import gc as pygc
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ciopt

INLINE_MAX = 1 << 20


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=5000), max_size=30))
def test_round_trip_property(store: ciopt.Store, blobs: list[bytes]) -> None:
    digests = store.put_many(blobs)
    assert digests == [ciopt.hash_bytes(b) for b in blobs]
    assert store.get_many(digests) == blobs
    assert all(store.contains(d) for d in digests)
    assert store.find_missing(digests) == []
    for b, d in zip(blobs, digests):
        assert store.get(d) == b
        assert store.get(str(d)) == b
        assert store.get(d.hash) == b


def test_absent_and_wrong_size(store: ciopt.Store) -> None:
    d = ciopt.hash_bytes(b"never stored")
    assert store.get(d) is None
    assert not store.contains(d)
    assert store.find_missing([d]) == [d]
    stored = store.put(b"abc")
    assert store.get(ciopt.Digest(stored.hash, 4)) is None


def test_large_blobs_live_beside_the_environment(store: ciopt.Store, tmp_path: Path) -> None:
    big = os.urandom(INLINE_MAX + 1)
    d = store.put(big)
    assert store.get(d) == big
    assert (Path(store.path) / "blobs" / d.hash[:2] / d.hash).exists()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * INLINE_MAX))
    d2 = store.put_file(src)
    out = tmp_path / "out" / "copy.bin"
    assert store.get_to_file(d2, out, executable=True)
    assert out.read_bytes() == src.read_bytes()
    assert os.access(out, os.X_OK)
    st = store.stats()
    assert st["external_blobs"] == 2 and st["blobs"] == 2


def test_action_cache(store: ciopt.Store) -> None:
    key = ciopt.hash_bytes(b"action").hash
    assert store.action_get(key) is None
    store.action_put(key, b"result-bytes")
    assert store.action_get(key) == b"result-bytes"
    assert store.stats()["action_results"] == 1
    assert store.action_delete(key)
    assert store.action_get(key) is None
    with pytest.raises(ValueError, match="invalid ActionKey"):
        store.action_get("xyz")


def test_digest_function_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = ciopt.Store(path, digest="sha256")
    d = s.put(b"abc")
    assert d.hash == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ciopt.StoreError, match="uses digest function sha256, not blake3"):
        ciopt.Store(path, digest="blake3")
    del s
    pygc.collect()
    with pytest.raises(ciopt.StoreError, match="uses digest function sha256"):
        ciopt.Store(path, digest="blake3")
    assert ciopt.Store(path).digest_function == "sha256"


def test_same_path_shares_one_environment(tmp_path: Path) -> None:
    a = ciopt.Store(tmp_path / "s")
    b = ciopt.Store(tmp_path / "s")
    d = a.put(b"shared")
    assert b.get(d) == b"shared"


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ciopt.StoreError, match="is not a directory"):
        ciopt.Store(f)


def _close(store: ciopt.Store) -> Path:
    path = Path(store.path)
    del store
    pygc.collect()
    return path


def test_flipped_bytes_inside_lmdb_are_never_served(tmp_path: Path) -> None:
    s = ciopt.Store(tmp_path / "s")
    marker = b"CIOPT-MARKER-" + os.urandom(16).hex().encode()
    payload = marker * 400  # ~18 KB: an LMDB overflow page run
    good = s.put(b"untouched blob")
    d = s.put(payload)
    path = _close(s)
    data_file = path / "lmdb" / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    at = raw.find(marker)
    assert at >= 0
    raw[at + 5] ^= 0xFF
    data_file.write_bytes(bytes(raw))

    s = ciopt.Store(path)
    report = s.verify()
    assert report["corrupt"] == [str(d)]
    assert report["checked"] == 2
    assert s.get(d) is None  # verify removed it
    assert s.get(good) == b"untouched blob"


def test_corrupt_blob_raises_on_get_then_is_gone(tmp_path: Path) -> None:
    s = ciopt.Store(tmp_path / "s")
    big = os.urandom(INLINE_MAX + 100)
    d = s.put(big)
    blob_file = Path(s.path) / "blobs" / d.hash[:2] / d.hash
    raw = bytearray(blob_file.read_bytes())
    raw[12345] ^= 0x01
    blob_file.write_bytes(bytes(raw))
    with pytest.raises(ciopt.CorruptBlobError, match=d.hash):
        s.get(d)
    assert s.get(d) is None
    assert not s.contains(d)
    assert not blob_file.exists()


def test_missing_external_file_is_reported(tmp_path: Path) -> None:
    s = ciopt.Store(tmp_path / "s")
    d = s.put(os.urandom(INLINE_MAX + 1))
    (Path(s.path) / "blobs" / d.hash[:2] / d.hash).unlink()
    report = s.verify()
    assert report["missing"] == [str(d)] and report["corrupt"] == []
    assert s.verify() == {"checked": 0, "corrupt": [], "missing": [], "orphans_removed": 0}


def test_gc_to_a_size_cap(tmp_path: Path) -> None:
    s = ciopt.Store(tmp_path / "s", max_size="10KiB")
    digests = s.put_many([os.urandom(1024) for _ in range(30)])
    r = s.gc()
    assert r["remaining_bytes"] <= 10 * 1024
    assert r["evicted"] == 20 and r["evicted_bytes"] == 20 * 1024
    assert len(s.find_missing(digests)) == 20
    assert s.stats()["blob_bytes"] == r["remaining_bytes"]
    with pytest.raises(ValueError, match="gc needs a size cap"):
        ciopt.Store(tmp_path / "other").gc()


def test_map_grows_by_itself(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import ciopt, os\n"
        "s = ciopt.Store(os.environ['P'])\n"
        "blobs = [os.urandom(50_000) for _ in range(200)]\n"
        "ds = s.put_many(blobs)\n"
        "assert s.get_many(ds) == blobs\n"
        "print(s.stats()['blobs'])\n"
    )
    env = {**os.environ, "P": str(tmp_path / "s"), "CIOPT_STORE_MAP_SIZE": str(1 << 20)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "200"


def test_parse_size() -> None:
    from ciopt.size import parse_size

    assert parse_size("20GiB") == 20 << 30
    assert parse_size("500MB") == 500_000_000
    with pytest.raises(ValueError, match="parsecs"):
        parse_size("3 parsecs")
