"""Build-graph benchmarks: `ciopt build` against git and ninja, side by side, on 1,000 genrules.

Run:  .venv/bin/python benches/graph_bench.py [--targets 1000] [--packages 100] [--repeat 5]
                                              [--quick] [--only NAME] [--json FILE]

The corpus (generated once, regenerated when --targets/--packages change) is two copies of the
same tree under benches/.corpus/:

  graph_ws/     a ciopt workspace (config/ci-optimization.yaml, one BUILD per package), committed
                to its own git repository so that `git status` runs on exactly the tree we build;
  graph_ninja/  the same input files and a build.ninja that runs byte-for-byte the same shell
                commands, writing the same output paths (p007/t3.out) next to the inputs.

Package p{i:03d} holds targets t0..t{k-1}; t{j} in package i > 0 reads its own in{j}.txt plus the
outputs of t{j} and t{(j+1)%k} of package i-1, and runs `cat $(SRCS) | sha1sum > $@`.

Every result line reads `name: ours X s, peer Y s, ratio Z (target ...)` with ratio = ours / peer
(lower is better) and X, Y the median of the repetitions; ours and peer alternate within a run so
that drift hits both alike. Targets are printed, never asserted (see hash_bench.py for why).
The ciopt CLI is always /work/main/.venv/bin/ciopt (this checkout's venv) run with cwd = the
workspace and CIOPT_CACHE_DIR pointing at a store the bench owns.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import corpus
import harness
from harness import (
    CIOPT_CLI,
    REPO,
    ChildFailed,
    Result,
    emit,
    fill,
    fmt_samples,
    git_status,
    run,
    tool_version,
)

WS_DIR = corpus.CORPUS / "graph_ws"
NINJA_DIR = corpus.CORPUS / "graph_ninja"
SCRATCH = corpus.CORPUS / "graph_tmp"  # stores live here: same filesystem as the workspace

CMD = "cat $(SRCS) | sha1sum > $@"
INPUT_SEED = 1000

# Fixed identity and dates so the generated repository does not depend on the user's git config.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_AUTHOR_DATE": "2024-11-24T00:00:00Z", "GIT_COMMITTER_DATE": "2024-11-24T00:00:00Z",
}


# --- running commands ----------------------------------------------------------------------------

def peak_rss_mb(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Peak RSS of one command (the largest process in its tree that was waited for)."""
    time_bin = Path("/usr/bin/time")
    if time_bin.exists():
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
            run([str(time_bin), "-f", "%M", "-o", f.name, *argv], cwd=cwd, env=env)
            return int(f.read().strip().splitlines()[-1]) / 1024
    # Fallback: wait4 gives the same figure /usr/bin/time prints.
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise ChildFailed(f"`{' '.join(argv)}` exited {proc.returncode}")
    return usage.ru_maxrss / 1024


# --- the corpus ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    targets: int
    packages: int

    @property
    def per_package(self) -> int:
        return self.targets // self.packages

    def pkg(self, i: int) -> str:
        return f"p{i:03d}"

    def deps(self, i: int, j: int) -> list[tuple[int, int]]:
        """(package, target) pairs that t{j} of package i depends on, in `srcs` order."""
        if i == 0:
            return []
        k = self.per_package
        return [(i - 1, j), (i - 1, (j + 1) % k)]

    def input_path(self, i: int, j: int) -> str:
        return f"{self.pkg(i)}/in{j}.txt"

    def output_path(self, i: int, j: int) -> str:
        return f"{self.pkg(i)}/t{j}.out"

    def srcs_paths(self, i: int, j: int) -> list[str]:
        """What $(SRCS) expands to, workspace-relative: own input first, then the dep outputs."""
        return [self.input_path(i, j)] + [self.output_path(a, b) for a, b in self.deps(i, j)]

    def all_targets(self) -> Iterator[tuple[int, int]]:
        for i in range(self.packages):
            for j in range(self.per_package):
                yield i, j

    def input_content(self, i: int, j: int) -> bytes:
        # Deterministic, a few hundred bytes, distinct per file (so no two actions share a key).
        rng = random.Random(INPUT_SEED * 1_000_003 + i * 1009 + j)
        return f"{self.input_path(i, j)}\n{rng.randbytes(96).hex()}\n".encode()

    def affected_by_input(self, i0: int, j0: int) -> int:
        """How many actions a content change of in{j0}.txt of package i0 re-runs."""
        hit = {(i0, j0)}
        for i in range(i0 + 1, self.packages):
            for j in range(self.per_package):
                if any(d in hit for d in self.deps(i, j)):
                    hit.add((i, j))
        return len(hit)


