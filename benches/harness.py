"""What every bench shares: the result line, running children, the machine line and the options.

The benches are run as `.venv/bin/python benches/X.py`; Python puts the script's own directory
first on sys.path, so they `import harness` the way they already `import corpus`.

Every result line reads `name: ours X s, peer Y s, ratio Z (target ...)` with ratio = ours / peer
(lower is better) and X, Y the median of the repetitions. Targets are printed, never asserted:
timings depend on the machine, and a failing bench would only teach people to ignore benches.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
# Not resolved through sys.executable: the venv's python is a symlink to the system one.
CIOPT_CLI = REPO / ".venv" / "bin" / "ciopt"
# A hung child must end the bench, not the session.
DEFAULT_TIMEOUT_S = 900.0


# --- results -------------------------------------------------------------------------------------

@dataclass
class Result:
    """One bench's outcome: printed as one line (plus notes under it), and kept for the JSON."""

    name: str
    peer: str
    target: str
    # The JSON's `met` is ratio <= max_ratio, unless the bench judged it itself in extra["met"]
    # (targets that are not a ratio: an absolute time, a peak RSS, a count of misses).
    max_ratio: float | None = None
    ours_s: float | None = None
    peer_s: float | None = None
    ours_samples: list[float] = field(default_factory=list)
    peer_samples: list[float] = field(default_factory=list)
    # Replaces "ours X s, peer Y s, ratio Z" for results that are not timings (agreement, replay).
    summary: str | None = None
    # Figures that are not seconds (a rate, a cost) are given as text, with the ratio they were
    # judged by (rate / rate, a median of paired ratios); the line keeps its shape.
    ours_text: str | None = None
    peer_text: str | None = None
    ratio_value: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # printed under the line
    extra: dict[str, Any] = field(default_factory=dict)  # JSON only (numbers for tooling)
    skipped: str | None = None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.ratio_value is not None:
            return self.ratio_value
        if self.ours_s is None or not self.peer_s:
            return None
        return self.ours_s / self.peer_s

    def line(self) -> str:
        if self.error:
            return f"{self.name}: error ({self.error})"
        if self.skipped:
            return f"{self.name}: skipped ({self.skipped})"
        if self.summary is not None:
            return f"{self.name}: {self.summary} ({self.target})"
        ours = self.ours_text if self.ours_text is not None else f"{self.ours_s:.4g} s"
        peer = self.peer_text if self.peer_text is not None else f"{self.peer_s:.4g} s"
        ratio = f"{self.ratio:.3f}" if self.ratio is not None else "n/a"
        return f"{self.name}: ours {ours}, peer {peer}, ratio {ratio} ({self.target})"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["met"] = self.extra.get("met", (
            self.ratio <= self.max_ratio
            if self.ratio is not None and self.max_ratio is not None else None))
        return d


def emit(result: Result, results: list[Result]) -> None:
    results.append(result)
    print(result.line(), flush=True)
    for key, value in result.notes.items():
        # A list note (classified edges, misses) reads better one item a line.
        if isinstance(value, list):
            print(f"  {key}:", flush=True)
            for item in value:
                print(f"    {item}", flush=True)
        else:
            print(f"  {key}: {value}", flush=True)


def fill(result: Result, ours_t: list[float], peer_t: list[float]) -> Result:
    """Set the samples and their medians; a side with no samples (skipped) stays None."""
    result.ours_samples, result.peer_samples = ours_t, peer_t
    result.ours_s = statistics.median(ours_t) if ours_t else None
    result.peer_s = statistics.median(peer_t) if peer_t else None
    return result


def fmt_samples(xs: Iterable[float]) -> str:
    return ", ".join(f"{x:.3f}" for x in xs)


# --- running commands ----------------------------------------------------------------------------

class ChildFailed(RuntimeError):
    pass


