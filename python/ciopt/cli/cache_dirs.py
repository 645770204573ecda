"""`ciopt cache save` / `ciopt cache restore`: content-addressed directory snapshots."""

from __future__ import annotations

from pathlib import Path

import click

from ciopt.cli.output import emit_json, output_option

_key_files = click.option("--key-file", "key_files", multiple=True, type=click.Path(path_type=Path),
                          help="A file whose content keys the snapshot (lockfiles); repeat for several.")


def _tiers() -> tuple[object, object]:
    """(local store, remote tier or None), from the workspace's configuration."""
    from ciopt.workspace import Workspace

    ws = Workspace(Path.cwd())
    if ws.store is None:
        from ciopt.errors import UserError

        raise UserError("the emergency bypass is on (CIOPT_DISABLE): no cache is read or written")
    return ws.store, ws.open_remote_tier(None)


def _print(report: object, output: str, verb: str) -> None:
    doc = report.to_json()  # type: ignore[attr-defined]
    if output == "json":
        emit_json(doc)
        return
    from ciopt.size import format_size

    click.echo(f"{verb} {doc['name']}: {doc['result']}"
               + (f" (from {doc['matched_name']})" if doc["result"] == "partial" else "")
               + f": {doc['files']} files, {format_size(int(doc['bytes_total']))}; "
               f"written {doc['files_written']}, removed {doc['files_removed']}, "
               f"downloaded {format_size(int(doc['bytes_downloaded']))}, uploaded {format_size(int(doc['bytes_uploaded']))} "
               f"in {doc['duration_s']}s", err=True)
    for note in doc["notes"]:
        click.echo(f"note: {note}", err=True)


@click.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_key_files
@output_option
def save(name: str, paths: tuple[Path, ...], key_files: tuple[Path, ...], output: str) -> None:
    """Snapshot directories (a venv, node_modules) under NAME + the key files' digests.

    Files are stored by content, locally and in the remote cache (cache.remote.url): saving
    a venv with one package bumped uploads that package, not the whole venv.

    \b
    Examples:
      ciopt cache save venv .venv --key-file requirements.txt --key-file pyproject.toml
      ciopt cache save node-modules node_modules --key-file package-lock.json -o json
    """
    from ciopt.cache.dirs import save as save_snapshot

    store, remote = _tiers()
    try:
        report = save_snapshot(store, remote, name, list(paths), list(key_files))  # type: ignore[arg-type]
    finally:
        if remote is not None:
            remote.close()  # type: ignore[attr-defined]
    _print(report, output, "saved")


@click.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_key_files
@click.option("--restore-prefix", "prefixes", multiple=True,
              help="On a miss, restore the newest snapshot whose name starts with this (like restore-keys).")
@output_option
def restore(name: str, paths: tuple[Path, ...], key_files: tuple[Path, ...], prefixes: tuple[str, ...],
            output: str) -> None:
    """Restore directories saved with `ciopt cache save`: hit, partial (an older snapshot of
    NAME or of a --restore-prefix), or miss (exit 0 in every case: a miss is not an error).

    Only blobs missing locally are downloaded, only files that differ are rewritten, and
    files not in the snapshot are removed from the restored paths.

    \b
    Examples:
      ciopt cache restore venv .venv --key-file requirements.txt || true
      ciopt cache restore venv .venv --key-file requirements.txt -o json | jq -r .result
    """
    from ciopt.cache.dirs import restore as restore_snapshot

    store, remote = _tiers()
    try:
        report = restore_snapshot(store, remote, name, list(paths), list(key_files), list(prefixes))  # type: ignore[arg-type]
    finally:
        if remote is not None:
            remote.close()  # type: ignore[attr-defined]
    _print(report, output, "restored")