def build_file_text(shape: Shape, i: int) -> str:
    lines = ["# Generated by benches/graph_bench.py; regenerated when the bench shape changes.", ""]
    for j in range(shape.per_package):
        srcs = [f"in{j}.txt"] + [f"//{shape.pkg(a)}:t{b}" for a, b in shape.deps(i, j)]
        lines += [
            "genrule(",
            f'    name = "t{j}",',
            f"    srcs = [{', '.join(json.dumps(s) for s in srcs)}],",
            f'    outs = ["t{j}.out"],',
            f"    cmd = {json.dumps(CMD)},",
            ")",
            "",
        ]
    return "\n".join(lines)


def expand_cmd(shape: Shape, i: int, j: int) -> str:
    """The genrule's cmd with $(SRCS) and $@ expanded: the exact line ninja runs."""
    return (CMD.replace("$(SRCS)", " ".join(shape.srcs_paths(i, j)))
            .replace("$@", shape.output_path(i, j)))


def ninja_file_text(shape: Shape) -> str:
    # One rule whose command is given per edge, so each edge carries the literal shell line.
    lines = ["# Generated by benches/graph_bench.py.", "ninja_required_version = 1.5", "",
             "rule sh", "  command = $cmd", "  description = $out", ""]
    outs = []
    for i, j in shape.all_targets():
        out = shape.output_path(i, j)
        outs.append(out)
        lines.append(f"build {out}: sh {' '.join(shape.srcs_paths(i, j))}")
        lines.append(f"  cmd = {expand_cmd(shape, i, j)}")
    lines += ["", f"build all: phony {' '.join(outs)}", "default all", ""]
    return "\n".join(lines)


def write_inputs(shape: Shape, root: Path, only_changed: bool = False) -> int:
    """Write every pXXX/inJ.txt; with only_changed, rewrite only those that differ. Returns count."""
    n = 0
    for i, j in shape.all_targets():
        p = root / shape.input_path(i, j)
        want = shape.input_content(i, j)
        if only_changed and p.exists() and p.read_bytes() == want:
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(want)
        n += 1
    return n


def git(cwd: Path, *args: str, capture: bool = False) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, check=True,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          env={**os.environ, **GIT_ENV}).stdout


def write_workspace(shape: Shape, root: Path) -> None:
    """The ciopt workspace: the config that enables ciopt, the inputs and one BUILD a package."""
    (root / "config").mkdir(parents=True)
    (root / "config" / "ci-optimization.yaml").write_text("enabled: true\n")
    write_inputs(shape, root)
    for i in range(shape.packages):
        (root / shape.pkg(i) / "BUILD").write_text(build_file_text(shape, i))


def generate(shape: Shape) -> None:
    """(Re)create both trees unless the marker says they already have this shape."""
    marker = WS_DIR.with_name(WS_DIR.name + ".done")
    want = json.dumps({"targets": shape.targets, "packages": shape.packages, "cmd": CMD,
                       "seed": INPUT_SEED, "version": 1})
    if marker.exists() and marker.read_text() == want and WS_DIR.exists() and NINJA_DIR.exists():
        return
    corpus.log(f"generating {shape.targets} genrules in {shape.packages} packages")
    marker.unlink(missing_ok=True)
    for d in (WS_DIR, NINJA_DIR):
        if d.exists():
            shutil.rmtree(d)

    write_workspace(shape, WS_DIR)
    # ciopt-out/ is a build product: it must not make `git status` dirty.
    (WS_DIR / ".gitignore").write_text("/ciopt-out/\n")

    NINJA_DIR.mkdir(parents=True)
    write_inputs(shape, NINJA_DIR)
    (NINJA_DIR / "build.ninja").write_text(ninja_file_text(shape))

    # Files written in the same second as git's index are "racily clean" and get re-hashed by
    # every `git status`; a pause before `git add` and a refresh keep the peer honest.
    time.sleep(1.1)
    git(WS_DIR, "init", "-q", "-b", "main")
    git(WS_DIR, "add", "-A")
    git(WS_DIR, "commit", "-q", "-m", "graph bench corpus")
    git(WS_DIR, "update-index", "-q", "--refresh")
    os.sync()
    marker.write_text(want)


