"""The StatCache skips unchanged files and never trusts a racily clean entry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ciopt


def age(path: Path, seconds: float = 10) -> None:
    """Backdate mtime so the entry is past the racy window (as a file edited long ago)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_unchanged_files_are_not_read_again(tmp_path: Path, store: ciopt.Store) -> None:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(50):
        p = root / f"m{i}.py"
        p.write_text(f"x = {i}\n")
        age(p)
    first = store.hash_tree(root)
    assert first.files_read == 50
    # ctime cannot be backdated: the files stay racily clean until the 100 ms window has passed.
    time.sleep(0.3)
    second = store.hash_tree(root)
    third = store.hash_tree(root)
    assert second.digest == first.digest == third.digest
    assert third.files_read == 0 and third.bytes_read == 0


def test_same_size_edit_in_the_same_second_is_detected(tmp_path: Path, store: ciopt.Store) -> None:
    p = tmp_path / "f.txt"
    p.write_text("aaaa")
    d1 = store.hash_files([p])[0]
    p.write_text("bbbb")  # same size, same second
    d2 = store.hash_files([p])[0]
    assert d1 != d2
    assert d2 == ciopt.hash_file(p)


def test_edit_with_mtime_restored_is_detected(tmp_path: Path, store: ciopt.Store) -> None:
    p = tmp_path / "f.txt"
    p.write_text("aaaa")
    age(p, 100)
    st = p.stat()
    store.hash_files([p])
    time.sleep(0.3)
    store.hash_files([p])  # now a trusted entry
    p.write_text("bbbb")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # an editor restoring mtime: ctime still moves
    assert store.hash_files([p])[0] == ciopt.hash_file(p)


def test_stat_cache_is_persisted_in_the_store(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    p.write_text("data")
    s = ciopt.Store(tmp_path / "s")
    s.hash_files([p])
    assert s.stats()["stat_entries"] == 1
