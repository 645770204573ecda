"""`ciopt scheduler`, `ciopt executor` and `ciopt keygen`: the remote execution daemons and their keys."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from ciopt.cli.errors import exit_with, fail
from ciopt.cli.output import emit_json, output_option

LOG_LEVELS = ["debug", "info", "warning", "error"]


def _config() -> Any:
    from ciopt.cli.config_here import config_here

    return config_here()


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _check_address(option: str, address: str) -> str:
    if not address.startswith(("tcp://", "ipc://", "inproc://")):
        fail(f"{option} {address!r}: expected tcp://HOST:PORT (or ipc://PATH)")
    return address


def _client_security(curve_secret: Path | None, server_key: Path | None) -> Any:
    from ciopt.remote.auth import ClientSecurity, KeyFileError

    try:
        if curve_secret or server_key:
            if not (curve_secret and server_key):
                fail("--curve-secret and --server-key go together")
            return ClientSecurity.from_files(curve_secret, server_key)
        return ClientSecurity.from_env()
    except KeyFileError as e:
        fail(str(e))


def _positive(option: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        fail(f"{option}: expected a number > 0, got {value:g}")


def _curve_options(f: Any) -> Any:
    f = click.option("--server-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="The scheduler's public key file (NAME.key from `ciopt keygen`); "
                          "default $CIOPT_SERVER_KEY.")(f)
    f = click.option("--curve-secret", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="This side's secret key file (NAME.key_secret); default $CIOPT_CURVE_SECRET.")(f)
    return f


# -- scheduler ---------------------------------------------------------------------------------------


@click.group("scheduler", invoke_without_command=True)
@click.option("--bind", metavar="ADDR", default=None,
              help="Where to listen: tcp://HOST:PORT (tcp://0.0.0.0:5555 for every interface; port * = any free).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CAS and ActionCache of blobs in transit (default: scheduler/ beside the local store).")
@click.option("--heartbeat", "heartbeat_s", type=float, default=None, metavar="S",
              help="Seconds between executor heartbeats (default: remote_execution.heartbeat_s, 5).")
@click.option("--heartbeat-timeout", "heartbeat_timeout_s", type=float, default=None, metavar="S",
              help="Silence after which an executor is dead and its actions run elsewhere "
                   "(default: remote_execution.heartbeat_timeout_s, 30).")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="Reassignments of an action whose executor died (default: remote_execution.retries, 3).")
@click.option("--keep-gpu-for-gpu-work/--share-gpu", default=None,
              help="Never put CPU work on a GPU executor while a capable CPU one exists "
                   "(default: hardware.keep_gpu_for_gpu_work).")
@click.option("--curve-secret", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Turn CurveZMQ on with this secret key file (NAME.key_secret); needs --allow.")
@click.option("--allow", "allow_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of public .key files of the executors and clients to admit.")
@click.option("--policy", type=click.Choice(["cost", "round_robin"]), default="cost", show_default=True,
              help="cost: cheapest capable executor with a free slot. round_robin: the next capable one in "
                   "turn, ignoring cost (to measure what cost-aware routing saves).")
@click.option("--prefetch", type=click.IntRange(min=0), default=1, show_default=True,
              help="Actions an executor may hold beyond its slots when every capable executor is full, so "
                   "that their inputs arrive while its slots are busy (0: never more than its slots).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.pass_context
def scheduler(ctx: click.Context, bind: str | None, state_dir: Path | None, heartbeat_s: float | None,
              heartbeat_timeout_s: float | None, retries: int | None, keep_gpu_for_gpu_work: bool | None,
              curve_secret: Path | None, allow_dir: Path | None, policy: str, prefetch: int,
              log_level: str) -> None:
    """Run the remote execution broker, or ask a running one for its status.

    Executors (`ciopt executor`) register with it; `ciopt build --remote ADDR` submits
    actions to it. Each action goes to the cheapest executor whose capabilities meet the
    target's `requires` and that has a free slot (ties: the least loaded), longest
    remaining chain of actions first. An executor silent for the heartbeat timeout is
    dead and its actions are re-run elsewhere; an action no executor can ever run fails
    at once with what the pool offers. Blobs pass through the state directory's CAS, so
    inputs an executor or client already sent are never sent again.

    \b
    Examples:
      ciopt scheduler --bind tcp://0.0.0.0:5555
      ciopt scheduler --bind tcp://0.0.0.0:5555 --curve-secret keys/scheduler.key_secret --allow keys/allowed
      ciopt scheduler status --scheduler tcp://ci-scheduler:5555 --output json
    Defaults for timings, retries and GPU keeping come from config/ci-optimization.yaml
    when run inside a workspace. Stop with SIGTERM or Ctrl-C.
    """
    if ctx.invoked_subcommand is not None:
        return
    if bind is None:
        fail("--bind ADDR is required to run a scheduler (e.g. --bind tcp://0.0.0.0:5555); "
             "`ciopt scheduler status` reports on a running one")
    _check_address("--bind", bind)
    _positive("--heartbeat", heartbeat_s)
    _positive("--heartbeat-timeout", heartbeat_timeout_s)
    if bool(curve_secret) != bool(allow_dir):
        fail("--curve-secret and --allow go together: CurveZMQ needs the scheduler's key and the allowlist")
    cfg = _config()
    rx = cfg.remote_execution if cfg is not None else None
    beat = heartbeat_s if heartbeat_s is not None else (rx.heartbeat_s if rx else 5.0)
    timeout = heartbeat_timeout_s if heartbeat_timeout_s is not None else (rx.heartbeat_timeout_s if rx else 30.0)
    if timeout <= beat:
        fail(f"--heartbeat-timeout ({timeout:g}) must be greater than --heartbeat ({beat:g})")
    from ciopt.remote.auth import KeyFileError, load_keypair
    from ciopt.remote.scheduler import Scheduler, SchedulerOptions
    from ciopt.store_location import default_store_path

    keys = None
    if curve_secret is not None:
        try:
            keys = load_keypair(curve_secret, need_secret=True)
        except KeyFileError as e:
            fail(str(e))
    if allow_dir is not None and not allow_dir.is_dir():
        fail(f"--allow {allow_dir}: not a directory of public .key files")
    _logging(log_level)
    opts = SchedulerOptions(
        bind=bind, state_dir=state_dir or (default_store_path() / "scheduler"), heartbeat_s=beat,
        heartbeat_timeout_s=timeout, retries=retries if retries is not None else (rx.retries if rx else 3),
        keep_gpu_for_gpu_work=keep_gpu_for_gpu_work if keep_gpu_for_gpu_work is not None
        else (cfg.hardware.keep_gpu_for_gpu_work if cfg is not None else False),
        curve_secret=keys, allow_dir=allow_dir, policy=policy, prefetch=prefetch,
    )
    import zmq

    try:
        sched = Scheduler(opts)
    except zmq.ZMQError as e:
        fail(f"cannot listen on {bind}: {e}")
    # The bound address on stdout, for scripts that bind port * (and for tests).
    click.echo(f"ciopt scheduler listening on {sched.address}")
    sys.stdout.flush()
    sched.serve()


@scheduler.command("status")
@click.option("--scheduler", "address", metavar="ADDR", default=None,
              help="The scheduler to ask (default: remote_execution.scheduler).")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for the answer.")
@_curve_options
@output_option
def scheduler_status(address: str | None, timeout: float, curve_secret: Path | None, server_key: Path | None,
                     output: str) -> None:
    """Executors (capabilities, slots in use, cost, last heartbeat), queue length and utilization.

    \b
    Examples:
      ciopt scheduler status --scheduler tcp://127.0.0.1:5555
      ciopt scheduler status --scheduler tcp://127.0.0.1:5555 -o json | jq '.executors[].busy'
    Exit: 0 answered, 2 unreachable or refused.
    """
    if address is None:
        cfg = _config()
        address = cfg.remote_execution.scheduler if cfg is not None else None
        if not address:
            fail("--scheduler ADDR is required (or set remote_execution.scheduler)")
    _check_address("--scheduler", address)
    import zmq

    from ciopt.remote.transport import Channel, Unreachable

    security = _client_security(curve_secret, server_key)
    ctx = zmq.Context()
    chan = Channel(ctx, address, security, idle_timeout_s=timeout, watch=True)
    try:
        chan.send("status", req=1)
        doc = chan.wait_for(lambda m: m["type"] == "status" and m.get("req") == 1, "status")["status"]
    except Unreachable as e:
        fail(str(e))
    finally:
        chan.close()
        ctx.term()
    if output == "json":
        emit_json(doc)
        return
    s = doc["scheduler"]
    click.echo(f"scheduler {s['id']} at {s['address']}, up {s['uptime_s']:.0f}s; heartbeat {s['heartbeat_s']:g}s, "
               f"dead after {s['heartbeat_timeout_s']:g}s; CURVE {'on' if s['curve'] else 'off'}")
    click.echo(f"queue: {doc['queue']['length']} waiting, {doc['running']} running; "
               f"slots {doc['busy']}/{doc['slots']} busy ({doc['utilization']:.0%})")
    for e in doc["executors"]:
        state = " draining" if e["draining"] else ""
        waiting = f" (+{e['waiting']} waiting)" if e["waiting"] else ""
        click.echo(f"  {e['id']}: {e['busy']}/{e['slots']} busy{waiting}, cost {e['cost']:g}/h, "
                   f"heartbeat {e['last_heartbeat_age_s']:.1f}s ago{state} - {e['summary']}")
    if not doc["executors"]:
        click.echo("  no executor registered")


# -- executor ----------------------------------------------------------------------------------------


@click.command("executor")
@click.option("--scheduler", "address", metavar="ADDR", default=None,
              help="The scheduler to register with, tcp://HOST:PORT (default: remote_execution.scheduler).")
@click.option("--slots", type=click.IntRange(min=1), default=None,
              help="Actions run at once (default: one per CPU).")
@click.option("--tags", default=None, metavar="T,...",
              help="Comma-separated tags added to the detected capabilities (matched by requires['tags'] "
                   "and by key=value requirements, e.g. pool=nightly).")
@click.option("--cost", type=float, default=None, metavar="C",
              help="Cost per hour (default: hardware.costs for this machine's class, else cpu 1, gpu 10).")
@click.option("--class", "cost_class", default=None, metavar="NAME",
              help="Executor class whose hardware.costs price applies.")
@click.option("--id", "executor_id", default=None, metavar="NAME",
              help="Name in the scheduler's status and in build reports (default: HOST-PID).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Its store (shareable by the executors of one machine) and, under run/ID, its scratch "
                   "space (default: executor/ beside the local store).")
@_curve_options
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
def executor(address: str | None, slots: int | None, tags: str | None, cost: float | None, cost_class: str | None,
             executor_id: str | None, state_dir: Path | None, curve_secret: Path | None, server_key: Path | None,
             log_level: str) -> None:
    """Run actions for a scheduler: detect this machine's capabilities, register, and serve.

    Each action runs exactly as in a local build: a fresh sandbox holding only its
    declared inputs (fetched by digest, only those this executor does not already
    have), the same environment and timeout. Outputs must be regular files inside the
    exec root. The executor heartbeats, and reconnects on its own when the scheduler
    restarts. SIGTERM drains: running actions finish, nothing new is taken, then it
    leaves; a second SIGTERM stops at once.

    \b
    Examples:
      ciopt executor --scheduler tcp://ci-scheduler:5555
      ciopt executor --scheduler tcp://ci-scheduler:5555 --slots 4 --tags cuda12 --cost 3.2
      ciopt executor --scheduler tcp://ci-scheduler:5555 --curve-secret keys/runner1.key_secret \\
          --server-key keys/scheduler.key
    Exit: 0 after a drain, 2 bad options or a refused key.
    """
    cfg = _config()
    if address is None:
        address = cfg.remote_execution.scheduler if cfg is not None else None
        if not address:
            fail("--scheduler ADDR is required (or set remote_execution.scheduler)")
    _check_address("--scheduler", address)
    if cost is not None and (cost < 0 or not math.isfinite(cost)):
        fail(f"--cost: expected a number >= 0, got {cost:g}")
    from ciopt.cli.hardware import _split_tags
    from ciopt.hardware import detect_capabilities
    from ciopt.remote.executor import ExecutorDaemon, ExecutorOptions
    from ciopt.store_location import default_store_path

    security = _client_security(curve_secret, server_key)
    costs = dict(cfg.hardware.costs) if cfg is not None and cost is None else None
    from ciopt.exec.python_env import host_interpreters

    state = state_dir or (default_store_path() / "executor")
    # The interpreters this host offers, advertised as tags: a py_test needing Python 3.12 is only
    # assigned where `python=3.12` is, and fails at once, naming the pool, when no executor has it.
    pythons = host_interpreters(Path.cwd(), state)
    extra = [f"python={v}" for v in pythons]
    caps = detect_capabilities([*_split_tags(tags), *extra], cost=cost, costs=costs or None, cost_class=cost_class)
    eid = executor_id or f"{socket.gethostname()}-{os.getpid()}"
    if not eid or any(c.isspace() for c in eid):
        fail(f"--id {eid!r}: expected a name without spaces")
    rx = cfg.remote_execution if cfg is not None else None
    _logging(log_level)
    opts = ExecutorOptions(
        scheduler=address, state_dir=state, caps=caps,
        slots=slots or caps.cpus, id=eid, security=security, pythons=pythons,
        heartbeat_s=rx.heartbeat_s if rx else 5.0, heartbeat_timeout_s=rx.heartbeat_timeout_s if rx else 30.0,
    )
    logging.getLogger("ciopt.remote.executor").info("executor %s: %d slots, %s", eid, opts.slots, caps.summary())
    daemon = ExecutorDaemon(opts)
    code = daemon.run()
    if daemon.fatal is not None:
        fail(daemon.fatal)
    exit_with(code)


# -- keygen ------------------------------------------------------------------------------------------


@click.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Base name of the key files (default: this host's name).")
@click.option("--force", is_flag=True, help="Replace existing key files of that name.")
@output_option
def keygen(directory: Path, name: str | None, force: bool, output: str) -> None:
    """Create a CurveZMQ key pair in DIRECTORY: NAME.key (public) and NAME.key_secret (mode 0600).

    Give every party its own pair. The scheduler runs with its .key_secret and an
    --allow directory holding the public .key of each executor and client it admits;
    executors and clients run with their own .key_secret and the scheduler's .key.

    \b
    Example, on one machine for a start:
      ciopt keygen keys --name scheduler
      ciopt keygen keys --name runner1 && ciopt keygen keys --name ci
      mkdir -p keys/allowed && cp keys/runner1.key keys/ci.key keys/allowed/
      ciopt scheduler --bind tcp://0.0.0.0:5555 --curve-secret keys/scheduler.key_secret --allow keys/allowed
      ciopt executor --scheduler tcp://HOST:5555 --curve-secret keys/runner1.key_secret --server-key keys/scheduler.key
      CIOPT_CURVE_SECRET=keys/ci.key_secret CIOPT_SERVER_KEY=keys/scheduler.key ciopt build //... --remote tcp://HOST:5555
    """
    from ciopt.remote.auth import keygen as make_keys
    from ciopt.remote.auth import load_keypair

    name = name or socket.gethostname()
    public_file, secret_file = make_keys(directory, name, force=force)
    public = load_keypair(public_file).public.decode()
    if output == "json":
        emit_json({"public_key_file": str(public_file), "secret_key_file": str(secret_file), "public_key": public})
        return
    click.echo(f"public key:  {public_file}  ({public})")
    click.echo(f"secret key:  {secret_file}  (keep it private)")
