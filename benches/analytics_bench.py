"""CI analytics benchmarks (issue 13): the dashboard and the report over a large team history,
and what pushing each record to the shared Redis adds to a build.

Run:  .venv/bin/python benches/analytics_bench.py [--invocations 10000] [--actions 200] [--repeat 3]
                                                  [--quick] [--only NAME] [--json FILE]
      .venv/bin/python benches/analytics_bench.py --screenshot docs/img/dashboard.png   (make dashboard-screenshot)

  dashboard_10k        `ciopt dashboard --out DIR` (a real process) over 10,000 invocations x 200
                       actions of records: wall time (goal <= 3 s) and the page's size (goal
                       <= 10 MB). Median of --repeat runs.
  report_10k           `ciopt analytics report --since all -o json` on the same records (goal
                       <= 1 s); `--since 7d` and `-o markdown` in the notes.
  push_overhead_redis  a real redis-server on 127.0.0.1. (a) The push itself: export one
                       200-action invocation from the records, compress, XADD over a kept
                       connection (publish.py's _take and _send_redis, as the build runs them
                       through its remote tier's backend), per invocation (goal <= 20 ms). (b) What it adds to a real build's wall time: a no-op
                       `ciopt build //...` of a 200-genrule workspace with analytics.enabled and
                       the Redis cache.remote.url, against the same with analytics.enabled false
                       (no push, its own store), alternating, --repeat x 10 pairs; the median difference.

Records (made once, kept in benches/.corpus/analytics/): a seeded generator lays 10,000
invocations over the last 60 days (half on main, the rest over 40 feature branches), each of
200 actions (100 genrules, 100 py_tests; 65% local hits, 12% shared-cache hits, 18% executed,
2% of keys failing, 4% of tests skipped as unaffected; 5 flaky tests; 10% of the invocations on remote
CPU/GPU executors), and merges them through exchange.merge, the path `ciopt analytics pull`
takes, so every derived figure (time split, time saved, executor busy time) is computed by
ciopt's own code. Generating takes about a minute. Goals are printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import CIOPT_CLI, REPO, Result, emit

sys.path.insert(0, str(REPO / "tests"))
from redis_server import RedisServer  # noqa: E402  (the test suite's real-server helper)

CORPUS = REPO / "benches" / ".corpus" / "analytics"
GENERATOR_VERSION = 2
DAYS = 60
BRANCHES = ["main"] * 40 + [f"feature/f{k}" for k in range(40)]
FLAKY = 5


# --- records ------------------------------------------------------------------------------------

def make_records(path: Path, invocations: int, actions: int, seed: int = 13) -> float:
    """Writes the synthetic history to `path`; returns the seconds it took."""
    from ciopt.analytics.exchange import merge

    rng = random.Random(seed)
    now = time.time()
    n_gen = actions // 2
    labels = [(f"//pkg{i % 20}:gen{i}", "Genrule") for i in range(n_gen)]
    labels += [(f"//pkg{i % 20}:test_{i}", "PyTest") for i in range(actions - n_gen)]
    base = {label: rng.lognormvariate(0.0, 1.2) for label, _ in labels}  # median 1 s, long tail
    flaky = {labels[n_gen + k][0] for k in range(FLAKY)}
    columns = ["label", "mnemonic", "key", "status", "executor", "started_at", "finished_at", "duration_s",
               "exit_code", "attempts", "test_outcome", "critical_path", "unaffected"]
    start = time.perf_counter()
    batch: list[dict] = []
    for n in range(invocations):
        t0 = now - DAYS * 86400 + (n + rng.random()) * DAYS * 86400 / invocations
        remote = rng.random() < 0.10
        loading = rng.uniform(0.3, 2.0)
        lanes = [t0 + loading] * 4
        rows = []
        epoch = n // 50  # inputs change every 50 invocations: keys change
        for label, mnemonic in labels:
            is_test = mnemonic == "PyTest"
            x = rng.random()
            key = hashlib.blake2b(f"{label}:{epoch}".encode(), digest_size=16).hexdigest()
            unaffected = 0
            if is_test and x < 0.04:
                rows.append([label, mnemonic, None, "skipped", None, None, None, None, None, 1, None, 0, 1])
                continue
            # A broken change fails its action for as long as its inputs stay the same (2% of keys).
            broken = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest(), "big") % 50 == 0
            if x < 0.04 + 0.65 and not broken:
                status, dur = "cached_local", rng.uniform(0.001, 0.01)
            elif x < 0.04 + 0.77 and not broken:
                status, dur = "cached_remote", rng.uniform(0.01, 0.1)
            elif not broken:
                status, dur = "executed", base[label] * rng.lognormvariate(0.0, 0.3)
            else:
                status, dur = "failed", base[label] * rng.lognormvariate(0.0, 0.3)
            outcome = None
            if is_test:
                outcome = "passed" if status != "failed" else "failed"
                if label in flaky and status == "executed" and rng.random() < 0.3:
                    outcome = "flaky"
                elif label in flaky and status == "executed" and rng.random() < 0.1:
                    status, outcome = "failed", "failed"  # same inputs, another result: a flip
            lane = min(range(4), key=lambda i: lanes[i])
            s = lanes[lane]
            lanes[lane] = s + dur
            if status in ("executed", "failed"):
                executor = (f"gpu-a100-{n % 2}" if is_test and n % 3 == 0 else f"cpu-{n % 4}") if remote \
                    else f"local:runner-{n % 8}"
            else:
                executor = None
            rows.append([label, mnemonic, key, status, executor, s, s + dur, dur, 1 if status == "failed" else 0,
                         2 if outcome == "flaky" else 1, outcome, 0, unaffected])
        ran = [r for r in rows if r[5] is not None]
        for r in sorted(ran, key=lambda r: -r[7])[:8]:  # the longest few stand for the critical path
            r[11] = 1
        end = max(lanes) + rng.uniform(0.05, 0.5)
        failed = any(r[3] == "failed" for r in rows)
        batch.append({"v": 1, "invocation": {
            "uuid": f"bench-{seed}-{n}", "command": "test", "patterns": ["//..."], "started_at": t0,
            "finished_at": end, "duration_s": end - t0, "exit_code": 1 if failed else 0, "workspace": "/ws",
            "hostname": f"runner-{n % 8}", "git_branch": rng.choice(BRANCHES),
            "git_commit": hashlib.sha1(str(n).encode()).hexdigest(), "ci": "github-actions", "jobs": 4,
            "remote": "tcp://scheduler:5555" if remote else None, "loading_s": loading},
            "actions": {"columns": columns, "rows": rows}})
        if len(batch) == 500:
            merge(path, batch, origin="bench")
            batch = []
    if batch:
        merge(path, batch, origin="bench")
    return time.perf_counter() - start


def records_for(invocations: int, actions: int) -> Path:
    """The corpus database for this size, made once."""
    tag = f"v{GENERATOR_VERSION}-{invocations}x{actions}"
    path = CORPUS / tag / "records.sqlite"
    if path.is_file():
        return path
    tmp = CORPUS / f"{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"generating {invocations:,} invocations x {actions} actions into {path} (once) ...", flush=True)
    took = make_records(tmp / "records.sqlite", invocations, actions)
    print(f"  generated in {took:.1f}s", flush=True)
    shutil.rmtree(path.parent, ignore_errors=True)
    tmp.rename(path.parent)
    return path


# --- running ciopt ------------------------------------------------------------------------------

def child_env(store: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIOPT_")}
    if store is not None:
        env["CIOPT_CACHE_DIR"] = str(store)
    return env


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise harness.ChildFailed(f"{' '.join(map(str, argv))} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return took, proc


class Cfg:
    def __init__(self, args: argparse.Namespace) -> None:
        self.invocations = 2000 if args.quick else args.invocations
        self.actions = args.actions
        self.repeat = harness.repetitions(args)
        self.scratch = Path(tempfile.mkdtemp(prefix="analytics-bench-", dir=CORPUS.parent))


def bench_dashboard(cfg: Cfg, results: list[Result]) -> None:
    records = records_for(cfg.invocations, cfg.actions)
    out = cfg.scratch / "dashboard"
    times = []
    for _ in range(cfg.repeat):
        t, _ = timed([str(CIOPT_CLI), "dashboard", "--records", str(records), "--out", str(out)], cfg.scratch,
                     child_env())
        times.append(t)
    size = (out / "index.html").stat().st_size
    med = statistics.median(times)
    r = Result(f"dashboard_{cfg.invocations // 1000}k", "", "goal <= 3 s and <= 10 MB",
               summary=f"{med:.2f} s (median of {len(times)}), page {size / 1e6:.2f} MB",
               notes={"samples_s": harness.fmt_samples(times), "records": f"{cfg.invocations:,} invocations x "
                      f"{cfg.actions} actions, {records.stat().st_size / 1e6:.0f} MB of SQLite",
                      "command": "ciopt dashboard --records RECORDS --out DIR"},
               extra={"seconds": med, "bytes": size, "met": med <= 3.0 and size <= 10_000_000})
    emit(r, results)


def bench_report(cfg: Cfg, results: list[Result]) -> None:
    records = records_for(cfg.invocations, cfg.actions)
    base = [str(CIOPT_CLI), "analytics", "report", "--records", str(records)]
    samples: dict[str, list[float]] = {"all": [], "7d": [], "markdown": []}
    for _ in range(cfg.repeat):
        samples["all"].append(timed([*base, "--since", "all", "-o", "json"], cfg.scratch, child_env())[0])
        samples["7d"].append(timed([*base, "--since", "7d", "-o", "json"], cfg.scratch, child_env())[0])
        samples["markdown"].append(timed([*base, "--since", "all", "-o", "markdown"], cfg.scratch, child_env())[0])
    med = {k: statistics.median(v) for k, v in samples.items()}
    r = Result(f"report_{cfg.invocations // 1000}k", "", "goal <= 1 s",
               summary=f"{med['all']:.2f} s for --since all (median of {cfg.repeat})",
               notes={"samples_s": harness.fmt_samples(samples["all"]),
                      "--since 7d": f"{med['7d']:.2f} s", "-o markdown --since all": f"{med['markdown']:.2f} s"},
               extra={"seconds": med["all"], "seconds_7d": med["7d"], "seconds_markdown": med["markdown"],
                      "met": med["all"] <= 1.0})
    emit(r, results)


def bench_push(cfg: Cfg, results: list[Result]) -> None:
    from ciopt.analytics import publish
    from ciopt.analytics import records as records_db
    from ciopt.analytics.stream import RecordStream
    from ciopt.cache.redis_backend import RedisBackend

    if shutil.which("redis-server") is None:
        emit(Result("push_overhead_redis", "", "", skipped="redis-server is not installed"), results)
        return
    server = RedisServer(Path(tempfile.mkdtemp(prefix="ciopt-redis-", dir="/tmp")), ())
    server.start()
    try:
        # (a) the push of one 200-action record, as the build does it at its end.
        records = cfg.scratch / "push" / "records.sqlite"
        records.parent.mkdir(parents=True)
        make_records(records, 200, cfg.actions, seed=99)
        import sqlite3

        with sqlite3.connect(records) as db:
            ids = [r[0] for r in db.execute("SELECT id FROM invocations ORDER BY id")]
            db.execute("UPDATE invocations SET pushed_at = 0")  # measure one record per push, no catch-up
        per = []
        # Over one kept connection, as the build pushes through its remote tier's backend.
        backend = RedisBackend(server.url, 1.0)
        backend.get_action("0" * 64)  # the build's lookups opened it
        try:
            for i in ids:
                t = time.perf_counter()
                db = records_db._connect(records, create=False)
                try:
                    docs = publish._take(db, i, None, 0)
                finally:
                    db.close()
                publish._send_redis(backend, docs, 1.0, None)
                per.append(time.perf_counter() - t)
        finally:
            backend.close()
        stream = RecordStream(server.url, 1.0)
        pushed = stream.length()
        stream.close()
        per_ms = sorted(x * 1000 for x in per)
        p50 = statistics.median(per_ms)

        # (b) a real no-op build, with and without the push.
        added = _build_overhead(cfg, server.url)
        r = Result("push_overhead_redis", "", "goal <= 20 ms per invocation",
                   summary=f"push {p50:.2f} ms per 200-action invocation (p50 of {len(per)}; p95 "
                           f"{per_ms[int(0.95 * len(per_ms)) - 1]:.2f} ms); added to a no-op build's wall time: "
                           f"{added['median_ms']:+.1f} ms (median of {added['pairs']} pairs)",
                   notes={"stream entries": pushed,
                          "no-op build without push (median)": f"{added['without_ms']:.0f} ms",
                          "no-op build with push (median)": f"{added['with_ms']:.0f} ms"},
                   extra={"push_ms_p50": p50, "push_ms_p95": per_ms[int(0.95 * len(per_ms)) - 1],
                          "added_ms_median": added["median_ms"],
                          # The goal is what a build pays: the wall time the push adds to it.
                          "met": added["median_ms"] <= 20.0})
        emit(r, results)
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def _build_overhead(cfg: Cfg, redis_url: str) -> dict[str, float]:
    ws = cfg.scratch / "ws"
    for i in range(200):
        pkg = ws / f"p{i % 20}"
        pkg.mkdir(parents=True, exist_ok=True)
        with open(pkg / "BUILD", "a") as f:
            f.write(f'genrule(name = "g{i}", outs = ["g{i}.txt"], cmd = "echo {i} > $@")\n')
    config = ("enabled: true\ncache:\n  remote:\n    url: {url}\nanalytics:\n  enabled: {on}\n")
    (ws / "config").mkdir()
    # A store (and records) for each side: the builds without the push leave records unpushed,
    # which the next build with it would take along (catch-up), and so seem to cost more.
    envs = {on: child_env(cfg.scratch / f"build-store-{on}") for on in (True, False)}
    cmd = [str(CIOPT_CLI), "build", "//...", "-j2"]

    def run(on: bool) -> float:
        (ws / "config" / "ci-optimization.yaml").write_text(config.format(url=redis_url, on=str(on).lower()))
        return timed(cmd, ws, envs[on])[0]

    run(False)  # cold build: fills its store and the shared cache
    run(True)  # fills the other store from the shared cache
    with_t, without_t, diffs = [], [], []
    for k in range(cfg.repeat * 10):
        order = (True, False) if k % 2 == 0 else (False, True)
        got = {on: run(on) for on in order}
        with_t.append(got[True])
        without_t.append(got[False])
        diffs.append(got[True] - got[False])
    return {"pairs": len(diffs), "median_ms": statistics.median(diffs) * 1000,
            "with_ms": statistics.median(with_t) * 1000, "without_ms": statistics.median(without_t) * 1000}


BENCHES = {"dashboard": bench_dashboard, "report": bench_report, "push_overhead_redis": bench_push}


def screenshot(dest: Path, invocations: int = 600) -> None:
    """docs/img/dashboard.png: the dashboard of a generated 60-day history (and the imported
    fixture history as its baseline), as headless Chromium shows it."""
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="analytics-shot-", dir=CORPUS.parent))
    try:
        records = work / "records.sqlite"
        make_records(records, invocations, 200, seed=21)
        fixtures = REPO / "tests" / "fixtures" / "analytics"
        timed([str(CIOPT_CLI), "analytics", "import", "--records", str(records),
               *map(str, sorted(fixtures.glob("junit-*.xml"))), str(fixtures / "gha-runs-before-ciopt.json"),
               str(fixtures / "gha-jobs-8101002002.json")], work, child_env())
        timed([str(CIOPT_CLI), "dashboard", "--records", str(records), "--out", str(work / "site")], work,
              child_env())
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto((work / "site" / "index.html").as_uri())
            page.wait_for_selector("body[data-ready=true]")
            dest.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(dest), full_page=True)
            browser.close()
        print(f"wrote {dest}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--invocations", type=int, default=10_000)
    ap.add_argument("--actions", type=int, default=200)
    ap.add_argument("--screenshot", type=Path, metavar="PNG",
                    help="instead of benchmarking, write a screenshot of the dashboard (make dashboard-screenshot)")
    harness.add_common_args(ap, BENCHES, quick_help="2,000 invocations and 2 repetitions")
    ap.set_defaults(repeat=3)
    args = ap.parse_args()
    if args.screenshot:
        screenshot(args.screenshot)
        return 0
    cfg = Cfg(args)
    machine = {**harness.machine_basics(), "redis": harness.tool_version(["redis-server", "--version"])}
    harness.print_machine(machine)
    try:
        results = harness.run_benches(BENCHES, harness.select(BENCHES, args.only), cfg)
    finally:
        shutil.rmtree(cfg.scratch, ignore_errors=True)
    return harness.finish(args.json, machine, results)


if __name__ == "__main__":
    sys.exit(main())
