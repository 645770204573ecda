"""Merkle digests identify names, contents, modes and structure; walks honor .gitignore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ciopt


def make_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("import b\n")
    (root / "pkg" / "sub" / "b.py").write_text("x = 1\n")
    (root / "README").write_text("hi\n")


@pytest.fixture
def tree_root(tmp_path: Path) -> Path:
    root = tmp_path / "t"
    root.mkdir()
    make_tree(root)
    return root


def digest(root: Path, **kw) -> str:
    return str(ciopt.hash_tree(root, **kw).digest)


def test_same_content_elsewhere_same_digest(tmp_path: Path, tree_root: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    make_tree(other)
    assert digest(tree_root) == digest(other)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "pkg" / "a.py").write_text("import c\n"),
        lambda r: (r / "pkg" / "a.py").rename(r / "pkg" / "A.py"),
        lambda r: (r / "pkg" / "sub" / "b.py").rename(r / "pkg" / "b.py"),
        lambda r: os.chmod(r / "README", 0o755),
        lambda r: (r / "pkg" / "empty").mkdir(),
        lambda r: os.symlink("README", r / "link"),
    ],
    ids=["content", "rename", "move", "mode", "empty-dir", "symlink"],
)
def test_digest_changes(tree_root: Path, change) -> None:
    before = digest(tree_root)
    change(tree_root)
    assert digest(tree_root) != before


def test_entries_are_sorted_with_file_digests(tree_root: Path) -> None:
    t = ciopt.hash_tree(tree_root)
    paths = [e.path for e in t.entries()]
    assert paths == sorted(paths) == ["README", "pkg/a.py", "pkg/sub/b.py"]
    assert t.files()["pkg/a.py"] == ciopt.hash_file(tree_root / "pkg" / "a.py").hash
    assert len(t) == 3


def test_gitignore_and_excludes(tree_root: Path) -> None:
    (tree_root / "build").mkdir()
    (tree_root / "build" / "out.o").write_text("junk")
    (tree_root / "x.log").write_text("log")
    (tree_root / ".git").mkdir()
    (tree_root / ".git" / "HEAD").write_text("ref")
    (tree_root / ".gitignore").write_text("build/\n*.log\n")
    files = set(ciopt.hash_tree(tree_root).files())
    assert files == {".gitignore", "README", "pkg/a.py", "pkg/sub/b.py"}
    assert "build/out.o" in ciopt.hash_tree(tree_root, gitignore=False).files()
    assert set(ciopt.hash_tree(tree_root, excludes=["pkg/sub"]).files()) == {".gitignore", "README", "pkg/a.py"}
    # Ignored files do not affect the digest.
    before = digest(tree_root)
    (tree_root / "other.log").write_text("more")
    assert digest(tree_root) == before


def test_executable_bit_and_symlink_reported(tree_root: Path) -> None:
    os.chmod(tree_root / "README", 0o755)
    os.symlink("pkg/a.py", tree_root / "link")
    entries = {e.path: e for e in ciopt.hash_tree(tree_root).entries()}
    assert entries["README"].is_executable
    assert entries["link"].is_symlink
    assert entries["link"].digest == ciopt.hash_bytes(b"pkg/a.py")


def test_store_tree_equals_plain_tree(tree_root: Path, store: ciopt.Store) -> None:
    assert store.hash_tree(tree_root).digest == ciopt.hash_tree(tree_root).digest


def test_sha256_tree_differs_from_blake3(tree_root: Path) -> None:
    assert digest(tree_root, digest="sha256") != digest(tree_root)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="nope"):
        ciopt.hash_tree(tmp_path / "nope")
