"""`ciopt cache serve`: the embedded team cache (HTTP, bazel-remote layout) over a local store."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import click

from ciopt.cli.errors import fail

DEFAULT_GC_INTERVAL_S = 60.0


@click.command("serve")
@click.option("--bind", required=True, metavar="HOST:PORT",
              help="Where to listen: 127.0.0.1:8080 (this machine only), 0.0.0.0:8080 (every interface), "
                   "[::1]:8080; port 0 picks a free port (printed at start).")
@click.option("--store", "store_path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Store directory to serve (default: serve/ beside the local store, "
                   "i.e. $CIOPT_CACHE_DIR/serve).")
@click.option("--digest", type=click.Choice(["blake3", "sha256"]), default=None,
              help="Digest function: sha256 for Bazel clients, blake3 for ciopt alone (default: the "
                   "existing store's, blake3 for a new store). An existing store must match.")
@click.option("--max-size", default=None, metavar="SIZE",
              help="Cap on blob bytes; least recently used blobs are evicted after writes "
                   "(default: cache.local.max_size, 20GiB).")
@click.option("--read-token-env", metavar="NAME", default=None,
              help="Environment variable holding the token that may read (GET/HEAD). Needs --write-token-env.")
@click.option("--write-token-env", metavar="NAME", default=None,
              help="Environment variable holding the token that may read and write (PUT). "
                   "Alone, it leaves reads open to anyone who can connect.")
@click.option("--gc-interval", "gc_interval_s", type=float, default=DEFAULT_GC_INTERVAL_S, show_default=True,
              metavar="S", help="Seconds between checks of the size cap after writes "
                                "(a burst of a tenth of the cap checks at once).")
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
def serve(bind: str, store_path: Path | None, digest: str | None, max_size: str | None,
          read_token_env: str | None, write_token_env: str | None, gc_interval_s: float,
          access_log: bool) -> None:
    """Serve a store over HTTP to Bazel and to other ciopt runners.

    Speaks the bazel-remote layout: GET/HEAD/PUT /ac/<hex> and /cas/<hex>, plus GET /status
    (JSON figures). Every uploaded blob is hashed before it is stored; one whose bytes do not
    match its name is refused with 400. Tokens are read from the environment variables named,
    never from the command line (which `ps` shows); clients send them as
    `Authorization: Bearer TOKEN` or as the password of basic auth. Stop with Ctrl-C or SIGTERM.

    \b
    Examples:
      ciopt cache serve --bind 127.0.0.1:8080
      ciopt cache serve --bind 0.0.0.0:8080 --store /srv/ciopt-cache --digest sha256 --max-size 200GiB \\
          --read-token-env CACHE_READ_TOKEN --write-token-env CACHE_WRITE_TOKEN
      curl -s http://127.0.0.1:8080/status
    \b
    Clients:
      ciopt:  cache.remote.url: http://cache.internal:8080 in config/ci-optimization.yaml,
              the token in $CIOPT_CACHE_TOKEN
      Bazel:  bazel build //... --remote_cache=http://cache.internal:8080 (a --digest sha256 store)
              --remote_header=Authorization="Bearer $TOKEN" when tokens are on
    """
    from ciopt import Store
    from ciopt.cache.server import CacheServer, Tokens
    from ciopt.size import format_size, parse_size

    host, port = parse_bind(bind)
    if not math.isfinite(gc_interval_s) or gc_interval_s <= 0:
        fail(f"--gc-interval: expected a number of seconds > 0, got {gc_interval_s:g}")
    tokens = Tokens(read=_token("--read-token-env", read_token_env),
                    write=_token("--write-token-env", write_token_env))
    if tokens.read is not None and tokens.write is None:
        fail("--read-token-env needs --write-token-env too: without a write token anyone could write")
    if tokens.read is not None and tokens.read == tokens.write:
        fail("--read-token-env and --write-token-env hold the same token: a reader could write")

    cfg = _config()
    if max_size is not None:
        try:
            cap = parse_size(max_size)
        except ValueError as e:
            fail(f"--max-size: {e}")
    else:
        cap = cfg.cache.local.max_size if cfg is not None else parse_size("20GiB")
    if cap <= 0:
        fail("--max-size: must be more than 0 bytes")
    if store_path is None:
        from ciopt.store_location import default_store_path

        store_path = (cfg.cache.local.path if cfg is not None else default_store_path()) / "serve"

    _logging(access_log)
    store = Store(store_path, digest=digest, max_size=cap)  # type: ignore[arg-type]
    try:
        server = CacheServer(store, host, port, max_size=cap, tokens=tokens, gc_interval_s=gc_interval_s,
                             access_log=access_log)
    except OSError as e:
        fail(f"cannot listen on {bind}: {e.strerror or e}")

    def stop(signum: int, frame: Any) -> None:
        # serve_forever runs on this thread; shutdown() waits for it, so it must run elsewhere.
        threading.Thread(target=server.shutdown, daemon=True).start()

    # Before the address is printed: whoever reads it may stop us at once.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if tokens.read is None and tokens.write is None and not _is_loopback(host):
        click.echo(f"ciopt: warning: serving on {bind} without tokens: anyone who can reach it can read and "
                   "write the cache (set --write-token-env, and --read-token-env for private code)", err=True)
    # The first stdout line is the address, so that scripts and tests can bind port 0.
    click.echo(f"serving {server.url}")
    click.echo(f"  store {store.path} ({store.digest_function}), size cap {format_size(cap)}; "
               f"auth: {tokens.describe()}", err=True)
    sys.stdout.flush()

    server.serve_forever()
    click.echo("ciopt cache serve: stopped", err=True)


def parse_bind(bind: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port); a one-line usage error otherwise."""
    host, sep, port_text = bind.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # a bare IPv6 address: its port would be ambiguous
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        fail(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080")
    return host, int(port_text)


def _token(option: str, env_name: str | None) -> str | None:
    if env_name is None:
        return None
    value = os.environ.get(env_name, "")
    if not value.strip():
        fail(f"{option} {env_name}: that environment variable is not set or empty")
    return value.strip()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _config() -> Any:
    from ciopt.cli.config_here import config_here

    return config_here()


def _logging(access_log: bool) -> None:
    logging.basicConfig(level=logging.INFO if access_log else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
