"""Turning failures into one-line messages and exit codes, never tracebacks."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from ciopt import StoreError
from ciopt.errors import UserError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CioptUsageError(click.ClickException):
    """Bad input the user can fix: printed as one line, exit 2."""

    exit_code = EXIT_USAGE


def fail(message: str) -> NoReturn:
    raise CioptUsageError(message)


def _describe_os_error(err: OSError) -> str:
    if err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def run_guarded(command: click.Command, argv: list[str]) -> int:
    """Runs a click command; known errors become `ciopt: error: ...` on stderr."""
    try:
        # Without standalone mode click returns the code of a click.exceptions.Exit.
        rv = command.main(args=argv, prog_name="ciopt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("ciopt: interrupted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        if isinstance(e, click.UsageError) and e.ctx is not None:
            click.echo(e.ctx.get_usage(), err=True)
        click.echo(f"ciopt: error: {e.format_message()}", err=True)
        return e.exit_code
    except UserError as e:
        click.echo(f"ciopt: error: {e}", err=True)
        return EXIT_USAGE
    except StoreError as e:
        click.echo(f"ciopt: error: {e}", err=True)
        return EXIT_USAGE
    except BrokenPipeError:
        # `ciopt hash ... | head` is normal use, not an error.
        return EXIT_OK
    except OSError as e:
        click.echo(f"ciopt: error: {_describe_os_error(e)}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("ciopt: interrupted", err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug still gets one readable line, not a traceback
        if os.environ.get("CIOPT_DEBUG"):
            raise
        click.echo(f"ciopt: internal error: {type(e).__name__}: {e} (set CIOPT_DEBUG=1 for the traceback)", err=True)
        return EXIT_FAILURE
    return rv if isinstance(rv, int) else EXIT_OK


def exit_with(code: int) -> None:
    """Leave a command with `code` (click turns this into the process exit status)."""
    sys.stdout.flush()
    raise click.exceptions.Exit(code)
