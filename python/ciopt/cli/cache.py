"""`ciopt cache`: inspect, bound and check the local Store."""

from __future__ import annotations

from pathlib import Path

import click

from ciopt import Store
from ciopt.cli.errors import EXIT_FAILURE, exit_with, fail
from ciopt.cli.output import emit_json, output_option
from ciopt.size import format_size, parse_size
from ciopt.store_location import default_store_path

store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Store directory (default: $CIOPT_CACHE_DIR, else $XDG_CACHE_HOME/ciopt).",
)


def open_store(store_path: Path | None, digest: str | None = None) -> Store:
    return Store(store_path or default_store_path(), digest=digest)


@click.group()
def cache() -> None:
    """Inspect and maintain the local store; serve it to a team; snapshot dependencies.

    \b
      ciopt cache stats              blobs, bytes, action results, stat entries, remote tier figures
      ciopt cache gc --max-size 5GiB evict least recently used blobs down to a cap
      ciopt cache verify             re-hash everything; corrupt blobs are removed (exit 1)
      ciopt cache ingest DIR         hash a tree and store its files (seeds a cache)
      ciopt cache serve --bind H:P   the team cache over HTTP (bazel-remote layout; Bazel can use it)
      ciopt cache save NAME DIR...   snapshot a venv / node_modules, keyed by --key-file lockfiles
      ciopt cache restore NAME DIR...  restore one: hit, partial (an older snapshot) or miss
    The shared (remote) cache is configured in config/ci-optimization.yaml: cache.remote.url.
    """


@cache.command()
@store_option
@output_option
def stats(store_path: Path | None, output: str) -> None:
    """Show what the store holds."""
    from ciopt.cache.tiered import history_summary

    s = open_store(store_path).stats()
    remote = history_summary(Path(s["path"]))
    if output == "json":
        emit_json({**dict(s), "remote": remote})
        return
    click.echo(f"store:           {s['path']}")
    click.echo(f"digest function: {s['digest_function']}")
    click.echo(f"blobs:           {s['blobs']} ({format_size(s['blob_bytes'])}; "
               f"{s['inline_blobs']} inline, {s['external_blobs']} as files)")
    click.echo(f"action results:  {s['action_results']}")
    click.echo(f"stat entries:    {s['stat_entries']}")
    click.echo(f"on disk:         {format_size(s['env_bytes'])}")
    if remote:
        rate = f"{remote['hit_rate']:.1%}" if remote["hit_rate"] is not None else "-"
        click.echo(f"remote tier:     {remote['backend']}, {remote['invocations']} invocations: {remote['hits']} hits, "
                   f"{remote['misses']} misses ({rate}), {format_size(int(remote['bytes_down']))} down, "
                   f"{format_size(int(remote['bytes_up']))} up, {remote['errors']} errors, "
                   f"{int(remote['verify_failures']) + int(remote['signature_failures'])} refused")
        click.echo(f"                 last lookup latency p50 {remote['last_lookup_ms_p50']} ms, "
                   f"p95 {remote['last_lookup_ms_p95']} ms, p99 {remote['last_lookup_ms_p99']} ms")


@cache.command()
@store_option
@click.option("--max-size", required=True, help="Cap for blob bytes, e.g. 5GiB or 500MB.")
@output_option
def gc(store_path: Path | None, max_size: str, output: str) -> None:
    """Evict least recently used blobs until the store fits under --max-size."""
    try:
        cap = parse_size(max_size)
    except ValueError as e:
        fail(f"--max-size: {e}")
    r = open_store(store_path).gc(cap)
    if output == "json":
        emit_json(dict(r) | {"max_size": cap})
        return
    click.echo(f"evicted {r['evicted']} blobs ({format_size(r['evicted_bytes'])}); "
               f"{format_size(r['remaining_bytes'])} remain under a cap of {format_size(cap)}; "
               f"{r['orphans_removed']} orphaned files removed")


@cache.command()
@store_option
@output_option
def verify(store_path: Path | None, output: str) -> None:
    """Re-hash every blob. Corrupt or missing blobs are reported, removed, and exit 1."""
    r = open_store(store_path).verify()
    bad = len(r["corrupt"]) + len(r["missing"])
    if output == "json":
        emit_json(dict(r) | {"ok": bad == 0})
    else:
        for d in r["corrupt"]:
            click.echo(f"corrupt (removed): {d}")
        for d in r["missing"]:
            click.echo(f"missing file (removed): {d}")
        click.echo(f"checked {r['checked']} blobs: "
                   + ("all intact" if bad == 0 else f"{bad} bad, removed from the store"), err=bad > 0)
    if bad:
        exit_with(EXIT_FAILURE)


@cache.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@store_option
@click.option("--digest", type=click.Choice(["blake3", "sha256"]), default=None,
              help="Digest function for a new store (an existing store keeps its own).")
@output_option
def ingest(root: Path, store_path: Path | None, digest: str | None, output: str) -> None:
    """Hash ROOT through the StatCache and store every file not stored yet.

    A second run over an unchanged tree reads no file and writes no blob.
    """
    s = open_store(store_path, digest)
    from ciopt.own_outputs import OwnOutputs

    tree = s.hash_tree(root, excludes=OwnOutputs.of(root, s.path).walk_excludes())
    entries = [e for e in tree.entries() if not e.is_symlink]
    missing = set(s.find_missing([e.digest for e in entries]))
    stored = 0
    stored_bytes = 0
    for e in entries:
        if e.digest in missing:
            s.put_file(root / e.path)
            missing.discard(e.digest)
            stored += 1
            stored_bytes += e.digest.size
    total_bytes = sum(e.digest.size for e in entries)
    doc = {
        "root": str(root),
        "tree": str(tree.digest),
        "files": len(entries),
        "bytes": total_bytes,
        "files_read": tree.files_read,
        "bytes_read": tree.bytes_read,
        "blobs_stored": stored,
        "bytes_stored": stored_bytes,
    }
    if output == "json":
        emit_json(doc)
        return
    click.echo(f"tree {tree.digest}: {len(entries)} files, {format_size(total_bytes)}")
    click.echo(f"  read {tree.files_read} files ({format_size(tree.bytes_read)}); "
               f"{len(entries) - tree.files_read} unchanged files skipped by the stat cache")
    click.echo(f"  stored {stored} new blobs ({format_size(stored_bytes)}); "
               f"{len(entries) - stored} already in the store")


# Dependency caching (directory snapshots) and the team cache server live in their own modules.
from ciopt.cli.cache_dirs import restore as _restore, save as _save  # noqa: E402
from ciopt.cli.cache_serve import serve as _serve  # noqa: E402

cache.add_command(_save)
cache.add_command(_restore)
cache.add_command(_serve)
