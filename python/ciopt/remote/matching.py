"""Matching an action's `requires` to executor Capabilities, and choosing an executor.

Pure functions, no I/O: the scheduler calls them on every assignment, the
benches call them to compare policies, and the tests call them directly.

Requirement keys (a target's `requires` dict, see graph/build_file.py):

  gpu: N            at least N GPUs.
  gpu_memory_gb: X  at least N GPUs (N from `gpu`, at least 1) with >= X GiB each;
                    i.e. the N largest GPUs all have X.
  gpu_name: S       at least N GPUs whose name contains S, case-insensitively
                    ("a100" matches "NVIDIA A100-SXM4-80GB").
                    The GPU keys combine per GPU: N GPUs must each satisfy every
                    one of gpu_memory_gb and gpu_name.
  cuda: SPEC        the driver's CUDA version: ">=12.1", ">12", "<13", "<=12",
                    "==12.2"; a bare "12.2" or 12.2 means at least. Versions are
                    compared on the components the spec names: "==12" is any
                    12.x, ">12" is 13 or later.
  memory_gb: X      at least X GiB of RAM.
  cpus: N           at least N CPUs.
  os: S             equal after normalization (macos -> darwin, win32 -> windows).
  arch: S           equal after normalization (aarch64 -> arm64, amd64 -> x86_64).
  tags: [T, ...]    every tag is among the executor's tags (a single string is one tag).
  any other key     matched against the executor's tags as "key=value" (booleans
                    as true/false; `key: true` is also met by a bare "key" tag),
                    so `requires = {"pool": "nightly"}` runs where the executor
                    was started with `--tags pool=nightly`.

Any of gpu, gpu_memory_gb, gpu_name or cuda makes an action GPU work
(needs_gpu). A value that cannot be understood (gpu="two") is an unmet
requirement with a reason, never an exception: such an action can never run,
and the user is told why.

Choosing (choose): among the capable candidates with a free slot that have
not failed this action before, the cheapest by cost per hour; ties go to the
least loaded (busy/slots), then to the lowest id, so the choice is
deterministic. GPU keeping: with keep_gpu_for_gpu_work, an action that needs
no GPU is never put on a GPU executor while a capable, non-excluded CPU-only
executor is registered at all, even when that CPU executor is busy right now:
the action waits for the CPU box instead of occupying the scarce GPU box that
the next GPU action will need. When no capable CPU-only executor is
registered, GPU executors do take CPU work (otherwise it could never run).
Without keep_gpu_for_gpu_work, GPU executors compete on cost like any other,
and as they are usually the dearest they mostly get CPU work when the cheap
boxes are full.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ciopt.hardware import Capabilities, normalize_arch, normalize_os

__all__ = [
    "GPU_KEYS",
    "Candidate",
    "RoundRobin",
    "can_ever_run",
    "choose",
    "eligible",
    "explain_pool",
    "format_requires",
    "needs_gpu",
    "round_robin",
    "run_cost",
    "satisfies",
    "unmet",
]

GPU_KEYS = frozenset({"gpu", "gpu_memory_gb", "gpu_name", "cuda"})
_KNOWN_KEYS = GPU_KEYS | {"memory_gb", "cpus", "os", "arch", "tags"}


@dataclass
class Candidate:
    """An executor as the scheduler sees it at one moment."""

    id: str
    caps: Capabilities
    slots: int  # actions it runs at once
    busy: int  # actions it runs now
    excluded: bool = False  # it failed (died running) this very action before: try elsewhere

    @property
    def free(self) -> bool:
        return self.busy < self.slots and not self.excluded

    @property
    def load(self) -> float:
        return self.busy / self.slots if self.slots > 0 else 1.0


# ----------------------------------------------------------------------------
# Requirements


def _fmt(x: object) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _number(key: str, value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _tags(value: object) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        return list(value)
    return None


def needs_gpu(requires: Mapping[str, object]) -> bool:
    """Whether an action is GPU work: it asks for a GPU count > 0 or for any GPU property."""
    if any(k in requires for k in ("gpu_memory_gb", "gpu_name", "cuda")):
        return True
    n = _count(requires.get("gpu", 0))
    return n is None or n > 0  # an unreadable count is treated as GPU work (and is unmet anyway)


_CUDA_SPEC = re.compile(r"^\s*(>=|<=|==|=|>|<)?\s*v?(\d+(?:\.\d+)*)\s*$")


def _version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def _cuda_ok(spec: object, have: str) -> bool | None:
    """None when the spec cannot be read."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        return None
    m = _CUDA_SPEC.match(spec if isinstance(spec, str) else repr(spec))
    hv = _version(have)
    if m is None or hv is None:
        return None
    op = m.group(1) or ">="
    want = tuple(int(p) for p in m.group(2).split("."))
    # Compare on the components the spec names: "==12" is any 12.x, ">12" is 13+.
    got = (hv + (0,) * len(want))[: len(want)]
    return {
        ">=": got >= want,
        ">": got > want,
        "<=": got <= want,
        "<": got < want,
        "==": got == want,
        "=": got == want,
    }[op]


