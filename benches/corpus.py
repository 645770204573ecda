"""Corpora and peer tools for the benches, fetched or generated once under benches/.corpus/.

Each corpus is built in a scratch directory and renamed into place only when complete, so an
interrupted run never leaves a half-built tree that a later run would silently reuse.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
CORPUS = BENCHES / ".corpus"
TOOLS = CORPUS / "tools"

DJANGO_VERSION = "5.1.4"

SMALL_DIRS_TOP = 10
SMALL_DIRS_SUB = 100  # 10 x 100 = 1,000 leaf directories
SMALL_FILES_PER_DIR = 100  # -> 100,000 files
SMALL_MIN_BYTES = 100
SMALL_MAX_BYTES = 2000
SMALL_SEED = 20_241_124

# ciopt's StatCache (rust/src/stat_cache.rs, RACY_WINDOW_NS) does not trust a file modified
# within this long of being hashed; a bench that hashes a just-written tree would time re-reads.
RACY_WINDOW_S = 2.0

# Fixed identity and dates so the generated repositories do not depend on the user's git config.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_AUTHOR_DATE": "2024-11-24T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-11-24T00:00:00Z",
}


def log(msg: str) -> None:
    # stderr, so that stdout stays the bench report only.
    print(f"[corpus] {msg}", file=sys.stderr, flush=True)


def _done_marker(path: Path) -> Path:
    # The marker lives beside the tree, not in it: a file inside would be hashed and would show up
    # as untracked in `git status`.
    return path.with_name(path.name + ".done")


def _fresh(path: Path) -> Path:
    """A clean scratch directory next to `path` to build into."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def _publish(tmp: Path, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    # Flush the freshly written tree now, so that background writeback does not land inside
    # the first timings.
    os.sync()
    _done_marker(path).touch()


def django_tree() -> Path:
    """The Django sdist source tree (about 6,800 files, 44 MB), downloaded once."""
    dest = CORPUS / f"django-{DJANGO_VERSION}"
    if _done_marker(dest).exists():
        return dest
    dl = CORPUS / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    sdists = sorted(dl.glob(f"[Dd]jango-{DJANGO_VERSION}.tar.gz"))
    if not sdists:
        log(f"downloading django=={DJANGO_VERSION} sdist")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"django=={DJANGO_VERSION}", "-d", str(dl)],
            check=True, stdout=subprocess.DEVNULL,
        )
        sdists = sorted(dl.glob(f"[Dd]jango-{DJANGO_VERSION}.tar.gz"))
    log(f"extracting {sdists[0].name}")
    tmp = _fresh(dest)
    tmp.mkdir(parents=True)
    with tarfile.open(sdists[0]) as tar:
        tar.extractall(tmp, filter="data")
    # The sdist has a single top directory (Django-5.1.4/); strip it.
    (top,) = list(tmp.iterdir())
    staged = _fresh(tmp)
    top.rename(staged)
    tmp.rmdir()
    _publish(staged, dest)
    return dest


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
        env={**os.environ, **_GIT_ENV},
    )


def _make_git_repo(root: Path) -> None:
    # Files written in the same second as the index are "racily clean" to git and get their
    # content re-compared on every `git status`; a pause before `git add` keeps the peer honest.
    time.sleep(1.1)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "bench corpus")
    # Refresh the index's stat data now so that racily-clean entries (files written in the same
    # second as the index) do not make the first timed `git status` runs re-hash content.
    _git(root, "update-index", "-q", "--refresh")


def django_git_tree() -> Path:
    """A copy of the Django tree committed into its own git repository."""
    dest = CORPUS / "django-git"
    if _done_marker(dest).exists():
        return dest
    src = django_tree()
    log("making git repository copy of the Django tree")
    tmp = _fresh(dest)
    shutil.copytree(src, tmp, symlinks=True)
    _make_git_repo(tmp)
    _publish(tmp, dest)
    return dest