def restore_inputs(shape: Shape) -> None:
    """Undo edits a previous (possibly interrupted) incremental bench left in either tree."""
    changed = write_inputs(shape, WS_DIR, only_changed=True)
    changed += write_inputs(shape, NINJA_DIR, only_changed=True)
    if changed:
        corpus.log(f"restored {changed} edited input file(s)")
    git(WS_DIR, "update-index", "-q", "--refresh")


def settle() -> None:
    # ciopt's StatCache does not trust a file modified within its racy window (and git has the
    # same rule): without this pause a no-op build would time re-hashing the files just written.
    time.sleep(corpus.RACY_WINDOW_S + 0.5)


# --- the two tools -------------------------------------------------------------------------------

class Ciopt(harness.Ciopt):
    """`ciopt build //...` on the workspace with a store the bench chooses."""

    def build(self, *extra: str) -> float:
        return self.run(WS_DIR, "build", "//...", *extra)[0]

    def build_json(self, *extra: str) -> dict[str, Any]:
        return self.json(WS_DIR, "build", "//...", *extra)[1]


def fresh_store() -> Path:
    return harness.fresh_store(SCRATCH)


def clean_ciopt_outputs() -> None:
    shutil.rmtree(WS_DIR / "ciopt-out", ignore_errors=True)


def clean_ninja() -> None:
    # `ninja -t clean` removes every output; the log and deps go too, so ninja starts as on a
    # fresh checkout (no restat shortcuts from a previous run).
    run(["ninja", "-t", "clean"], cwd=NINJA_DIR)
    for name in (".ninja_log", ".ninja_deps"):
        (NINJA_DIR / name).unlink(missing_ok=True)


def ninja_build(jobs: int = 2) -> float:
    return run(["ninja", f"-j{jobs}"], cwd=NINJA_DIR)[0]


def ninja_nothing_to_do() -> bool:
    _, out = run(["ninja", "-n", "-j2"], cwd=NINJA_DIR, capture=True)
    return b"no work to do" in out


def ciopt_build_available() -> tuple[bool, str]:
    if not CIOPT_CLI.exists():
        return False, f"{CIOPT_CLI} not installed"
    proc = subprocess.run([str(CIOPT_CLI), "build", "--help"], capture_output=True, cwd=REPO)
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        return False, "`ciopt build --help` fails: " + (last[-1].strip() if last else "no message")
    return True, ""


def status_counts(report: dict[str, Any]) -> Counter[str]:
    return Counter(a.get("status", "?") for a in report.get("actions", []))


def compare_outputs(shape: Shape) -> tuple[int, list[str]]:
    """ciopt-out/pXXX/tJ.out against ninja's pXXX/tJ.out: (files compared, mismatches)."""
    bad: list[str] = []
    for i, j in shape.all_targets():
        rel = shape.output_path(i, j)
        ours = WS_DIR / "ciopt-out" / rel
        peer = NINJA_DIR / rel
        if not ours.is_file():
            bad.append(f"{rel} missing in ciopt-out")
        elif ours.read_bytes() != peer.read_bytes():
            bad.append(f"{rel} differs: ciopt {ours.read_bytes()[:48]!r} "
                       f"ninja {peer.read_bytes()[:48]!r}")
    return shape.targets, bad


def reference_outputs_ok(shape: Shape) -> list[str]:
    """Check ninja's outputs against sha1 computed here, so the reference itself is trusted."""
    import hashlib

    bad = []
    for i, j in shape.all_targets():
        data = b"".join((NINJA_DIR / p).read_bytes() for p in shape.srcs_paths(i, j))
        want = f"{hashlib.sha1(data).hexdigest()}  -\n".encode()
        if (NINJA_DIR / shape.output_path(i, j)).read_bytes() != want:
            bad.append(shape.output_path(i, j))
    return bad


