"""The `ciopt` command line. One module per command group; this one wires them together.

Exit codes everywhere: 0 success, 1 build/test/integrity failure, 2 usage or configuration error.
"""

from __future__ import annotations

import importlib
import sys

import click

from ciopt import __version__
from ciopt.cli.errors import run_guarded


# Command name -> "module:attribute". Modules load only when their command runs, so
# `ciopt build` does not pay for importing the scheduler, the hardware probes, etc.
COMMANDS: dict[str, str] = {
    "build": "ciopt.cli.build:build",
    "test": "ciopt.cli.build:test",
    "query": "ciopt.cli.build:query",
    "hash": "ciopt.cli.hash:hash_command",
    "cache": "ciopt.cli.cache:cache",
    "config": "ciopt.cli.config:config",
    "hardware": "ciopt.cli.hardware:hardware",
    "scheduler": "ciopt.cli.remote:scheduler",
    "executor": "ciopt.cli.remote:executor",
    "keygen": "ciopt.cli.remote:keygen",
    "affected": "ciopt.cli.affected:affected",
    "graph": "ciopt.cli.affected:graph",
    "tailor": "ciopt.cli.tailor:tailor",
    "analytics": "ciopt.cli.analytics:analytics",
    "dashboard": "ciopt.cli.dashboard:dashboard",
    "ci": "ciopt.cli.ci:ci",
    "explain": "ciopt.cli.explain:explain",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ciopt")
def cli() -> None:
    """ciopt: content-addressed builds, cached tests and affected-test selection for CI.

    \b
    Common commands:
      ciopt build //...             build everything; unchanged actions come from the cache
      ciopt test //... --junit r.xml   run tests; passed tests with unchanged inputs are not re-run
      ciopt query 'rdeps(//..., //lib:core)'
      ciopt hash FILE...            BLAKE3/SHA-256 digests (b3sum/sha256sum compatible)
      ciopt cache stats|gc|verify   the local store
      ciopt config show             effective configuration and where each value came from

    The store lives in $CIOPT_CACHE_DIR (default: $XDG_CACHE_HOME/ciopt).
    """


def main(argv: list[str] | None = None) -> int:
    return run_guarded(cli, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
