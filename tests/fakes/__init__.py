"""Test doubles for hardware detection: a fake NVML module and a fake nvidia-smi (see gpus.gpu_env)."""

from fakes.gpus import A100_80GB, FAKE_BIN, FAKE_NVML_MODULE, T4_16GB, gpu_env

__all__ = ["A100_80GB", "FAKE_BIN", "FAKE_NVML_MODULE", "T4_16GB", "gpu_env"]