def extra_workspace_files() -> list[str]:
    """Paths ciopt left in the workspace besides ciopt-out/ (untracked or ignored)."""
    out = git(WS_DIR, "status", "--porcelain", "--ignored", "--untracked-files=all", capture=True)
    return [line[3:] for line in out.decode().splitlines()
            if not line[3:].startswith("ciopt-out/")]


# --- benches -------------------------------------------------------------------------------------

@dataclass
class Config:
    shape: Shape
    repeat: int
    ciopt_ok: bool
    ciopt_why: str
    noop_store: Path | None = None  # a store holding the full build, shared by later benches


def bench_correctness(cfg: Config, results: list[Result]) -> None:
    """A full build from an empty store: every action executed, outputs equal to ninja's."""
    shape = cfg.shape
    clean_ninja()
    ninja_build()
    ref_bad = reference_outputs_ok(shape)
    print("ninja outputs match sha1 computed in Python: "
          + ("yes" if not ref_bad else f"NO, {len(ref_bad)} differ (first {ref_bad[0]})"),
          flush=True)
    if not cfg.ciopt_ok:
        print(f"outputs identical: skipped ({cfg.ciopt_why})", flush=True)
        return
    cfg.noop_store = fresh_store()
    clean_ciopt_outputs()
    report = Ciopt(cfg.noop_store).build_json("-j2")
    counts = status_counts(report)
    n, bad = compare_outputs(shape)
    print(f"outputs identical: {'yes' if not bad else 'no'} ({n} files)", flush=True)
    for b in bad[:5]:
        print(f"  {b}", flush=True)
    if len(bad) > 5:
        print(f"  ... {len(bad) - 5} more", flush=True)
    print(f"  first build, action statuses: {dict(counts)} (expected {shape.targets} executed)",
          flush=True)
    if counts.get("executed", 0) != shape.targets:
        print("  <-- MISMATCH", flush=True)
    leftovers = extra_workspace_files()
    if leftovers:
        print(f"  ciopt left in the workspace besides ciopt-out/: {leftovers[:10]}", flush=True)
    r = Result("outputs_identical", "ninja", "must be yes")
    r.extra.update(identical=not bad, files=n, mismatches=bad[:50], statuses=dict(counts),
                   ninja_reference_ok=not ref_bad)
    results.append(r)  # JSON only: the line above is the printed form


def bench_noop_build_vs_git_status(cfg: Config, results: list[Result]) -> None:
    name, target = "noop_build_vs_git_status", "target <= 2.0, stretch 1.0"
    if not cfg.ciopt_ok or cfg.noop_store is None:
        t = [run(["git", "status", "--porcelain"], cwd=WS_DIR)[0] for _ in range(cfg.repeat)]
        r = Result(name, "git status --porcelain", target, skipped=cfg.ciopt_why)
        r.notes["peer alone"] = f"git status --porcelain {statistics.median(t):.4g} s"
        emit(r, results)
        return
    ciopt = Ciopt(cfg.noop_store)
    settle()
    # Warm-up for both: page cache, ciopt's loading/analysis cache, git's index refresh.
    ciopt.build()
    git_status(WS_DIR)
    ours_t: list[float] = []
    peer_t: list[float] = []
    for _ in range(cfg.repeat):
        ours_t.append(ciopt.build())
        peer_t.append(run(["git", "status", "--porcelain"], cwd=WS_DIR)[0])
    r = fill(Result(name, "git status --porcelain", target, max_ratio=2.0), ours_t, peer_t)
    report = ciopt.build_json()
    counts = status_counts(report)
    summary = report.get("summary") or {}
    # The floor any ciopt command pays (interpreter start, imports of the CLI), for scale.
    floor = statistics.median(run([str(CIOPT_CLI), "--version"], cwd=WS_DIR)[0]
                              for _ in range(cfg.repeat))
    r.notes["command"] = f"cd {WS_DIR} && CIOPT_CACHE_DIR=STORE {CIOPT_CLI} build //..."
    r.notes["samples ours / peer"] = f"[{fmt_samples(ours_t)}] / [{fmt_samples(peer_t)}]"
    r.notes["ciopt's own summary"] = (f"duration_s {summary.get('duration_s')}, "
                                      f"loading_s {summary.get('loading_s')}")
    r.notes["process floor, `ciopt --version`"] = f"{floor:.3f} s"
    r.notes["no-op action statuses"] = f"{dict(counts)}" + (
        "" if counts.get("cached_local", 0) == cfg.shape.targets
        else f"  <-- expected {cfg.shape.targets} cached_local")
    dirty = git_status(WS_DIR)
    if dirty:
        r.notes["git status not clean"] = dirty[:200]
    r.extra.update(statuses=dict(counts), summary=summary, version_floor_s=floor)
    emit(r, results)


