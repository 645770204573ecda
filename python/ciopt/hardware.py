"""What this machine can run: CPUs, memory, OS/arch, GPUs, and what an hour of it costs.

An executor sends its `Capabilities` to the scheduler in `hello`; the scheduler
matches each action's `requires` against them (`ciopt.remote.matching`) and
prefers the cheapest capable executor, so `cost` and `cost_class` live here too.

GPU detection never raises: a machine without a driver, without a GPU, or with
a wedged driver is simply a machine with no GPUs (`source == "none"`), and the
reasons are kept in `GpuDetection.notes` for `ciopt hardware --verbose`. The
order is NVML first (nvidia-ml-py, `import pynvml`: no subprocess, exact
values), then `nvidia-smi --query-gpu` (present wherever a driver is, even
when the Python binding is not installed).

Units: every `*_gb` figure is GiB (2**30 bytes), for memory and GPU memory
alike, so an "80GB" A100 (81920 MiB) is `memory_gb == 80.0`.

Test and diagnostic hooks (environment):
  CIOPT_GPU_DETECTION  auto (default) | nvml | nvidia-smi | none. `none` reports
                       no GPU at all, e.g. for a CPU-only executor on a GPU host.
  CIOPT_NVML_MODULE    the module imported in place of `pynvml`: a module name,
                       or a path to a .py file. The very same NVML calls run
                       against it, so the fake exercises the real code path.
  CIOPT_FAKE_NVML      a JSON file describing GPUs for the test fake
                       (tests/fakes/fake_pynvml.py); set alone, it implies
                       CIOPT_NVML_MODULE=fake_pynvml (which must be importable).
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "DEFAULT_COSTS",
    "Capabilities",
    "Gpu",
    "GpuDetection",
    "detect_capabilities",
    "detect_gpus",
    "normalize_arch",
    "normalize_os",
    "probe_gpus",
    "resolve_cost_class",
]

# Cost per hour when neither `--cost` nor `hardware.costs` says otherwise. Only
# the ratio matters to routing: a GPU box is an order of magnitude dearer.
DEFAULT_COSTS: Mapping[str, float] = {"cpu": 1.0, "gpu": 10.0}

_GIB = float(1 << 30)
# nvidia-smi can hang for a long time on a wedged driver; detection must not.
_SMI_TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Gpu:
    index: int  # the driver's index (CUDA_VISIBLE_DEVICES order is the executor's business)
    name: str  # as the driver reports it, e.g. "NVIDIA A100-SXM4-80GB"
    memory_gb: float  # total memory, GiB
    driver: str | None  # driver version, e.g. "550.54.15"
    cuda: str | None  # highest CUDA version the driver supports, e.g. "12.4"
    uuid: str | None  # stable across reboots, unlike the index

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "memory_gb": self.memory_gb,
            "driver": self.driver,
            "cuda": self.cuda,
            "uuid": self.uuid,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Gpu:
        if not isinstance(d, Mapping):
            raise ValueError(f"a GPU must be a mapping, got {type(d).__name__}")  # noqa: TRY004 - one error type for bad wire input
        return cls(
            index=_int(d, "index"),
            name=_str(d, "name"),
            memory_gb=_num(d, "memory_gb"),
            driver=_opt_str(d, "driver"),
            cuda=_opt_str(d, "cuda"),
            uuid=_opt_str(d, "uuid"),
        )


@dataclass(frozen=True)
class Capabilities:
    cpus: int  # CPUs this process may use (affinity), not the host's socket count
    cpu_model: str
    memory_gb: float  # GiB; the cgroup limit when it is lower than the host's RAM
    os: str  # "linux" | "darwin" | "windows" (normalize_os)
    arch: str  # normalized: "x86_64" | "arm64" (normalize_arch); others passed through lowercased
    gpus: tuple[Gpu, ...]
    tags: tuple[str, ...]  # free-form labels the operator gave (`--tags`); matched by `requires["tags"]`
    cost: float  # per hour; the scheduler prefers the cheapest capable executor
    cost_class: str  # "cpu" / "gpu", or a class name from `hardware.costs`
    hostname: str

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def cuda(self) -> str | None:
        """The highest CUDA version any GPU's driver supports (what `requires["cuda"]` is checked against)."""
        versions = [g.cuda for g in self.gpus if g.cuda]
        return max(versions, key=_version_key) if versions else None

    def summary(self) -> str:
        """One line for logs and error messages: `host: 8 CPUs, 31 GB, linux/x86_64, 2x A100 (80 GB), cost 10/h`."""
        parts = [f"{self.cpus} CPUs", f"{_fmt_num(self.memory_gb)} GB", f"{self.os}/{self.arch}"]
        if self.gpus:
            groups: dict[tuple[str, float], int] = {}
            for g in self.gpus:
                groups[(g.name, g.memory_gb)] = groups.get((g.name, g.memory_gb), 0) + 1
            gpu_text = ", ".join(f"{n}x {name} ({_fmt_num(mem)} GB)" for (name, mem), n in groups.items())
            if self.cuda:
                gpu_text += f", CUDA {self.cuda}"
            parts.append(gpu_text)
        else:
            parts.append("no GPU")
        if self.tags:
            parts.append("tags " + ",".join(self.tags))
        parts.append(f"cost {_fmt_num(self.cost)}/h ({self.cost_class})")
        return f"{self.hostname}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (str, int, float, None, list, dict): msgpack and JSON both carry it."""
        return {
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "memory_gb": self.memory_gb,
            "os": self.os,
            "arch": self.arch,
            "gpus": [g.to_dict() for g in self.gpus],
            "tags": list(self.tags),
            "cost": self.cost,
            "cost_class": self.cost_class,
            "hostname": self.hostname,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Capabilities:
        """The inverse of to_dict. It reads what an executor sent, so anything malformed is a ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"capabilities must be a mapping, got {type(d).__name__}")  # noqa: TRY004
        gpus = d.get("gpus", [])
        tags = d.get("tags", [])
        if not isinstance(gpus, (list, tuple)):
            raise ValueError(f"capabilities.gpus must be a list, got {type(gpus).__name__}")  # noqa: TRY004
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise ValueError("capabilities.tags must be a list of strings")
        cpus = _int(d, "cpus")
        cost = _num(d, "cost")
        if cpus < 0 or cost < 0:
            raise ValueError("capabilities.cpus and capabilities.cost must be >= 0")
        return cls(
            cpus=cpus,
            cpu_model=_str(d, "cpu_model"),
            memory_gb=_num(d, "memory_gb"),
            os=normalize_os(_str(d, "os")),
            arch=normalize_arch(_str(d, "arch")),
            gpus=tuple(Gpu.from_dict(g) for g in gpus),
            tags=tuple(tags),
            cost=cost,
            cost_class=_str(d, "cost_class"),
            hostname=_str(d, "hostname"),
        )


@dataclass(frozen=True)
class GpuDetection:
    gpus: tuple[Gpu, ...]
    source: str  # "nvml" | "nvidia-smi" | "none"
    notes: tuple[str, ...] = field(default=())  # why a method failed or found nothing (`--verbose`)


def _missing(key: str) -> ValueError:
    return ValueError(f"capabilities: missing or invalid {key!r}")


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _missing(key)
    return v


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise _missing(key)
    return v


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _missing(key)
    return v


def _num(d: Mapping[str, Any], key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _missing(key)
    return float(v)


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v))


# ----------------------------------------------------------------------------
# Normalization


_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "x86-64": "x86_64",
    "em64t": "x86_64",
    "aarch64": "arm64",
    "arm64e": "arm64",
    "armv8": "arm64",
    "armv8l": "arm64",
}

_OS_ALIASES = {
    "macos": "darwin",
    "osx": "darwin",
    "mac": "darwin",
    "win32": "windows",
    "win": "windows",
    "cygwin": "windows",
}


def normalize_arch(arch: str) -> str:
    """`platform.machine()` spellings differ by OS (AMD64 on Windows, aarch64 on Linux): one name each."""
    a = arch.strip().lower()
    return _ARCH_ALIASES.get(a, a)


def normalize_os(name: str) -> str:
    n = name.strip().lower()
    return _OS_ALIASES.get(n, n)


# ----------------------------------------------------------------------------
# GPUs


def detect_gpus() -> tuple[list[Gpu], str]:
    """(GPUs, source) with source "nvml", "nvidia-smi" or "none". Never raises; see probe_gpus for the notes."""
    d = probe_gpus()
    return list(d.gpus), d.source


def probe_gpus() -> GpuDetection:
    """NVML first, then nvidia-smi; every failure becomes a note, never an exception."""
    mode = os.environ.get("CIOPT_GPU_DETECTION", "auto").strip().lower() or "auto"
    notes: list[str] = []
    if mode not in ("auto", "nvml", "nvidia-smi", "none"):
        notes.append(f"CIOPT_GPU_DETECTION={mode!r} is not one of auto, nvml, nvidia-smi, none; using auto")
        mode = "auto"
    if mode == "none":
        return GpuDetection((), "none", ("GPU detection disabled by CIOPT_GPU_DETECTION=none",))
    if mode in ("auto", "nvml"):
        try:
            gpus, nvml_notes = _nvml_gpus()
            notes.extend(nvml_notes)
            if gpus:
                return GpuDetection(tuple(gpus), "nvml", tuple(notes))
            # NVML answered and saw no device: nvidia-smi asks the same driver.
            return GpuDetection((), "none", tuple(notes + ["NVML: the driver reports no GPU"]))
        except Exception as e:  # noqa: BLE001 - any failure means "try the next method"
            notes.append(f"NVML: {_describe(e)}")
    if mode in ("auto", "nvidia-smi"):
        try:
            gpus, smi_notes = _smi_gpus()
            notes.extend(smi_notes)
            if gpus:
                return GpuDetection(tuple(gpus), "nvidia-smi", tuple(notes))
            notes.append("nvidia-smi: reports no GPU")
        except Exception as e:  # noqa: BLE001
            notes.append(f"nvidia-smi: {_describe(e)}")
    return GpuDetection((), "none", tuple(notes))


class _Unavailable(Exception):
    """A detection method that cannot run here; its message is the whole note."""


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, _Unavailable):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _load_nvml() -> ModuleType:
    spec = os.environ.get("CIOPT_NVML_MODULE", "").strip()
    if not spec and os.environ.get("CIOPT_FAKE_NVML"):
        spec = "fake_pynvml"
    if not spec:
        try:
            return importlib.import_module("pynvml")
        except ImportError as e:
            raise _Unavailable(f"the nvidia-ml-py package (pynvml) is not installed ({e})") from e
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec)
        module_spec = importlib.util.spec_from_file_location(f"_ciopt_nvml_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load NVML module from {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def _text(v: object) -> str:
    # pynvml returned bytes before 11.5 and str since; accept both.
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _cuda_from_int(v: int) -> str | None:
    # NVML encodes CUDA 12.4 as 12040.
    if not isinstance(v, int) or v <= 0:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"


def _nvml_gpus() -> tuple[list[Gpu], list[str]]:
    nv = _load_nvml()
    notes: list[str] = []
    nv.nvmlInit()
    try:
        driver: str | None = None
        cuda: str | None = None
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except Exception as e:  # noqa: BLE001 - a missing field is not a missing GPU
            notes.append(f"NVML: driver version unavailable ({_describe(e)})")
        try:
            cuda = _cuda_from_int(nv.nvmlSystemGetCudaDriverVersion())
        except Exception as e:  # noqa: BLE001
            notes.append(f"NVML: CUDA version unavailable ({_describe(e)})")
        gpus: list[Gpu] = []
        for i in range(int(nv.nvmlDeviceGetCount())):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                name = _text(nv.nvmlDeviceGetName(handle))
                memory = nv.nvmlDeviceGetMemoryInfo(handle).total
            except Exception as e:  # noqa: BLE001 - one lost GPU should not hide the others
                notes.append(f"NVML: GPU {i} skipped ({_describe(e)})")
                continue
            try:
                uuid: str | None = _text(nv.nvmlDeviceGetUUID(handle))
            except Exception:  # noqa: BLE001
                uuid = None
            gpus.append(Gpu(i, name, round(memory / _GIB, 2), driver, cuda, uuid))
        return gpus, notes
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 - the answer is already read; a failing shutdown changes nothing
            pass


_SMI_QUERY = "--query-gpu=index,name,memory.total,driver_version,uuid"


def _smi_value(v: str) -> str | None:
    v = v.strip()
    return None if not v or v.startswith("[") or v.upper() == "N/A" else v


def _smi_gpus() -> tuple[list[Gpu], list[str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise _Unavailable("not on PATH")
    notes: list[str] = []
    proc = subprocess.run(
        [exe, _SMI_QUERY, "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=False,
    )
    if proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise RuntimeError(f"exit {proc.returncode}" + (f": {first[0]}" if first else ""))
    cuda = _smi_cuda(exe, notes)
    gpus: list[Gpu] = []
    for row in csv.reader(io.StringIO(proc.stdout), skipinitialspace=True):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 5:
            notes.append(f"nvidia-smi: unexpected line {','.join(row)!r}")
            continue
        # A name with a comma would split (nvidia-smi separates with ", "); the last three fields are fixed.
        index_s, name, mem_s, driver_s, uuid_s = row[0], ", ".join(row[1:-3]), row[-3], row[-2], row[-1]
        try:
            index = int(index_s.strip())
            mem_mib = float(_smi_value(mem_s) or "0")
        except ValueError:
            notes.append(f"nvidia-smi: unexpected line {','.join(row)!r}")
            continue
        gpus.append(Gpu(index, name.strip(), round(mem_mib / 1024.0, 2), _smi_value(driver_s), cuda, _smi_value(uuid_s)))
    return gpus, notes


def _smi_cuda(exe: str, notes: list[str]) -> str | None:
    # No --query-gpu field carries the CUDA version on older drivers; the banner always does.
    try:
        proc = subprocess.run([exe], capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        notes.append(f"nvidia-smi: CUDA version unavailable ({_describe(e)})")
        return None
    m = re.search(r"CUDA Version:\s*([0-9]+(?:\.[0-9]+)*)", proc.stdout)
    if m is None:
        notes.append("nvidia-smi: no 'CUDA Version' in its banner")
        return None
    return m.group(1)


# ----------------------------------------------------------------------------
# CPU, memory, OS


def _cpu_count() -> int:
    # Affinity first: under `taskset` or a CPU-limited container, that is what we may use.
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86: "model name"; some ARM kernels: "Processor" / "Hardware" / "cpu model".
                if key.strip().lower() in ("model name", "cpu model", "processor") and value.strip() \
                        and not value.strip().isdigit():
                    return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5, check=False).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_bytes() -> int:
    total = 0
    try:
        import psutil  # optional: more portable than /proc

        total = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - absent or broken psutil: read /proc ourselves
        try:
            with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        total = int(line.split()[1]) * 1024  # kB
                        break
        except (OSError, ValueError, IndexError):
            pass
        if not total and sys.platform == "darwin":
            try:
                total = int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                           timeout=5, check=False).stdout.strip() or 0)
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
    limit = _cgroup_memory_limit()
    if limit and (not total or limit < total):
        return limit
    return total


def _cgroup_memory_limit() -> int | None:
    # A container with a memory limit must not advertise the host's RAM.
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            value = int(text)
            if 0 < value < (1 << 60):  # cgroup v1 "unlimited" is a huge page-aligned number
                return value
    return None


def _os_name() -> str:
    return normalize_os(platform.system() or sys.platform)


def resolve_cost_class(gpus: Sequence[Gpu], costs: Mapping[str, float] | None = None) -> str:
    """The executor class whose price applies: "cpu" or "gpu", or a configured "gpu-<model>" class.

    `hardware.costs` may price GPU models apart (`gpu-a100: 3.2`, `gpu-t4: 0.5`):
    a class "gpu-TOKENS" applies when every dash-separated token occurs,
    case-insensitively, in the name of one of the GPUs ("gpu-a100-80gb" matches
    "NVIDIA A100-SXM4-80GB"); the most specific such class wins. CPU classes
    such as "cpu-small" describe a choice, not the hardware, so they are only
    used when given explicitly (`cost_class=`, the executor's `--class`).
    """
    if not gpus:
        return "cpu"
    best: tuple[int, int, str] | None = None
    for name in costs or ():
        low = name.lower()
        if not low.startswith(("gpu-", "gpu_")):
            continue
        tokens = [t for t in re.split(r"[-_]", low[4:]) if t]
        if tokens and any(all(t in g.name.lower() for t in tokens) for g in gpus):
            rank = (len(tokens), len(low), name)
            if best is None or rank[:2] > best[:2]:
                best = rank
    return best[2] if best else "gpu"


def detect_capabilities(
    tags: Sequence[str] = (),
    cost: float | None = None,
    costs: Mapping[str, float] | None = None,
    *,
    cost_class: str | None = None,
    gpus: GpuDetection | None = None,
) -> Capabilities:
    """This machine's Capabilities.

    cost: an explicit `cost` (the executor's `--cost`) wins; else `costs[cost_class]`
    (`hardware.costs` from config); else DEFAULT_COSTS (cpu 1.0, gpu 10.0 per hour).
    cost_class is resolve_cost_class() ("cpu", "gpu" or a matching "gpu-<model>"
    class from `costs`) unless given (any class named in `hardware.costs`, e.g.
    "cpu-small"). `gpus` passes an earlier probe_gpus()
    result so callers that also show the detection source probe only once.
    """
    detection = gpus if gpus is not None else probe_gpus()
    klass = cost_class or resolve_cost_class(detection.gpus, costs)
    if cost is not None:
        if cost < 0 or not math.isfinite(cost):
            raise ValueError(f"cost must be a finite number >= 0, got {cost!r}")
        chosen = float(cost)
    elif costs is not None and klass in costs:
        chosen = float(costs[klass])
    elif klass in DEFAULT_COSTS:
        chosen = DEFAULT_COSTS[klass]
    else:
        # A named class with no price: price it as the hardware it is.
        chosen = DEFAULT_COSTS["gpu" if detection.gpus else "cpu"]
    seen: dict[str, None] = {}
    for t in tags:
        t = t.strip()
        if t:
            seen.setdefault(t, None)
    return Capabilities(
        cpus=_cpu_count(),
        cpu_model=_cpu_model(),
        memory_gb=round(_memory_bytes() / _GIB, 2),
        os=_os_name(),
        arch=normalize_arch(platform.machine() or "unknown"),
        gpus=detection.gpus,
        tags=tuple(seen),
        cost=chosen,
        cost_class=klass,
        hostname=socket.gethostname() or "localhost",
    )
