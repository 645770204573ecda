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
]