def bench_cold_build_vs_ninja_j2(cfg: Config, results: list[Result]) -> None:
    name, target = "cold_build_vs_ninja_j2", "target <= 1.3"
    ours_t: list[float] = []
    peer_t: list[float] = []
    stores: list[Path] = []
    for _ in range(cfg.repeat):
        # Clean state for both, outside the timing: an empty store and no ciopt-out/ for ciopt;
        # no outputs, no .ninja_log/.ninja_deps for ninja.
        if cfg.ciopt_ok:
            store = fresh_store()
            stores.append(store)
            clean_ciopt_outputs()
            ours_t.append(Ciopt(store).build("-j2"))
        clean_ninja()
        peer_t.append(ninja_build(2))
    for s in stores:
        shutil.rmtree(s, ignore_errors=True)
    if not cfg.ciopt_ok:
        r = Result(name, "ninja -j2", target, skipped=cfg.ciopt_why)
        r.notes["peer alone"] = f"ninja -j2 {statistics.median(peer_t):.4g} s"
        emit(r, results)
        return
    r = fill(Result(name, "ninja -j2", target, max_ratio=1.3), ours_t, peer_t)
    r.notes["command"] = (f"cd {WS_DIR} && rm -rf ciopt-out && CIOPT_CACHE_DIR=EMPTY "
                          f"{CIOPT_CLI} build //... -j2")
    r.notes["samples ours / peer"] = f"[{fmt_samples(ours_t)}] / [{fmt_samples(peer_t)}]"
    r.notes["per action"] = (f"ours {r.ours_s / cfg.shape.targets * 1e3:.2f} ms, "
                             f"ninja {r.peer_s / cfg.shape.targets * 1e3:.2f} ms (wall / actions)")
    emit(r, results)


_edit_counter = 0


def edit_input(shape: Shape, i: int, j: int) -> bytes:
    """Give the same input file new, never-seen content in both trees.

    Never-seen matters: toggling between two contents would let ciopt's action cache answer
    from an earlier repetition, which ninja cannot do.
    """
    global _edit_counter
    _edit_counter += 1
    content = shape.input_content(i, j) + f"edit {_edit_counter} {time.time_ns()}\n".encode()
    for root in (WS_DIR, NINJA_DIR):
        (root / shape.input_path(i, j)).write_bytes(content)
    return content


