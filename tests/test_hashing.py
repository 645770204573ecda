"""Digests must equal the reference implementations byte for byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ciopt

# Sizes around BLAKE3's 1 KiB chunk and 64-byte block, our 256 KiB mmap switch and
# the 16 MiB switch to multi-threaded tree hashing.
SIZES = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 4097, 65536, 262143, 262144, 262145,
         3 * 1024 * 1024 + 7, 16 * 1024 * 1024 + 1]


def reference(data: bytes, digest: str) -> str:
    return blake3.blake3(data).hexdigest() if digest == "blake3" else hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("digest", ["blake3", "sha256"])
@pytest.mark.parametrize("size", SIZES)
def test_file_and_bytes_digests_match_reference(tmp_path: Path, size: int, digest: str) -> None:
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    want = reference(data, digest)
    assert ciopt.hash_bytes(data, digest).hash == want
    d = ciopt.hash_file(p, digest)
    assert (d.hash, d.size) == (want, size)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200_000), digest=st.sampled_from(["blake3", "sha256"]))
def test_random_contents_match_reference(tmp_path_factory: pytest.TempPathFactory, data: bytes, digest: str) -> None:
    p = tmp_path_factory.mktemp("h") / "f"
    p.write_bytes(data)
    assert ciopt.hash_file(p, digest).hash == reference(data, digest)


def test_hash_files_keeps_order_and_matches(tmp_path: Path) -> None:
    contents = [os.urandom(n) for n in range(0, 5000, 37)]
    paths = []
    for i, c in enumerate(contents):
        p = tmp_path / f"f{i}"
        p.write_bytes(c)
        paths.append(p)
    got = ciopt.hash_files(paths)
    assert [d.hash for d in got] == [reference(c, "blake3") for c in contents]
    assert [d.size for d in got] == [len(c) for c in contents]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError) as e:
        ciopt.hash_files([missing])
    assert e.value.filename == str(missing)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        ciopt.hash_file(tmp_path)


def test_unknown_digest_function_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown digest function 'md5'"):
        ciopt.hash_bytes(b"x", "md5")


def test_digest_value_type() -> None:
    d = ciopt.hash_bytes(b"hello")
    assert str(d) == f"{d.hash}/5"
    assert ciopt.Digest.parse(str(d)) == d
    assert hash(ciopt.Digest.parse(str(d))) == hash(d)
    with pytest.raises(ValueError):
        ciopt.Digest.parse("not-a-digest")
    import pickle

    assert pickle.loads(pickle.dumps(d)) == d
