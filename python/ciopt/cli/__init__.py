"""The `ciopt` command line. One module per command group; this one wires them together.

Exit codes everywhere: 0 success, 1 build/test/integrity failure, 2 usage or configuration error.
"""

from __future__ import annotations

import sys

import click

from ciopt import __version__
from ciopt.cli.errors import run_guarded


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ciopt")
def cli() -> None:
    """ciopt: content-addressed builds, cached tests and affected-test selection for CI.

    \b
    Common commands:
      ciopt hash FILE...            BLAKE3/SHA-256 digests (b3sum/sha256sum compatible)
      ciopt cache stats             what the local store holds
      ciopt cache gc --max-size 5GiB
      ciopt cache verify            re-hash every blob, drop corrupt ones

    The store lives in $CIOPT_CACHE_DIR (default: $XDG_CACHE_HOME/ciopt).
    """


def _register() -> None:
    # Imported here so `ciopt --help` lists every command without a cycle at import time.
    from ciopt.cli.build import build, query, test
    from ciopt.cli.cache import cache
    from ciopt.cli.config import config
    from ciopt.cli.hash import hash_command

    for command in (build, test, query, hash_command, cache, config):
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> int:
    return run_guarded(cli, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