def bench_incremental_leaf_vs_ninja(cfg: Config, results: list[Result]) -> None:
    shape = cfg.shape
    target = "target <= 1.5"
    variants = [
        # The root of every chain: its dependents fan out down all later packages.
        ("incremental_leaf_vs_ninja_chain_root", 0, 0),
        # A true leaf: last package, nothing depends on it, one action re-runs.
        ("incremental_leaf_vs_ninja_true_leaf", shape.packages - 1, 0),
    ]
    ciopt = Ciopt(cfg.noop_store) if cfg.ciopt_ok and cfg.noop_store else None
    try:
        for name, i, j in variants:
            expected = shape.affected_by_input(i, j)
            # Start from a fully built state on both sides (not timed).
            if ciopt:
                ciopt.build("-j2")
            ninja_build(2)
            ours_t: list[float] = []
            peer_t: list[float] = []
            for _ in range(cfg.repeat):
                edit_input(shape, i, j)
                if ciopt:
                    ours_t.append(ciopt.build("-j2"))
                peer_t.append(ninja_build(2))
            edited = f"{shape.input_path(i, j)} (content changed; {expected} action(s) re-run)"
            if not ciopt:
                r = Result(name, "ninja -j2 incremental", target, skipped=cfg.ciopt_why)
                r.notes["peer alone"] = f"ninja -j2 {statistics.median(peer_t):.4g} s"
                r.notes["edit"] = edited
                emit(r, results)
                continue
            r = fill(Result(name, "ninja -j2 incremental", target, max_ratio=1.5),
                     ours_t, peer_t)
            r.notes["edit"] = edited
            r.notes["samples ours / peer"] = f"[{fmt_samples(ours_t)}] / [{fmt_samples(peer_t)}]"
            # One more edit, built with JSON, to see what ciopt re-ran and that it is right.
            edit_input(shape, i, j)
            counts = status_counts(ciopt.build_json("-j2"))
            ninja_build(2)
            executed = counts.get("executed", 0)
            r.notes["check run statuses"] = f"{dict(counts)}" + (
                "" if executed == expected else f"  <-- expected {expected} executed")
            _, bad = compare_outputs(shape)
            r.notes["outputs identical to ninja after the edit"] = (
                "yes" if not bad else f"NO, {len(bad)} differ (first {bad[0]})")
            r.extra.update(expected_executed=expected, statuses=dict(counts),
                           outputs_identical=not bad)
            emit(r, results)
    finally:
        # Leave both trees as committed, so that `git status` is clean for the next run.
        restore_inputs(shape)


def bench_loading_analysis(cfg: Config, results: list[Result]) -> None:
    name = "loading_analysis"
    target = "target: info (peer = ninja no-op: parse build.ninja + stat every file)"
    shape = cfg.shape
    if not cfg.ciopt_ok:
        emit(Result(name, "ninja no-op", target, skipped=cfg.ciopt_why), results)
        return
    help_text = run([str(CIOPT_CLI), "build", "--help"], cwd=WS_DIR, capture=True)[1].decode()
    if "--nobuild" in help_text:
        args, how = ["build", "//...", "--nobuild"], "ciopt build //... --nobuild"
    else:
        args, how = ["query", "deps(//...)"], "ciopt query 'deps(//...)'"
    # The query output proves analysis saw every target (labels, one a line).
    restore_inputs(shape)
    ninja_build(2)  # peer starts from a built tree: its no-op is all loading and stat
    warm = Ciopt(cfg.noop_store or fresh_store())
    _, out = run(warm.argv(*args), cwd=WS_DIR, env=warm.env(), capture=True)
    labels = [ln for ln in out.decode().splitlines() if ln.startswith("//")]

    cold_t: list[float] = []
    warm_t: list[float] = []
    peer_t: list[float] = []
    for _ in range(cfg.repeat):
        # Cold: an empty store, so nothing of a previous load can be reused (if ciopt caches
        # loading in the store). Warm: the store that has loaded this workspace before.
        cold = Ciopt(fresh_store())
        cold_t.append(run(cold.argv(*args), cwd=WS_DIR, env=cold.env())[0])
        shutil.rmtree(cold.store, ignore_errors=True)
        warm_t.append(run(warm.argv(*args), cwd=WS_DIR, env=warm.env())[0])
        peer_t.append(ninja_build(2))
    r = fill(Result(name, "ninja -j2 no-op", target), warm_t, peer_t)
    r.notes["command"] = f"cd {WS_DIR} && CIOPT_CACHE_DIR=STORE {CIOPT_CLI} {' '.join(args)}"
    r.notes["measured with"] = how
    r.notes["labels printed"] = f"{len(labels)}" + (
        "" if len(labels) >= shape.targets else f"  <-- expected >= {shape.targets}")
    r.notes["warm store (loading cache usable)"] = f"{statistics.median(warm_t):.4g} s"
    r.notes["empty store (nothing cached)"] = f"{statistics.median(cold_t):.4g} s"

    # Peak RSS, each measured in a run of its own (the wrapper is not in any timing above).
    rss: dict[str, float] = {}
    rss["query"] = peak_rss_mb(warm.argv(*args), cwd=WS_DIR, env=warm.env())
    if cfg.noop_store:
        settle()
        rss["noop"] = peak_rss_mb(warm.argv("build", "//..."), cwd=WS_DIR, env=warm.env())
    cold_store = fresh_store()
    clean_ciopt_outputs()
    cold = Ciopt(cold_store)
    rss["cold"] = peak_rss_mb(cold.argv("build", "//...", "-j2"), cwd=WS_DIR, env=cold.env())
    shutil.rmtree(cold_store, ignore_errors=True)
    rss["ninja_noop"] = peak_rss_mb(["ninja", "-j2"], cwd=NINJA_DIR)
    clean_ninja()
    rss["ninja_cold"] = peak_rss_mb(["ninja", "-j2"], cwd=NINJA_DIR)
    if "noop" in rss:
        r.notes["peak RSS no-op build"] = (f"ours {rss['noop']:.0f} MB, "
                                           f"ninja {rss['ninja_noop']:.1f} MB")
    r.notes["peak RSS cold build -j2"] = (f"ours {rss['cold']:.0f} MB, "
                                          f"ninja {rss['ninja_cold']:.1f} MB")
    r.notes["peak RSS loading+analysis"] = f"ours {rss['query']:.0f} MB"
    r.extra.update(cold_store_s=statistics.median(cold_t), cold_samples=cold_t,
                   peak_rss_mb=rss, labels=len(labels))
    emit(r, results)


