"""docs/ci-optimization-guide.md against the code, so the guide cannot drift from it.

* The configuration reference has one row per schema key of python/ciopt/config.py (no more,
  no fewer); each row's default, read by that key's own parser, equals the schema default;
  each row's type is a known type whose sample value the parser accepts and whose counter
  example it rejects.
* Every `ciopt COMMAND` the guide mentions exists, and every relative link (with its #anchor)
  points at a file and heading that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ciopt.cli import COMMANDS
from ciopt.config import _SCHEMA, _Invalid

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs/ci-optimization-guide.md"
ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]+?) \| `([^`]*)` \| (.+) \|$")

# Type as written in the guide -> (a YAML value the parser must accept, one it must reject).
TYPES: dict[str, tuple[str, str]] = {
    "bool": ("true", "1"),
    "string or null": ("some-name", "[a]"),
    "path or null": ("some/dir", "{a: 1}"),
    "size": ("5GiB", "lots"),
    "seconds > 0": ("2.5", "0"),
    "integer >= 0": ("0", "-1"),
    "integer >= 1": ("1", "0"),
    "integer >= 1 or null": ("null", "0"),
    "redis, http or null": ("http", "s3"),
    "fallback or fail": ("fail", "warn"),
    "URL, list of URLs, or null": ("[redis://a:6379/0, redis://b:6379/0]", "ftp://x"),
    "URL (tcp:// or ipc://) or null": ("tcp://host:5555", "http://host"),
    "list of globs": ('["*.md", docs/**]', "docs/**"),
    "list of directories or null": ("[src, .]", "[/abs]"),
    "mapping of executor class to cost per hour": ("{cpu: 1, gpu-a100: 3.2}", "{cpu: -1}"),
}


def _node(text: str) -> yaml.Node:
    return yaml.compose(text, Loader=yaml.SafeLoader)


def reference_rows() -> dict[str, tuple[str, str, str]]:
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str, str]] = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            key, type_, default, effect = m.groups()
            assert key not in rows, f"{key} has two rows"
            rows[key] = (type_.strip(), default, effect.strip())
    return rows


def test_every_schema_key_has_exactly_one_row() -> None:
    rows = reference_rows()
    assert sorted(set(_SCHEMA) - set(rows)) == [], "keys missing from the guide's configuration reference"
    assert sorted(set(rows) - set(_SCHEMA)) == [], "rows for keys the schema does not have"
    assert list(rows) == list(_SCHEMA), "rows should follow the schema's order (as `ciopt config show`)"


@pytest.mark.parametrize("key", list(_SCHEMA))
def test_row_default_and_type_match_the_schema(key: str) -> None:
    type_, default, effect = reference_rows()[key]
    spec = _SCHEMA[key]
    assert spec.parse(_node(default)) == spec.default, f"{key}: the guide says the default is {default}"
    assert type_ in TYPES, f"{key}: unknown type {type_!r}; add it to TYPES with a sample and a counter example"
    good, bad = TYPES[type_]
    spec.parse(_node(good))
    with pytest.raises(_Invalid):
        spec.parse(_node(bad))
    assert len(effect) > 20, f"{key}: say what the key does"


def _code(text: str) -> str:
    """The guide's code: fenced blocks and inline code spans (prose may say "ciopt" freely)."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(fenced + inline)


def test_mentioned_commands_exist() -> None:
    code = _code(GUIDE.read_text(encoding="utf-8"))
    # `ciopt` where a shell runs it: a line's start (after `run:` or VAR=value), after $( && || | ;
    command_start = r"(?:^\s*(?:run: )?(?:\w+=\S+ )*|\$\(|&& |\|\| |\| |; )"
    mentioned = set(re.findall(command_start + r"ciopt ([a-z][a-z-]*)", code, flags=re.M))
    assert sorted(mentioned - set(COMMANDS)) == []
    assert {"explain", "test", "affected", "cache", "ci", "dashboard", "analytics", "keygen"} <= mentioned


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_and_anchors_resolve() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    checked = 0
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (GUIDE.parent / path).resolve() if path else GUIDE
        assert target.exists(), f"{link}: no such file"
        if anchor:
            headings = re.findall(r"^#{1,6} (.+)$", target.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{link}: no such heading"
        checked += 1
    assert checked > 10
