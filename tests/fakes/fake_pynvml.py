"""A stand-in for nvidia-ml-py's `pynvml`, fed by the JSON file named in $CIOPT_FAKE_NVML.

ciopt.hardware imports it in place of pynvml (CIOPT_NVML_MODULE=<this file>, or
CIOPT_FAKE_NVML alone with this directory on sys.path), so the very calls the
real detection makes run against it. Only the functions ciopt calls exist.

JSON (see gpus.py for a writer):
  {"driver": "550.54.15", "cuda": "12.4",
   "gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "uuid": "GPU-..."}],
   "fail": null}
`fail` set to a string makes nvmlInit raise NVMLError with it, as on a machine
whose driver is missing or wedged. No $CIOPT_FAKE_NVML at all behaves the same
("library not found").
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_INVALID_ARGUMENT = 2


class NVMLError(Exception):
    def __init__(self, value: int, message: str = "") -> None:
        self.value = value
        super().__init__(message or f"NVML error {value}")


_state: dict[str, Any] | None = None


def _load() -> dict[str, Any]:
    path = os.environ.get("CIOPT_FAKE_NVML")
    if not path:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def nvmlInit() -> None:
    global _state
    data = _load()
    if data.get("fail"):
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND, str(data["fail"]))
    _state = data


def nvmlShutdown() -> None:
    global _state
    _state = None


def _s() -> dict[str, Any]:
    if _state is None:
        raise NVMLError(NVML_ERROR_UNINITIALIZED, "Uninitialized")
    return _state


def nvmlSystemGetDriverVersion() -> str:
    return str(_s().get("driver", "550.54.15"))


def nvmlSystemGetCudaDriverVersion() -> int:
    major, _, minor = str(_s().get("cuda", "12.4")).partition(".")
    return int(major) * 1000 + int(minor or 0) * 10


def nvmlDeviceGetCount() -> int:
    return len(_s().get("gpus", []))


def nvmlDeviceGetHandleByIndex(index: int) -> SimpleNamespace:
    gpus = _s().get("gpus", [])
    if not 0 <= index < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument")
    return SimpleNamespace(index=index, gpu=gpus[index])


def _mib(gpu: dict[str, Any]) -> float:
    return float(gpu["memory_mib"]) if "memory_mib" in gpu else float(gpu.get("memory_gb", 16)) * 1024


def nvmlDeviceGetName(handle: SimpleNamespace) -> str:
    return str(handle.gpu.get("name", "NVIDIA Fake GPU"))


def nvmlDeviceGetMemoryInfo(handle: SimpleNamespace) -> SimpleNamespace:
    total = int(_mib(handle.gpu) * 1024 * 1024)
    return SimpleNamespace(total=total, free=total, used=0)


def nvmlDeviceGetUUID(handle: SimpleNamespace) -> str:
    return str(handle.gpu.get("uuid", f"GPU-fake-{handle.index:04d}"))