BENCHES: dict[str, Callable[[Config, list[Result]], None]] = {
    "outputs_identical": bench_correctness,
    "noop_build_vs_git_status": bench_noop_build_vs_git_status,
    "cold_build_vs_ninja_j2": bench_cold_build_vs_ninja_j2,
    "incremental_leaf_vs_ninja": bench_incremental_leaf_vs_ninja,
    "loading_analysis": bench_loading_analysis,
}


# --- main ----------------------------------------------------------------------------------------

def machine_context(cfg: Config) -> dict[str, Any]:
    return {
        **harness.machine_basics(),
        "ciopt": tool_version([str(CIOPT_CLI), "--version"]) if CIOPT_CLI.exists()
        else "not installed",
        "ciopt_build": "yes" if cfg.ciopt_ok else f"no ({cfg.ciopt_why})",
        "ninja": tool_version(["ninja", "--version"]),
        "git": tool_version(["git", "--version"]),
        "targets": cfg.shape.targets,
        "packages": cfg.shape.packages,
        "repeat": cfg.repeat,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--targets", type=int, default=1000, help="genrule targets in all")
    ap.add_argument("--packages", type=int, default=100, help="packages (targets divide evenly)")
    harness.add_common_args(ap, BENCHES, " (outputs_identical always runs: it sets up)")
    args = ap.parse_args(argv)

    if args.packages < 1 or args.targets % args.packages or args.targets < 2 * args.packages:
        ap.error("--targets must be a multiple of --packages, at least 2 per package")
    if shutil.which("ninja") is None:
        ap.error("ninja not on PATH: apt-get install -y ninja-build")
    selected = [n for n in BENCHES
                if n == "outputs_identical" or n in harness.select(BENCHES, args.only)]

    ok, why = ciopt_build_available()
    cfg = Config(shape=Shape(args.targets, args.packages),
                 repeat=harness.repetitions(args), ciopt_ok=ok, ciopt_why=why)
    generate(cfg.shape)
    restore_inputs(cfg.shape)
    machine = machine_context(cfg)
    harness.print_machine(machine)
    print(f"corpus: {WS_DIR} (ciopt, git) and {NINJA_DIR} (ninja); "
          f"cmd per target: {CMD!r}", flush=True)

    try:
        results = harness.run_benches(BENCHES, selected, cfg)
    finally:
        restore_inputs(cfg.shape)
        shutil.rmtree(SCRATCH, ignore_errors=True)
    return harness.finish(args.json, machine, results)


if __name__ == "__main__":
    sys.exit(main())