def _cuda_text(spec: object) -> str:
    s = spec.strip() if isinstance(spec, str) else _fmt(spec)
    return s if s[:1] in "<>=" else f">= {s}"


def _gpu_reasons(requires: Mapping[str, object], caps: Capabilities) -> list[str]:
    reasons: list[str] = []
    if not needs_gpu(requires):
        return reasons
    n = _count(requires.get("gpu", 0))
    if n is None:
        return [f"'gpu' must be a count >= 0, got {requires['gpu']!r}"]
    n = max(n, 1)
    plural = "GPU" if n == 1 else "GPUs"
    gpus = caps.gpus
    # `cuda` alone implies one GPU; its own reason below says so better than a count would.
    if len(gpus) < n and (gpus or requires.keys() & {"gpu", "gpu_memory_gb", "gpu_name"}):
        reasons.append(f"needs {n} {plural}, has {len(gpus) or 'none'}")
    # Per-GPU properties: which GPUs would count.
    pool = list(gpus)
    per_gpu_ok = True
    if "gpu_memory_gb" in requires:
        mem = _number("gpu_memory_gb", requires["gpu_memory_gb"])
        if mem is None:
            reasons.append(f"'gpu_memory_gb' must be a number, got {requires['gpu_memory_gb']!r}")
            per_gpu_ok = False
        else:
            big = [g for g in gpus if g.memory_gb >= mem]
            if gpus and len(big) < n:
                largest = max(g.memory_gb for g in gpus)
                reasons.append(f"needs {n} {plural} with >= {_fmt(mem)} GB each, has {len(big) or 'none'} "
                               f"(largest {_fmt(largest)} GB)")
                per_gpu_ok = False
            pool = [g for g in pool if g.memory_gb >= mem]
    if "gpu_name" in requires:
        want = requires["gpu_name"]
        if not isinstance(want, str) or not want.strip():
            reasons.append(f"'gpu_name' must be a non-empty string, got {want!r}")
            per_gpu_ok = False
        else:
            needle = want.strip().lower()
            named = [g for g in gpus if needle in g.name.lower()]
            if gpus and len(named) < n:
                names = ", ".join(sorted({g.name for g in gpus}))
                reasons.append(f"needs {n} {plural} named like {want!r}, has {len(named) or 'none'} ({names})")
                per_gpu_ok = False
            pool = [g for g in pool if needle in g.name.lower()]
    if per_gpu_ok and len(gpus) >= n and len(pool) < n and {"gpu_memory_gb", "gpu_name"} <= requires.keys():
        reasons.append(f"needs {n} {plural} that are both named like {requires['gpu_name']!r} and have "
                       f">= {_fmt(requires['gpu_memory_gb'])} GB, has {len(pool) or 'none'}")
    if "cuda" in requires:
        spec = requires["cuda"]
        have = caps.cuda
        if have is None:
            if gpus:
                reasons.append(f"needs CUDA {_cuda_text(spec)}, its driver reports no CUDA version")
            elif not reasons:
                reasons.append(f"needs CUDA {_cuda_text(spec)}, has no GPU")
        else:
            ok = _cuda_ok(spec, have)
            if ok is None:
                reasons.append(f"'cuda' must be a version like '>=12.1' or '12', got {spec!r}")
            elif not ok:
                reasons.append(f"needs CUDA {_cuda_text(spec)}, has CUDA {have}")
    return reasons


