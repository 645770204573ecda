"""ciopt: a Bazel-style build graph and CI optimizer.

The hashing and the content-addressed Store live in the Rust extension `ciopt._native`;
this package re-exports its public face.
"""

from ciopt._native import (
    CorruptBlobError,
    Digest,
    Store,
    StoreError,
    Tree,
    TreeEntry,
    __version__,
    hash_bytes,
    hash_file,
    hash_files,
    hash_tree,
    tree_digest,
)

__all__ = [
    "CorruptBlobError",
    "Digest",
    "Store",
    "StoreError",
    "Tree",
    "TreeEntry",
    "__version__",
    "hash_bytes",
    "hash_file",
    "hash_files",
    "hash_tree",
    "tree_digest",
    "Workspace",
]


def __getattr__(name: str) -> object:
    # Lazy: the build graph pulls in the Starlark interpreter, which `ciopt hash` never needs.
    if name == "Workspace":
        from ciopt.workspace import Workspace

        return Workspace
    raise AttributeError(f"module 'ciopt' has no attribute {name!r}")
