"""The one job of the classic entry points in this directory: hand argv to the `ciopt` CLI.

A script named for one ciopt command prepends it; one named for two takes the first word as the
command. ciopt comes from this interpreter when it can import it, else from `ciopt` on PATH (a
`pipx install`, where the system python3 cannot import it). Nothing else happens here: every
option, message and exit code is ciopt's own.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import NoReturn


def _ciopt(argv: list[str]) -> NoReturn:
    try:
        from ciopt.cli import main
    except ImportError:
        exe = shutil.which("ciopt")
        if exe is None:
            sys.stderr.write("error: ciopt is not installed here (pipx install ciopt, or pip install ciopt)\n")
            sys.exit(2)
        os.execv(exe, [exe, *argv])
    sys.exit(main(argv))


def forward(script: str, commands: tuple[str, ...], argv: list[str]) -> NoReturn:
    """Runs `ciopt COMMAND ARGV...`: COMMAND is commands[0] for a one-command script, else
    argv[0], which must be one of `commands`."""
    if len(commands) == 1:
        _ciopt([commands[0], *argv])
    if argv and argv[0] in commands:
        _ciopt(argv)
    if not argv or argv[0] in ("-h", "--help"):
        names = "|".join(commands)
        out = sys.stdout if argv else sys.stderr  # no arguments is a usage error
        out.write(f"usage: {script} {{{names}}} [ARGS]...\n\n"
                         f"The classic name for {' and '.join(f'`ciopt {c}`' for c in commands)}: every argument "
                         "goes to ciopt unchanged.\n"
                         + "".join(f"  {script} {c} --help\n" for c in commands))
        sys.exit(0 if argv else 2)
    sys.stderr.write(f"{script}: error: the first argument must be one of {', '.join(commands)}, got {argv[0]!r} "
                     f"(see {script} --help)\n")
    sys.exit(2)