def unmet(requires: Mapping[str, object], caps: Capabilities) -> list[str]:
    """Why `caps` cannot run an action with these requirements; empty means it can."""
    reasons = _gpu_reasons(requires, caps)
    for key, want in requires.items():
        if key in GPU_KEYS:
            continue
        if key == "memory_gb":
            x = _number(key, want)
            if x is None:
                reasons.append(f"'memory_gb' must be a number, got {want!r}")
            elif caps.memory_gb < x:
                reasons.append(f"needs {_fmt(x)} GB of memory, has {_fmt(caps.memory_gb)} GB")
        elif key == "cpus":
            x = _number(key, want)
            if x is None:
                reasons.append(f"'cpus' must be a number, got {want!r}")
            elif caps.cpus < x:
                reasons.append(f"needs {_fmt(x)} CPUs, has {caps.cpus}")
        elif key == "os":
            if not isinstance(want, str):
                reasons.append(f"'os' must be a string, got {want!r}")
            elif normalize_os(want) != caps.os:
                reasons.append(f"needs os {normalize_os(want)}, has {caps.os}")
        elif key == "arch":
            if not isinstance(want, str):
                reasons.append(f"'arch' must be a string, got {want!r}")
            elif normalize_arch(want) != caps.arch:
                reasons.append(f"needs arch {normalize_arch(want)}, has {caps.arch}")
        elif key == "tags":
            tags = _tags(want)
            if tags is None:
                reasons.append(f"'tags' must be a list of strings, got {want!r}")
            else:
                missing = [t for t in tags if t not in caps.tags]
                if missing:
                    reasons.append(f"needs tag{'s' if len(missing) > 1 else ''} {', '.join(missing)}, "
                                   f"has {', '.join(caps.tags) if caps.tags else 'no tags'}")
        else:
            if want is None:
                continue
            tag = f"{key}={_fmt(want)}"
            if tag in caps.tags or (want is True and key in caps.tags):
                continue
            reasons.append(f"needs tag {tag}, has {', '.join(caps.tags) if caps.tags else 'no tags'}")
    return reasons


def satisfies(requires: Mapping[str, object], caps: Capabilities) -> bool:
    return not unmet(requires, caps)


# ----------------------------------------------------------------------------
# Choosing


def eligible(
    requires: Mapping[str, object], candidates: Sequence[Candidate], keep_gpu_for_gpu_work: bool = True
) -> list[Candidate]:
    """The candidates this action may run on, free slot or not, after the GPU-keeping policy.

    For CPU work with a capable CPU-only box registered this is only the CPU
    boxes, even when they are all busy and a GPU box is idle: the action waits
    for them. Empty means no candidate (left) can ever run it.
    """
    capable = [c for c in candidates if not c.excluded and satisfies(requires, c.caps)]
    if keep_gpu_for_gpu_work and not needs_gpu(requires):
        cpu_only = [c for c in capable if not c.caps.gpus]
        if cpu_only:
            return cpu_only
    return capable


def _rank(c: Candidate) -> tuple[float, float, str]:
    return (c.caps.cost, c.load, c.id)


