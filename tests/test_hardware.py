"""Hardware detection: CPU/memory/OS, GPUs through NVML and nvidia-smi (faked), cost classes, the CLI.

The GPU paths run everywhere: tests/fakes/fake_pynvml.py stands in for pynvml
(ciopt.hardware imports it instead, so its real NVML calls run) and
tests/fakes/bin/nvidia-smi stands in for the driver tool. The host's real NVML
and nvidia-smi are never consulted here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import msgpack
import pytest
from ciopt import hardware
from ciopt.hardware import (
    Capabilities,
    Gpu,
    detect_capabilities,
    detect_gpus,
    normalize_arch,
    normalize_os,
    probe_gpus,
    resolve_cost_class,
)
from conftest import CliRunner, assert_one_line_error
from fakes import A100_80GB, FAKE_NVML_MODULE, T4_16GB, gpu_env
from hypothesis import given
from hypothesis import strategies as st

A100_NAME = "NVIDIA A100-SXM4-80GB"


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_env(monkeypatch, gpu_env(tmp_path / "nogpu", []))


@pytest.fixture
def two_a100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = gpu_env(tmp_path / "a100", [A100_80GB, A100_80GB], driver="550.54.15", cuda="12.4")
    use_env(monkeypatch, env)
    return env


def assert_two_a100(gpus: list[Gpu]) -> None:
    assert [g.index for g in gpus] == [0, 1]
    for g in gpus:
        assert g.name == A100_NAME
        assert g.memory_gb == 80.0
        assert g.driver == "550.54.15"
        assert g.cuda == "12.4"
    assert [g.uuid for g in gpus] == ["GPU-fake-0000", "GPU-fake-0001"]


# ----------------------------------------------------------------------------
# Without a GPU


def test_no_gpu_machine_is_a_cpu_box(no_gpu: None) -> None:
    gpus, source = detect_gpus()
    assert gpus == [] and source == "none"
    caps = detect_capabilities()
    assert caps.gpus == ()
    assert caps.cost_class == "cpu"
    assert caps.cost == 1.0  # the default for cpu
    assert caps.cpus >= 1
    assert caps.memory_gb > 0
    assert caps.cpu_model
    assert caps.os in ("linux", "darwin", "windows")
    assert caps.arch == normalize_arch(caps.arch)
    assert caps.hostname


def test_no_gpu_cost_from_config_and_explicit_cost_wins(no_gpu: None) -> None:
    assert detect_capabilities(costs={"cpu": 0.25, "gpu": 7}).cost == 0.25
    assert detect_capabilities(cost=3.5, costs={"cpu": 0.25}).cost == 3.5
    # A config without this class: the default price.
    assert detect_capabilities(costs={"gpu": 7}).cost == 1.0


def test_no_driver_at_all_reports_none_with_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_env(monkeypatch, gpu_env(tmp_path, [A100_80GB], via="none"))
    d = probe_gpus()
    assert d.gpus == () and d.source == "none"
    assert any(n.startswith("NVML:") for n in d.notes), d.notes
    assert any(n.startswith("nvidia-smi:") and "driver" in n for n in d.notes), d.notes


def test_missing_nvml_module_and_missing_nvidia_smi_never_raise(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIOPT_NVML_MODULE", "ciopt_no_such_nvml_module")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    gpus, source = detect_gpus()
    assert (gpus, source) == ([], "none")
    notes = probe_gpus().notes
    assert any("ciopt_no_such_nvml_module" in n for n in notes), notes
    assert "nvidia-smi: not on PATH" in notes


def test_detection_can_be_switched_off(two_a100: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIOPT_GPU_DETECTION", "none")
    assert detect_gpus() == ([], "none")
    assert detect_capabilities().cost_class == "cpu"


# ----------------------------------------------------------------------------
# GPUs through the fakes


def test_fake_nvml_two_a100(two_a100: dict[str, str]) -> None:
    gpus, source = detect_gpus()
    assert source == "nvml"
    assert_two_a100(gpus)
    caps = detect_capabilities(costs={"cpu": 1, "gpu": 12})
    assert caps.cost_class == "gpu"
    assert caps.cost == 12.0
    assert caps.cuda == "12.4"
    assert detect_capabilities().cost == 10.0  # default gpu price


def test_nvml_failing_falls_back_to_nvidia_smi_with_same_values(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    use_env(monkeypatch, gpu_env(tmp_path, [A100_80GB, A100_80GB], via="nvidia-smi"))
    d = probe_gpus()
    assert d.source == "nvidia-smi"
    assert_two_a100(list(d.gpus))
    assert any("NVML" in n for n in d.notes)  # why NVML was not used


def test_nvml_and_nvidia_smi_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [A100_80GB, T4_16GB]
    use_env(monkeypatch, gpu_env(tmp_path / "a", gpus, via="nvml"))
    via_nvml = detect_gpus()
    use_env(monkeypatch, gpu_env(tmp_path / "b", gpus, via="nvidia-smi"))
    via_smi = detect_gpus()
    assert via_nvml[1] == "nvml" and via_smi[1] == "nvidia-smi"
    assert via_nvml[0] == via_smi[0]
    assert [g.memory_gb for g in via_nvml[0]] == [80.0, 16.0]


def test_nvidia_smi_odd_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A comma in the name and a missing uuid ("[N/A]") must not break the CSV reading.
    odd = {"name": "Weird, Inc. GPU", "memory_mib": 12288, "uuid": "[N/A]"}
    use_env(monkeypatch, gpu_env(tmp_path, [odd], via="nvidia-smi", cuda="11.8", driver="520.1"))
    gpus, source = detect_gpus()
    assert source == "nvidia-smi"
    assert gpus == [Gpu(0, "Weird, Inc. GPU", 12.0, "520.1", "11.8", None)]


def test_fake_nvml_alone_by_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CIOPT_FAKE_NVML alone implies the module `fake_pynvml` from sys.path.
    env = gpu_env(tmp_path, [T4_16GB])
    monkeypatch.delenv("CIOPT_NVML_MODULE", raising=False)
    monkeypatch.setenv("CIOPT_FAKE_NVML", env["CIOPT_FAKE_NVML"])
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fakes"))
    gpus, source = detect_gpus()
    assert source == "nvml" and [g.name for g in gpus] == ["Tesla T4"]


def test_gpu_model_cost_class(two_a100: dict[str, str]) -> None:
    costs = {"cpu": 1, "gpu": 10, "gpu-t4": 2, "gpu-a100": 30, "gpu-a100-80gb": 32}
    caps = detect_capabilities(costs=costs)
    assert caps.cost_class == "gpu-a100-80gb"  # the most specific matching class
    assert caps.cost == 32.0
    caps = detect_capabilities(costs=costs, cost_class="cpu")
    assert (caps.cost_class, caps.cost) == ("cpu", 1.0)
    assert resolve_cost_class([], costs) == "cpu"
    t4 = Gpu(0, "Tesla T4", 16.0, None, None, None)
    assert resolve_cost_class([t4], costs) == "gpu-t4"
    assert resolve_cost_class([t4], {"gpu-a100": 3}) == "gpu"


def test_tags_are_kept_in_order_without_duplicates(no_gpu: None) -> None:
    assert detect_capabilities(tags=["cuda12", " pool=nightly ", "cuda12", ""]).tags == ("cuda12", "pool=nightly")


def test_normalization() -> None:
    assert normalize_arch("aarch64") == "arm64"
    assert normalize_arch("AMD64") == "x86_64"
    assert normalize_arch("x86_64") == "x86_64"
    assert normalize_arch("arm64") == "arm64"
    assert normalize_os("Linux") == "linux"
    assert normalize_os("Darwin") == "darwin"
    assert normalize_os("macos") == "darwin"
    assert normalize_os("Windows") == "windows"


def test_memory_honours_a_lower_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "_cgroup_memory_limit", lambda: 2 << 30)
    assert detect_capabilities().memory_gb <= 2.0


# ----------------------------------------------------------------------------
# to_dict / from_dict

_text = st.text(min_size=0, max_size=20)
_opt_text = st.none() | _text
_gb = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
_gpus = st.builds(Gpu, index=st.integers(0, 64), name=_text, memory_gb=_gb, driver=_opt_text, cuda=_opt_text,
                  uuid=_opt_text)
_caps = st.builds(
    Capabilities,
    cpus=st.integers(1, 4096),
    cpu_model=_text,
    memory_gb=_gb,
    os=st.sampled_from(["linux", "darwin", "windows"]),
    arch=st.sampled_from(["x86_64", "arm64", "riscv64"]),
    gpus=st.lists(_gpus, max_size=4).map(tuple),
    tags=st.lists(_text, max_size=5).map(tuple),
    cost=_gb,
    cost_class=st.sampled_from(["cpu", "gpu", "gpu-a100", "cpu-small"]),
    hostname=_text,
)


@given(_caps)
def test_to_dict_round_trips_through_json_and_msgpack(caps: Capabilities) -> None:
    d = caps.to_dict()
    assert Capabilities.from_dict(d) == caps
    assert Capabilities.from_dict(json.loads(json.dumps(d))) == caps
    assert Capabilities.from_dict(msgpack.unpackb(msgpack.packb(d))) == caps


def test_detected_capabilities_round_trip(two_a100: dict[str, str]) -> None:
    caps = detect_capabilities(tags=["cuda12"])
    assert Capabilities.from_dict(json.loads(json.dumps(caps.to_dict()))) == caps


@pytest.mark.parametrize("broken", [
    None,
    [],
    {"cpus": "8"},
    "drop:cpus",
    "drop:hostname",
    {"memory_gb": math.inf},
    {"gpus": "none"},
    {"gpus": [{"index": 0}]},
    {"tags": "a,b"},
    {"cost": -1},
    {"cpus": True},
])
def test_from_dict_rejects_malformed_input(broken: object) -> None:
    good = Capabilities(4, "cpu", 8.0, "linux", "x86_64", (), (), 1.0, "cpu", "h").to_dict()
    if broken is None or isinstance(broken, list):
        doc: object = broken
    elif isinstance(broken, str):
        doc = {k: v for k, v in good.items() if k != broken.split(":")[1]}
    else:
        doc = good | broken
    with pytest.raises(ValueError):
        Capabilities.from_dict(doc)  # type: ignore[arg-type]


def test_from_dict_normalizes_os_and_arch() -> None:
    d = Capabilities(4, "cpu", 8.0, "linux", "x86_64", (), (), 1.0, "cpu", "h").to_dict()
    caps = Capabilities.from_dict(d | {"arch": "aarch64", "os": "Linux"})
    assert (caps.os, caps.arch) == ("linux", "arm64")


def test_summary_names_the_gpus() -> None:
    g = Gpu(0, A100_NAME, 80.0, "550", "12.4", None)
    caps = Capabilities(16, "Xeon", 251.5, "linux", "x86_64", (g, g), ("cuda12",), 10.0, "gpu", "gpu-1")
    s = caps.summary()
    assert "gpu-1" in s and "2x NVIDIA A100-SXM4-80GB (80 GB)" in s and "CUDA 12.4" in s and "cost 10/h" in s


# ----------------------------------------------------------------------------
# The command line, in a real process


def test_cli_json_with_fake_nvml(cli: CliRunner, tmp_path: Path) -> None:
    env = gpu_env(tmp_path / "gpus", [A100_80GB, A100_80GB])
    proc = cli("hardware", "-o", "json", "--tags", "cuda12,pool=nightly", cwd=tmp_path, env=env, check=True)
    doc = json.loads(proc.stdout)
    assert doc["gpu_source"] == "nvml"
    assert doc["cost_class"] == "gpu" and doc["cost"] == 10.0
    assert doc["tags"] == ["cuda12", "pool=nightly"]
    caps = Capabilities.from_dict(doc)
    assert_two_a100(list(caps.gpus))


def test_cli_json_falls_back_to_nvidia_smi(cli: CliRunner, tmp_path: Path) -> None:
    env = gpu_env(tmp_path / "gpus", [A100_80GB, A100_80GB], via="nvidia-smi")
    doc = json.loads(cli("hardware", "--output", "json", cwd=tmp_path, env=env, check=True).stdout)
    assert doc["gpu_source"] == "nvidia-smi"
    assert_two_a100(list(Capabilities.from_dict(doc).gpus))


def test_cli_cost_from_workspace_config(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config/ci-optimization.yaml").write_text("hardware:\n  costs: {cpu: 0.5, gpu-a100: 3.2}\n")
    env = gpu_env(tmp_path / "gpus", [A100_80GB])
    doc = json.loads(cli("hardware", "-o", "json", cwd=tmp_path, env=env, check=True).stdout)
    assert (doc["cost_class"], doc["cost"]) == ("gpu-a100", 3.2)
    text = cli("hardware", cwd=tmp_path, env=env, check=True).stdout
    assert A100_NAME in text and "80.0 GB" in text and "CUDA 12.4" in text and "550.54.15" in text
    assert "3.2 per hour, class gpu-a100 (from hardware.costs.gpu-a100" in text
    # --cost wins over the config; --class picks a configured class.
    doc = json.loads(cli("hardware", "-o", "json", "--cost", "7", cwd=tmp_path, env=env, check=True).stdout)
    assert doc["cost"] == 7.0
    doc = json.loads(cli("hardware", "-o", "json", "--class", "cpu", cwd=tmp_path, env=env, check=True).stdout)
    assert (doc["cost_class"], doc["cost"]) == ("cpu", 0.5)


def test_cli_text_without_gpu_and_verbose_reasons(cli: CliRunner, tmp_path: Path) -> None:
    env = gpu_env(tmp_path / "gpus", [], via="none")
    proc = cli("hardware", "--verbose", cwd=tmp_path, env=env, check=True)
    assert "GPUs:" in proc.stdout and "none" in proc.stdout
    assert "class cpu" in proc.stdout
    assert "ciopt: gpu detection: NVML:" in proc.stderr
    assert "ciopt: gpu detection: nvidia-smi:" in proc.stderr


def test_cli_usage_errors(cli: CliRunner, tmp_path: Path) -> None:
    env = gpu_env(tmp_path / "gpus", [])
    assert_one_line_error(cli("hardware", "--cost=-1", cwd=tmp_path, env=env), contains="--cost")
    assert_one_line_error(cli("hardware", "--class", "cpu-smal", cwd=tmp_path, env=env), contains="cpu-smal")
    (tmp_path / "config").mkdir()
    (tmp_path / "config/ci-optimization.yaml").write_text("hardware:\n  costs: {cpu: -1}\n")
    assert_one_line_error(cli("hardware", cwd=tmp_path, env=env), contains="hardware.costs")


def test_cli_help_teaches(cli: CliRunner) -> None:
    out = cli("hardware", "--help", check=True).stdout
    for word in ("NVML", "nvidia-smi", "hardware.costs", "--cost", "--tags", "--verbose", "requires"):
        assert word in out
    assert "hardware" in cli("--help", check=True).stdout


def test_fake_nvml_mirrors_the_real_binding() -> None:
    # The fake is only worth something if ciopt calls nothing the real pynvml lacks.
    pynvml = pytest.importorskip("pynvml")
    source = Path(hardware.__file__).read_text()
    called = set(re.findall(r"\bnv\.(nvml\w+)\(", source))
    assert {"nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetMemoryInfo"} <= called
    fake = importlib.util.spec_from_file_location("fake_pynvml_check", FAKE_NVML_MODULE)
    assert fake is not None and fake.loader is not None
    module = importlib.util.module_from_spec(fake)
    fake.loader.exec_module(module)
    for name in sorted(called):
        assert callable(getattr(pynvml, name, None)), f"pynvml has no {name}"
        assert callable(getattr(module, name, None)), f"the fake has no {name}"

