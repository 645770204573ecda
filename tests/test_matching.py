"""Matching `requires` to Capabilities and choosing the executor: pure functions, no processes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ciopt.hardware import Capabilities, Gpu
from ciopt.remote.matching import (
    Candidate,
    RoundRobin,
    can_ever_run,
    choose,
    eligible,
    explain_pool,
    needs_gpu,
    round_robin,
    run_cost,
    satisfies,
    unmet,
)

A100 = Gpu(0, "NVIDIA A100-SXM4-80GB", 80.0, "550.54.15", "12.4", "GPU-a")
A100_40 = Gpu(1, "NVIDIA A100-SXM4-40GB", 40.0, "550.54.15", "12.4", "GPU-b")
T4 = Gpu(0, "Tesla T4", 16.0, "525.60", "12.0", "GPU-t")


def caps(*gpus: Gpu, cost: float | None = None, tags: tuple[str, ...] = (), memory_gb: float = 64.0,
         cpus: int = 16, os: str = "linux", arch: str = "x86_64", host: str = "box") -> Capabilities:
    return Capabilities(
        cpus=cpus, cpu_model="Xeon", memory_gb=memory_gb, os=os, arch=arch, gpus=tuple(gpus), tags=tags,
        cost=cost if cost is not None else (10.0 if gpus else 1.0), cost_class="gpu" if gpus else "cpu",
        hostname=host,
    )


CPU = caps(host="cpu-box")
GPU2 = caps(A100, replace(A100_40, index=1), host="gpu-box", tags=("cuda12",))


# ----------------------------------------------------------------------------
# unmet / satisfies, one requirement kind at a time


def test_empty_requirements_run_anywhere() -> None:
    assert unmet({}, CPU) == [] and satisfies({}, GPU2)


@pytest.mark.parametrize("requires, ok, bad, reason", [
    ({"gpu": 1}, GPU2, CPU, "needs 1 GPU, has none"),
    ({"gpu": 2}, GPU2, caps(T4), "needs 2 GPUs, has 1"),
    ({"gpu": 0}, CPU, None, None),
    ({"gpu_memory_gb": 80}, GPU2, caps(T4), "needs 1 GPU with >= 80 GB each, has none (largest 16 GB)"),
    ({"gpu": 2, "gpu_memory_gb": 40}, GPU2, caps(A100, T4), "needs 2 GPUs with >= 40 GB each, has 1"),
    ({"gpu_name": "a100"}, GPU2, caps(T4), "needs 1 GPU named like 'a100', has none (Tesla T4)"),
    ({"cuda": ">=12.1"}, GPU2, caps(T4), "needs CUDA >=12.1, has CUDA 12.0"),
    ({"cuda": "12"}, caps(T4), caps(replace(T4, cuda="11.8")), "needs CUDA >= 12, has CUDA 11.8"),
    ({"cuda": 12.2}, GPU2, caps(T4), "needs CUDA >= 12.2, has CUDA 12.0"),
    ({"cuda": "12"}, GPU2, CPU, "needs CUDA >= 12, has no GPU"),
    ({"memory_gb": 32}, CPU, caps(memory_gb=15.5), "needs 32 GB of memory, has 15.5 GB"),
    ({"cpus": 8}, CPU, caps(cpus=4), "needs 8 CPUs, has 4"),
    ({"os": "linux"}, CPU, caps(os="darwin"), "needs os linux, has darwin"),
    ({"os": "macos"}, caps(os="darwin"), CPU, "needs os darwin, has linux"),
    ({"arch": "aarch64"}, caps(arch="arm64"), CPU, "needs arch arm64, has x86_64"),
    ({"arch": "amd64"}, CPU, caps(arch="arm64"), "needs arch x86_64, has arm64"),
    ({"tags": ["cuda12"]}, GPU2, CPU, "needs tag cuda12, has no tags"),
    ({"tags": ["a", "b"]}, caps(tags=("a", "b", "c")), caps(tags=("a",)), "needs tag b, has a"),
    ({"tags": "a"}, caps(tags=("a",)), CPU, "needs tag a, has no tags"),
    ({"pool": "nightly"}, caps(tags=("pool=nightly",)), caps(tags=("pool=day",)),
     "needs tag pool=nightly, has pool=day"),
    ({"fast_disk": True}, caps(tags=("fast_disk",)), CPU, "needs tag fast_disk=true, has no tags"),
    ({"rack": 3}, caps(tags=("rack=3",)), CPU, "needs tag rack=3"),
])
def test_each_requirement_kind(requires: dict, ok: Capabilities, bad: Capabilities | None,
                               reason: str | None) -> None:
    assert unmet(requires, ok) == [], unmet(requires, ok)
    assert satisfies(requires, ok)
    if bad is not None:
        reasons = unmet(requires, bad)
        assert not satisfies(requires, bad)
        assert len(reasons) == 1, reasons
        assert reasons[0].startswith(reason), reasons


def test_gpu_memory_counts_the_n_largest() -> None:
    mixed = caps(A100, T4)  # 80 GB and 16 GB
    assert satisfies({"gpu": 1, "gpu_memory_gb": 40}, mixed)
    assert not satisfies({"gpu": 2, "gpu_memory_gb": 40}, mixed)
    assert satisfies({"gpu": 2, "gpu_memory_gb": 16}, mixed)


def test_gpu_keys_combine_per_gpu() -> None:
    # One big T4-named GPU does not exist: name and memory must hold for the same GPU.
    mixed = caps(A100, T4)
    reasons = unmet({"gpu_name": "T4", "gpu_memory_gb": 40}, mixed)
    assert len(reasons) == 1 and "both named like 'T4'" in reasons[0], reasons
    assert satisfies({"gpu_name": "A100", "gpu_memory_gb": 40}, mixed)


def test_cuda_specs() -> None:
    g = caps(replace(A100, cuda="12.4"))
    for spec in (">=12.1", "12", "12.4", ">12.3", "<13", "<=12", "==12", "==12.4", "=12.4", "v12", 12, 12.4):
        assert satisfies({"cuda": spec}, g), spec
    for spec in (">=12.5", "13", ">12", "<12.4", "<=11", "==12.3", "==11"):
        assert not satisfies({"cuda": spec}, g), spec


def test_cuda_is_the_highest_among_gpus() -> None:
    assert satisfies({"cuda": "12.4"}, caps(T4, A100))


@pytest.mark.parametrize("requires, fragment", [
    ({"gpu": "two"}, "'gpu' must be a count"),
    ({"gpu": -1}, "'gpu' must be a count"),
    ({"gpu_memory_gb": "big"}, "'gpu_memory_gb' must be a number"),
    ({"cuda": "latest"}, "'cuda' must be a version"),
    ({"memory_gb": "lots"}, "'memory_gb' must be a number"),
    ({"tags": [1, 2]}, "'tags' must be a list of strings"),
    ({"gpu_name": ""}, "'gpu_name' must be a non-empty string"),
])
def test_unreadable_values_are_unmet_never_raise(requires: dict, fragment: str) -> None:
    reasons = unmet(requires, GPU2)
    assert any(fragment in r for r in reasons), reasons


def test_several_unmet_requirements_all_reported() -> None:
    reasons = unmet({"gpu": 1, "memory_gb": 512, "os": "windows", "tags": ["x"]}, CPU)
    assert len(reasons) == 4, reasons


def test_needs_gpu() -> None:
    assert not needs_gpu({}) and not needs_gpu({"gpu": 0, "memory_gb": 8})
    assert needs_gpu({"gpu": 1}) and needs_gpu({"gpu_name": "T4"}) and needs_gpu({"cuda": "12"})
    assert needs_gpu({"gpu_memory_gb": 8})


# ----------------------------------------------------------------------------
# choose


def cand(id: str, c: Capabilities, slots: int = 2, busy: int = 0, excluded: bool = False) -> Candidate:
    return Candidate(id=id, caps=c, slots=slots, busy=busy, excluded=excluded)


def test_cheapest_capable_is_chosen() -> None:
    pool = [cand("gpu", GPU2), cand("cpu2", caps(cost=2.0)), cand("cpu1", caps(cost=1.0))]
    assert choose({}, pool).id == "cpu1"
    assert choose({"gpu": 1}, pool).id == "gpu"
    assert choose({"gpu": 4}, pool) is None


def test_never_waits_on_expensive_when_cheaper_capable_free() -> None:
    pool = [cand("cpu1", caps(cost=1.0), busy=2), cand("cpu2", caps(cost=2.0)), cand("cpu3", caps(cost=3.0))]
    assert choose({}, pool).id == "cpu2"  # the cheapest is full: the next cheapest free one


def test_ties_go_to_least_loaded_then_id() -> None:
    pool = [cand("b", CPU, slots=4, busy=3), cand("a", CPU, slots=4, busy=2), cand("c", CPU, slots=2, busy=0)]
    assert choose({}, pool).id == "c"
    pool = [cand("b", CPU, slots=4, busy=1), cand("a", CPU, slots=4, busy=1)]
    assert choose({}, pool).id == "a"


def test_full_candidates_are_not_chosen() -> None:
    assert choose({}, [cand("cpu", CPU, slots=1, busy=1)]) is None


def test_gpu_box_kept_for_gpu_work_cpu_action_waits() -> None:
    pool = [cand("cpu", CPU, slots=1, busy=1), cand("gpu", GPU2)]
    # The CPU box is busy; the CPU action waits for it rather than take the GPU box.
    assert choose({}, pool, keep_gpu_for_gpu_work=True) is None
    assert [c.id for c in eligible({}, pool, keep_gpu_for_gpu_work=True)] == ["cpu"]
    pool[0].busy = 0
    assert choose({}, pool, keep_gpu_for_gpu_work=True).id == "cpu"
    # GPU work still goes to the GPU box.
    assert choose({"gpu": 1}, pool, keep_gpu_for_gpu_work=True).id == "gpu"


def test_without_keeping_gpu_box_takes_cpu_work_when_cheaper_boxes_are_full() -> None:
    pool = [cand("cpu", CPU, slots=1, busy=1), cand("gpu", GPU2)]
    assert choose({}, pool, keep_gpu_for_gpu_work=False).id == "gpu"
    pool[0].busy = 0
    assert choose({}, pool, keep_gpu_for_gpu_work=False).id == "cpu"  # still cheapest first


def test_gpu_box_runs_cpu_work_when_no_cpu_box_exists() -> None:
    pool = [cand("gpu", GPU2)]
    assert choose({}, pool, keep_gpu_for_gpu_work=True).id == "gpu"
    # A CPU box that cannot run this action does not count either.
    pool = [cand("gpu", GPU2), cand("small", caps(memory_gb=4))]
    assert choose({"memory_gb": 32}, pool, keep_gpu_for_gpu_work=True).id == "gpu"


def test_excluded_candidate_is_skipped() -> None:
    pool = [cand("cpu1", caps(cost=1.0), excluded=True), cand("cpu2", caps(cost=2.0))]
    assert choose({}, pool).id == "cpu2"
    # An excluded CPU box does not keep a CPU action off the GPU box.
    pool = [cand("cpu1", CPU, excluded=True), cand("gpu", GPU2)]
    assert choose({}, pool, keep_gpu_for_gpu_work=True).id == "gpu"
    assert choose({}, [cand("only", CPU, excluded=True)]) is None


def test_cheaper_gpu_box_preferred_for_gpu_work() -> None:
    pool = [cand("a100", caps(A100, cost=30.0)), cand("t4", caps(T4, cost=3.0))]
    assert choose({"gpu": 1}, pool).id == "t4"
    assert choose({"gpu": 1, "gpu_memory_gb": 40}, pool).id == "a100"


# ----------------------------------------------------------------------------
# round robin and cost


def test_round_robin_rotates_ignoring_cost() -> None:
    pool = [cand("c", caps(cost=3.0)), cand("a", caps(cost=1.0)), cand("gpu", GPU2), cand("b", caps(cost=2.0))]
    rr = RoundRobin()
    picks = [rr.choose({}, pool).id for _ in range(5)]
    assert picks == ["a", "b", "c", "gpu", "a"]
    assert round_robin({"gpu": 1}, pool, last="a").id == "gpu"
    assert round_robin({}, pool, last="zzz").id == "a"  # wraps around
    assert round_robin({}, [], last=None) is None
    pool[1].busy = pool[1].slots
    assert round_robin({}, pool, last="gpu").id == "b"  # full ones are skipped


def test_run_cost() -> None:
    assert run_cost(1800, GPU2) == pytest.approx(5.0)
    assert run_cost(3600, CPU) == pytest.approx(1.0)


# ----------------------------------------------------------------------------
# can_ever_run / explain_pool


def test_impossible_requirement_is_explained() -> None:
    pool = [CPU, replace(CPU, cost=2.0, hostname="cpu-box-2"), GPU2]
    requires = {"gpu": 1, "gpu_memory_gb": 100}
    assert not can_ever_run(requires, pool)
    text = explain_pool(requires, pool)
    assert "gpu=1, gpu_memory_gb=100" in text
    assert "3 executors" in text
    assert "cpu-box" in text and "cpu-box-2" in text and "gpu-box" in text
    assert "no GPU" in text  # what the CPU boxes offer
    assert "2x NVIDIA A100" not in text  # the GPUs differ in name: listed one by one
    assert "NVIDIA A100-SXM4-80GB (80 GB)" in text  # what the GPU box offers
    assert "needs 1 GPU, has none" in text
    assert "needs 1 GPU with >= 100 GB each, has none (largest 80 GB)" in text
    assert "\n" not in text  # one paragraph


def test_can_ever_run_counts_busy_executors() -> None:
    assert can_ever_run({"gpu": 1}, [CPU, GPU2])
    assert can_ever_run({"gpu": 1}, [cand("cpu", CPU), cand("gpu", GPU2, busy=2)])
    assert not can_ever_run({}, [])
    assert "no executor is registered" in explain_pool({}, [])


def test_explain_pool_groups_identical_executors_and_names_candidate_ids() -> None:
    pool = [cand("exec-1", CPU), cand("exec-2", CPU), cand("exec-3", CPU)]
    text = explain_pool({"os": "windows"}, pool)
    assert "needs os windows, has linux" in text
    assert "exec-1" in text and "exec-3" in text
    text = explain_pool({"os": "windows"}, [CPU, CPU, CPU])
    assert "3x cpu-box" in text