def choose(
    requires: Mapping[str, object], candidates: Sequence[Candidate], keep_gpu_for_gpu_work: bool = True
) -> Candidate | None:
    """The executor to run this action on now, or None when it must wait (or can never run: see can_ever_run).

    The cheapest capable candidate with a free slot; ties to the least loaded, then the lowest id.
    See the module docstring for the GPU-keeping policy.
    """
    free = [c for c in eligible(requires, candidates, keep_gpu_for_gpu_work) if c.busy < c.slots]
    return min(free, key=_rank) if free else None


def round_robin(
    requires: Mapping[str, object], candidates: Sequence[Candidate], last: str | None = None
) -> Candidate | None:
    """A naive policy for the cost benchmark: the next capable candidate with a free slot after `last`
    in id order, wrapping around, ignoring cost and GPU keeping."""
    ring = sorted(candidates, key=lambda c: c.id)
    if not ring:
        return None
    # The first id after `last` (which may have left the pool meanwhile).
    start = 0 if last is None else next((i for i, c in enumerate(ring) if c.id > last), 0)
    for k in range(len(ring)):
        c = ring[(start + k) % len(ring)]
        if c.free and satisfies(requires, c.caps):
            return c
    return None


class RoundRobin:
    """round_robin with its rotation remembered; `choose` has the same shape as the module's choose."""

    def __init__(self) -> None:
        self.last: str | None = None

    def choose(
        self, requires: Mapping[str, object], candidates: Sequence[Candidate], keep_gpu_for_gpu_work: bool = True
    ) -> Candidate | None:
        c = round_robin(requires, candidates, self.last)
        if c is not None:
            self.last = c.id
        return c


def run_cost(seconds: float, caps: Capabilities) -> float:
    """What running `seconds` on this executor costs, in its cost unit (cost is per hour)."""
    return caps.cost * seconds / 3600.0


# ----------------------------------------------------------------------------
# Explaining


def _caps_of(x: Capabilities | Candidate) -> tuple[str | None, Capabilities]:
    return (x.id, x.caps) if isinstance(x, Candidate) else (None, x)


def can_ever_run(requires: Mapping[str, object], pool: Sequence[Capabilities | Candidate]) -> bool:
    """Whether any registered executor could run this action, busy or not. An empty pool can run nothing."""
    return any(satisfies(requires, _caps_of(x)[1]) for x in pool)


def format_requires(requires: Mapping[str, object]) -> str:
    if not requires:
        return "nothing"
    parts = []
    for k, v in requires.items():
        if isinstance(v, (list, tuple)):
            parts.append(f"{k}=[{', '.join(_fmt(t) for t in v)}]")
        elif isinstance(v, str) and v.strip()[:1] in ("<", ">", "="):
            parts.append(f"{k}{v.strip()}")  # cuda=">=12.1" reads as cuda>=12.1
        else:
            parts.append(f"{k}={_fmt(v)}")
    return ", ".join(parts)


def explain_pool(requires: Mapping[str, object], pool: Sequence[Capabilities | Candidate]) -> str:
    """One paragraph for "no executor can ever run this": what was required, what each executor
    offers and which requirement it misses. Identical executors are counted once."""
    head = f"no executor can run an action that requires {format_requires(requires)}"
    if not pool:
        return head + ": no executor is registered with the scheduler."
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for x in pool:
        ident, caps = _caps_of(x)
        reasons = tuple(unmet(requires, caps))
        summary = caps.summary()
        if ident is not None and ident != caps.hostname:
            summary = f"{ident} ({summary})"
        groups.setdefault((summary, reasons), []).append(summary)
    if all(not reasons for _, reasons in groups):
        head = f"an action that requires {format_requires(requires)} can run on the pool"
    lines = []
    for (summary, reasons), members in groups.items():
        count = f"{len(members)}x " if len(members) > 1 else ""
        why = "; ".join(reasons) if reasons else "would satisfy it"
        lines.append(f"{count}{summary} - {why}")
    n = len(pool)
    return f"{head}. The pool has {n} executor{'s' if n != 1 else ''}: " + "; ".join(
        f"[{line}]" for line in lines) + "."