def small_tree() -> Path:
    """100,000 files of 100-2000 bytes in 1,000 directories, deterministic, committed to git.

    The tree is its own git repository (so `git status` can run on exactly the tree we hash).
    """
    dest = CORPUS / "small100k"
    if _done_marker(dest).exists():
        return dest
    log("generating 100,000-file tree (one-time)")
    tmp = _fresh(dest)
    rng = random.Random(SMALL_SEED)
    for top in range(SMALL_DIRS_TOP):
        for sub in range(SMALL_DIRS_SUB):
            d = tmp / f"pkg{top:02d}" / f"mod{sub:03d}"
            d.mkdir(parents=True)
            for f in range(SMALL_FILES_PER_DIR):
                size = rng.randint(SMALL_MIN_BYTES, SMALL_MAX_BYTES)
                # Hex text looks like source to git (no binary heuristics) and compresses poorly,
                # like real files do after the first few bytes.
                body = rng.randbytes((size + 1) // 2).hex()[:size]
                (d / f"file{f:03d}.py").write_text(body)
    log("committing 100,000-file tree to git (one-time)")
    _make_git_repo(tmp)
    _publish(tmp, dest)
    return dest


def settle(root: Path) -> None:
    """Wait until the corpus was last written longer ago than the StatCache's racy window."""
    marker = _done_marker(root)
    age = time.time() - marker.stat().st_mtime if marker.exists() else 0.0
    wait = RACY_WINDOW_S + 0.5 - age
    if wait > 0:
        time.sleep(wait)


def list_files(root: Path, skip_dirs: tuple[str, ...] = (".git",)) -> list[Path]:
    """Every regular file below `root`, sorted, leaving out VCS metadata."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


def warm_page_cache(files: list[Path]) -> int:
    """Read every file once so that timings measure hashing, not the disk."""
    total = 0
    for p in files:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def find_b3sum(install: bool = True) -> str | None:
    """b3sum from PATH, else from benches/.corpus/tools, else `cargo install` it there."""
    on_path = shutil.which("b3sum")
    if on_path:
        return on_path
    local = TOOLS / "bin" / "b3sum"
    if local.exists():
        return str(local)
    if not install or not shutil.which("cargo"):
        return None
    log("installing b3sum with cargo (one-time, takes a minute or two)")
    proc = subprocess.run(
        ["cargo", "install", "--quiet", "b3sum", "--root", str(TOOLS)],
        stdout=subprocess.DEVNULL,
    )
    return str(local) if proc.returncode == 0 and local.exists() else None


# --- dependency-inference corpora (infer_bench.py) -------------------------------------------------

WORKSPACE_MARKER = "config/ci-optimization.yaml"


def mark_workspace(root: Path) -> None:
    """Make `root` its own ciopt workspace, invisibly to git.

    The corpora live under benches/.corpus/, inside this repository's own workspace; ciopt looks
    for config/ci-optimization.yaml in every ancestor *before* it falls back to the git root, so
    without a marker `ciopt affected` run inside a corpus repository would answer for this
    repository instead. The marker is listed in the corpus's .git/info/exclude: git and ciopt's
    walk (which honors it) never see it, so it is neither a change nor a file of the tree.
    """
    marker = root / WORKSPACE_MARKER
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("# bench workspace marker (see benches/corpus.py: mark_workspace)\n")
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if f"/{WORKSPACE_MARKER}" not in lines:
        with exclude.open("a") as f:
            f.write(f"/{WORKSPACE_MARKER}\n")


def replay_repo(name: str, source: str, head: str) -> Path:
    """A clone of a public repository's history at a pinned commit, made once.

    `source` is anything `git clone` takes (a URL, or a local git directory such as a mirror);
    the clone is left detached at `head` so that the replayed range never moves.
    """
    dest = CORPUS / f"replay-{name}"
    if _done_marker(dest).exists():
        return dest
    log(f"cloning {source} into {dest.name} (one-time)")
    tmp = _fresh(dest)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", source, str(tmp)], check=True)
    try:
        _git(tmp, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", head)
    except subprocess.CalledProcessError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{source} has no commit {head}: pass another --replay-source") from None
    _publish(tmp, dest)
    return dest


def pytest_venv(name: str, requirement: str) -> Path:
    """The python of a virtual environment under benches/.corpus/tools holding only `requirement`."""
    dest = TOOLS / name
    python = dest / "bin" / "python"
    if _done_marker(dest).exists() and python.exists():
        return python
    log(f"creating {dest.name} with {requirement} (one-time)")
    # Built in place (a venv's scripts name its own path, so it cannot be renamed into place);
    # the done marker is written last, so an interrupted build is redone from scratch.
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(dest)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True,
                   stdout=subprocess.DEVNULL)
    _done_marker(dest).touch()
    return python