def _shown(argv: list[str]) -> str:
    # Some command lines carry thousands of paths (b3sum batches): name the command, not them all.
    text = " ".join(argv)
    return text if len(text) <= 300 else " ".join(argv[:4]) + " ..."


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        capture: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[float, bytes]:
    """Run one command; returns (wall seconds, stdout if `capture`). Non-zero exit raises.

    stdout goes to /dev/null unless captured: neither tool gets a TTY, so neither draws progress.
    A failure carries the tail of stderr, which says why.
    """
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, check=False, cwd=cwd, env=env, timeout=timeout,
                              stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired as e:
        raise ChildFailed(f"`{_shown(argv)}` (cwd {cwd}) timed out after {timeout} s") from e
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-1500:]
        raise ChildFailed(f"`{_shown(argv)}` (cwd {cwd}) exited {proc.returncode}: {tail}")
    return elapsed, proc.stdout


def git_status(root: Path) -> bytes:
    return subprocess.run(["git", "status", "--porcelain"], cwd=root, check=True,
                          capture_output=True).stdout


def fresh_store(scratch: Path) -> Path:
    """An empty store directory under `scratch` (keep it on the corpus's filesystem)."""
    scratch.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="store-", dir=scratch))


class Ciopt:
    """This checkout's `ciopt` with a store the bench chooses and none of the user's settings."""

    timeout_s: float = DEFAULT_TIMEOUT_S

    def __init__(self, store: Path) -> None:
        self.store = store

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("CIOPT_CONFIG", "CIOPT_DISABLE", "CIOPT_CACHE_DIR")}
        env["CIOPT_CACHE_DIR"] = str(self.store)
        return env

    def argv(self, *args: str) -> list[str]:
        return [str(CIOPT_CLI), *args]

    def run(self, cwd: Path, *args: str, capture: bool = False) -> tuple[float, bytes]:
        return run(self.argv(*args), cwd=cwd, env=self.env(), capture=capture,
                   timeout=self.timeout_s)

    def json(self, cwd: Path, *args: str) -> tuple[float, dict[str, Any]]:
        t, out = self.run(cwd, *args, "-o", "json", capture=True)
        return t, json.loads(out)


# --- the machine ---------------------------------------------------------------------------------

def tool_version(argv: list[str]) -> str:
    """First line a tool prints for its version (some print it on stderr)."""
    try:
        p = subprocess.run(argv, check=False, capture_output=True, text=True)
    except OSError:
        return "not found"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else "?"


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def machine_basics() -> dict[str, Any]:
    """What every bench's machine line starts with; each adds its tools' versions."""
    return {
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def print_machine(machine: Mapping[str, Any]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)


# --- command line and the run --------------------------------------------------------------------

def add_common_args(ap: argparse.ArgumentParser, choices: Iterable[str], only_note: str = "",
                    repeat_help: str = "repetitions per side (median taken)",
                    quick_help: str = "2 repetitions instead of --repeat") -> None:
    """--repeat, --quick, --only and --json, which every bench takes."""
    ap.add_argument("--repeat", type=int, default=5, help=repeat_help)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run benches whose name contains NAME (repeatable); choices: "
                         + ", ".join(choices) + only_note)
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write all results as JSON")


def repetitions(args: argparse.Namespace) -> int:
    return 2 if args.quick else max(1, args.repeat)


def select(names: Iterable[str], only: list[str] | None) -> list[str]:
    """The names --only picks: each containing one of its words. A key "a+b" names benches that
    run together, picked by a word in either part."""
    return [k for k in names
            if not only or any(o in n for o in only for n in k.split("+"))]


Cfg = TypeVar("Cfg")


def run_benches(benches: Mapping[str, Callable[[Cfg, list[Result]], None]], names: Iterable[str],
                cfg: Cfg) -> list[Result]:
    results: list[Result] = []
    for name in names:
        try:
            benches[name](cfg, results)
        except Exception as e:  # noqa: BLE001 - one broken bench must not hide the others
            emit(Result(name, "", "", error=f"{type(e).__name__}: {e}"), results)
    return results


def finish(json_path: Path | None, machine: Mapping[str, Any], results: list[Result]) -> int:
    """Write the JSON if asked; the exit status: 1 when a bench broke, never for a missed target."""
    if json_path:
        json_path.write_text(json.dumps(
            {"machine": dict(machine), "results": [r.to_json() for r in results]}, indent=2,
            default=str) + "\n")
    return 1 if any(r.error for r in results) else 0
