"""Environment for a process (or this test process) that should see fake GPUs.

    env = gpu_env(tmp_path, [A100_80GB, A100_80GB])                 # via the fake NVML
    env = gpu_env(tmp_path, [A100_80GB], via="nvidia-smi")          # NVML fails, fake nvidia-smi answers
    env = gpu_env(tmp_path, [])                                      # a machine with no GPU, even on a GPU host
    subprocess.run([...], env={**os.environ, **env})  or  for k, v in env.items(): monkeypatch.setenv(k, v)

The variables are the hooks documented in ciopt.hardware: CIOPT_NVML_MODULE points
at fake_pynvml.py, CIOPT_FAKE_NVML / CIOPT_FAKE_NVIDIA_SMI at the JSON, and PATH
starts with tests/fakes/bin (the fake nvidia-smi). The real NVML and the real
nvidia-smi are never consulted, so results do not depend on the host.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FAKES = Path(__file__).resolve().parent
FAKE_BIN = FAKES / "bin"
FAKE_NVML_MODULE = FAKES / "fake_pynvml.py"

A100_80GB: Mapping[str, Any] = {"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}
T4_16GB: Mapping[str, Any] = {"name": "Tesla T4", "memory_mib": 16384}


def gpu_env(
    directory: Path,
    gpus: Sequence[Mapping[str, Any]],
    *,
    via: str = "nvml",
    driver: str = "550.54.15",
    cuda: str = "12.4",
    path: str | None = None,
) -> dict[str, str]:
    """Writes the fake GPU description under `directory` and returns the variables to set.

    via: "nvml" (fake NVML answers; nvidia-smi also present and agreeing),
    "nvidia-smi" (fake NVML fails as if no driver library, fake nvidia-smi answers),
    "none" (both fail: detection must report no GPU).
    """
    if via not in ("nvml", "nvidia-smi", "none"):
        raise ValueError(via)
    directory.mkdir(parents=True, exist_ok=True)
    listed = [dict(g, uuid=g.get("uuid", f"GPU-fake-{i:04d}")) for i, g in enumerate(gpus)]
    good = {"driver": driver, "cuda": cuda, "gpus": listed}
    broken = {"fail": "NVML Shared Library Not Found"}
    nvml_json = directory / "fake-nvml.json"
    smi_json = directory / "fake-nvidia-smi.json"
    nvml_json.write_text(json.dumps(good if via == "nvml" else broken))
    smi_json.write_text(json.dumps(broken if via == "none" else good))
    return {
        "CIOPT_GPU_DETECTION": "auto",
        "CIOPT_NVML_MODULE": str(FAKE_NVML_MODULE),
        "CIOPT_FAKE_NVML": str(nvml_json),
        "CIOPT_FAKE_NVIDIA_SMI": str(smi_json),
        "CIOPT_FAKE_PYTHON": sys.executable,
        "PATH": str(FAKE_BIN) + os.pathsep + (path if path is not None else os.environ.get("PATH", "")),
    }
