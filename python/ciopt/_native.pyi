"""Typed stubs for the Rust extension `ciopt._native` (rust/src/lib.rs).

Every function that touches the filesystem or hashes bytes releases the GIL.
Errors: missing paths raise FileNotFoundError / OSError naming the path; a store
problem raises StoreError; a blob whose bytes no longer match its digest raises
CorruptBlobError (and is dropped from the store).
"""

from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Literal, TypedDict

DigestFunction = Literal["blake3", "sha256"]
StrPath = str | PathLike[str]

class StoreError(Exception):
    """The store cannot be opened or used (wrong digest function, bad path, full disk)."""

class CorruptBlobError(StoreError):
    """A stored blob failed verification on read; it has been removed."""

class Digest:
    """(hash, size) of a byte string. `str(d)` is `<hex>/<size>`."""

    hash: str
    size: int
    def __init__(self, hash: str, size: int) -> None: ...
    @staticmethod
    def parse(text: str) -> Digest:
        """Parse `<hex>/<size>`; ValueError on anything else."""
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

def hash_bytes(data: bytes, digest: DigestFunction = "blake3") -> Digest: ...
def hash_file(path: StrPath, digest: DigestFunction = "blake3") -> Digest: ...
def hash_files(paths: Sequence[StrPath], digest: DigestFunction = "blake3") -> list[Digest]:
    """Hash many files in parallel (rayon). Raises on the first unreadable path."""

class TreeEntry:
    path: str  # relative to the tree root, '/'-separated
    digest: Digest
    is_executable: bool
    is_symlink: bool

class Tree:
    """A Merkle directory. `digest` identifies names, contents, executable bits and structure."""

    root: str
    digest: Digest
    files_read: int  # files actually read (StatCache misses) to compute this tree
    bytes_read: int
    def entries(self) -> list[TreeEntry]:
        """Every file (and symlink) below the root, sorted by path."""
    def files(self) -> dict[str, str]:
        """path -> hex hash, for quick lookups."""
    def __len__(self) -> int: ...

def hash_tree(
    root: StrPath,
    digest: DigestFunction = "blake3",
    excludes: Sequence[str] = (),
    gitignore: bool = True,
) -> Tree:
    """Walk `root` (honoring .gitignore unless gitignore=False; `excludes` are gitignore-style globs)."""

def tree_digest(entries: Sequence[tuple[str, Digest, bool]], digest: DigestFunction = "blake3") -> Digest:
    """Merkle root of explicit (relative path, Digest, is_executable) entries; same encoding as hash_tree."""

# Flags of an extracted import (bit set).
IMPORT_WEAK: int  # guarded by try/except ImportError or contextlib.suppress(ImportError)
IMPORT_TYPE_CHECKING: int  # inside `if TYPE_CHECKING:`
IMPORT_DYNAMIC: int  # importlib.import_module / __import__ / JS import()
IMPORT_LAZY: int  # inside a function body
IMPORT_UNRESOLVED: int  # dynamic with a non-literal argument; module = expression text
IMPORT_STAR: int  # from x import *
IMPORT_REEXPORT: int  # JS/TS export ... from

ImportTuple = tuple[str, int, list[str], int, int]  # (module, level, names, line, flags)

def extract_imports(paths: Sequence[StrPath], lang: str | None = None) -> list[list[ImportTuple] | str]:
    """Imports of each file (in parallel; Python through the lexical fast path, the rest with
    tree-sitter); the language follows the extension
    (.py/.pyi, .js/.mjs/.cjs/.jsx, .ts/.mts/.cts, .tsx, .sh/.bash) unless `lang` is given.
    A string in place of a list is the reason that file could not be read."""

def extract_imports_source(source: bytes, lang: str, full: bool = False) -> list[ImportTuple]:
    """Imports of one source. Python goes through a lexical pre-scanner that yields exactly
    what the whole tree-sitter walk yields (falling back to it when unsure); `full=True`
    forces that walk (the reference)."""

class StoreStats(TypedDict):
    path: str
    digest_function: str
    blobs: int
    blob_bytes: int
    inline_blobs: int
    external_blobs: int
    action_results: int
    stat_entries: int
    env_bytes: int
    max_size: int | None

class VerifyReport(TypedDict):
    checked: int
    corrupt: list[str]  # digests (<hex>/<size>) found corrupt and removed
    missing: list[str]  # external blobs whose file vanished
    orphans_removed: int

class GcReport(TypedDict):
    evicted: int
    evicted_bytes: int
    remaining_bytes: int
    orphans_removed: int

class Store:
    """LMDB content-addressed store: CAS + ActionCache + StatCache in one environment.

    Opening the same path twice in one process returns handles onto the same environment.
    `digest=None` adopts the function recorded in an existing store (blake3 for a new one);
    an explicit digest that disagrees with the recorded one raises StoreError.
    """

    path: str
    digest_function: str
    def __init__(
        self, path: StrPath, digest: DigestFunction | None = None, max_size: int | str | None = None
    ) -> None: ...
    def put(self, data: bytes) -> Digest: ...
    def put_many(self, blobs: Sequence[bytes]) -> list[Digest]: ...
    def put_file(self, path: StrPath) -> Digest:
        """Store a file's bytes (large files stream to a file beside the environment)."""
    def put_files(self, paths: Sequence[StrPath]) -> list[Digest]:
        """Store many files in one transaction (files over 1 MiB are streamed one by one)."""
    def get(self, digest: Digest | str) -> bytes | None:
        """The blob's bytes, verified; None when absent. CorruptBlobError when it fails verification."""
    def get_many(self, digests: Sequence[Digest | str]) -> list[bytes | None]: ...
    def get_to_file(self, digest: Digest | str, dest: StrPath, executable: bool = False) -> bool:
        """Write a verified blob to `dest` atomically; False when absent."""
    def contains(self, digest: Digest | str) -> bool: ...
    def find_missing(self, digests: Iterable[Digest | str]) -> list[Digest]: ...
    def action_get(self, key: str) -> bytes | None:
        """ActionCache lookup by ActionKey hex."""
    def action_put(self, key: str, result: bytes) -> None: ...
    def action_get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def action_put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Many ActionCache entries in one transaction."""
    def action_delete(self, key: str) -> bool: ...
    def hash_files(self, paths: Sequence[StrPath]) -> list[Digest]:
        """Like hash_files, consulting and updating the StatCache so unchanged files are not re-read."""
    def hash_tree(
        self, root: StrPath, excludes: Sequence[str] = (), gitignore: bool = True
    ) -> Tree:
        """Like hash_tree, through the StatCache."""
    def stats(self) -> StoreStats: ...
    def gc(self, max_size: int | str | None = None) -> GcReport:
        """Evict least recently used blobs until blob bytes <= max_size (default: the store's cap)."""
    def verify(self) -> VerifyReport:
        """Re-hash every blob; corrupt or missing ones are reported and removed."""
    def sync(self) -> None:
        """Flush pending access-time updates (also done by gc/stats and when the store is dropped)."""
