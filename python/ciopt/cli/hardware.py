"""`ciopt hardware`: what this machine offers to the remote-execution pool."""

from __future__ import annotations

import math

import click

from ciopt.cli.errors import fail
from ciopt.cli.output import emit_json, output_option
from ciopt.hardware import Capabilities, GpuDetection, detect_capabilities, probe_gpus


def _costs_from_config() -> tuple[dict[str, float] | None, str | None]:
    """`hardware.costs` of the workspace around the current directory, and where it came from."""
    from ciopt.cli.config_here import config_here

    cfg = config_here()
    if cfg is None:
        return None, None  # outside a workspace the defaults apply
    costs = dict(cfg.hardware.costs)
    return (costs or None), cfg.sources.get("hardware.costs")


def _split_tags(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _cost_source(cost: float | None, caps: Capabilities, costs: dict[str, float] | None, where: str | None) -> str:
    if cost is not None:
        return "--cost"
    if costs and caps.cost_class in costs:
        return f"hardware.costs.{caps.cost_class}" + (f" ({where})" if where else "")
    return "default"


@click.command("hardware")
@output_option
@click.option("--tags", default=None, metavar="T,...",
              help="Comma-separated tags to add, as `ciopt executor --tags` would (e.g. cuda12,pool=nightly).")
@click.option("--cost", type=float, default=None, metavar="C",
              help="Cost per hour, as `ciopt executor --cost` would; overrides hardware.costs.")
@click.option("--class", "cost_class", default=None, metavar="NAME",
              help="Executor class whose hardware.costs price applies (e.g. cpu-small); default: "
                   "cpu, gpu, or a gpu-MODEL class matching a detected GPU.")
@click.option("--verbose", "-v", is_flag=True,
              help="Also say how GPUs were looked for and why a method found nothing.")
def hardware(output: str, tags: str | None, cost: float | None, cost_class: str | None, verbose: bool) -> None:
    """Show the capabilities an executor on this machine would register.

    These are what targets' `requires` are matched against: CPU count and model,
    memory (GiB), OS and architecture, and each GPU with its memory, driver and
    CUDA version. GPUs are found through NVML (the nvidia-ml-py package), else
    through `nvidia-smi`; a machine with neither simply has no GPU.

    The cost per hour decides where work goes: the scheduler picks the cheapest
    executor that can run an action. It is `--cost` if given, else the
    `hardware.costs` entry for this machine's class ("gpu" when a GPU was found,
    otherwise "cpu") in config/ci-optimization.yaml, else 1 for cpu and 10 for gpu.
    A `gpu-MODEL` class in hardware.costs (gpu-a100, gpu-t4) prices the GPUs
    whose name contains MODEL; `--class` picks any configured class by name.

    \b
    Examples:
      ciopt hardware
      ciopt hardware --output json
      ciopt hardware --tags cuda12,pool=nightly --cost 4
      ciopt hardware --verbose          # why no GPU was found
    """
    if cost is not None and (cost < 0 or not math.isfinite(cost)):
        fail(f"--cost: expected a number >= 0, got {cost:g}")
    costs, where = (None, None) if cost is not None else _costs_from_config()
    if cost_class is not None:
        cost_class = cost_class.strip()
        known = set(costs or ()) | {"cpu", "gpu"}
        if cost is None and cost_class not in known:
            fail(f"--class {cost_class!r}: no such class in hardware.costs "
                 f"(known: {', '.join(sorted(known))}); give --cost or add it to config/ci-optimization.yaml")
    detection: GpuDetection = probe_gpus()
    caps = detect_capabilities(_split_tags(tags), cost=cost, costs=costs, cost_class=cost_class or None,
                               gpus=detection)
    if verbose:
        for note in detection.notes:
            click.echo(f"ciopt: gpu detection: {note}", err=True)
    if output == "json":
        doc = caps.to_dict() | {"gpu_source": detection.source}
        if verbose:
            doc["gpu_notes"] = list(detection.notes)
        emit_json(doc)
        return
    rows = [
        ("host", caps.hostname),
        ("CPUs", f"{caps.cpus} x {caps.cpu_model}"),
        ("memory", f"{caps.memory_gb:.1f} GB"),
        ("os/arch", f"{caps.os}/{caps.arch}"),
    ]
    if caps.gpus:
        for g in caps.gpus:
            detail = f"{g.name}, {g.memory_gb:.1f} GB, driver {g.driver or '?'}, CUDA {g.cuda or '?'}"
            rows.append((f"GPU {g.index}", detail))
        rows.append(("GPUs found by", detection.source))
    else:
        hint = "" if verbose else " (--verbose says why)"
        rows.append(("GPUs", f"none{hint}"))
    rows.append(("tags", ", ".join(caps.tags) if caps.tags else "-"))
    source = _cost_source(cost, caps, costs, where)
    rows.append(("cost", f"{_fmt(caps.cost)} per hour, class {caps.cost_class} (from {source})"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k + ':':<{width + 1}} {v}")
