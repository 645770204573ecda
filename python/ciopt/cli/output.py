"""`--output json|text`: machines get one JSON document on stdout, humans get text."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON document on stdout (messages go to stderr).",
)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")

