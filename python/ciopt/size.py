"""Byte sizes as people write them in config and on the command line ("20GiB").

Binary units (KiB..TiB) and decimal units (KB..TB) are both accepted because
both appear in the wild and silently reading "20GB" as GiB would be a 7% lie.
Bare single letters ("20G") are refused for the same reason: ambiguous.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["parse_size", "format_size"]

_UNITS: dict[str, int] = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")
_BINARY = ("TiB", "GiB", "MiB", "KiB")
_DECIMAL = ("TB", "GB", "MB", "KB")


def parse_size(text: str | int) -> int:
    """Bytes in `text`: "20GiB", "1.5 GB", "512" or a plain int. Fractions of a byte round down."""
    if isinstance(text, bool):  # bool is an int; True bytes is surely a mistake
        raise ValueError(f"invalid size {text!r}: expected a number of bytes or a string like '20GiB'")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must not be negative")
        return text
    if not isinstance(text, str):
        raise ValueError(f"invalid size {text!r}: expected a number of bytes or a string like '20GiB'")
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"invalid size {text!r}: expected a number and a unit, like '20GiB' or '500MB'")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower() if unit else "b")
    if factor is None:
        raise ValueError(f"invalid size {text!r}: unknown unit {unit!r}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    try:
        return int(Decimal(number) * factor)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"invalid size {text!r}: not a number") from None


def format_size(n: int) -> str:
    """`n` bytes for people: exact when a unit divides it ("20GiB", "500MB"), else "1.5KiB"."""
    if n < 0:
        return "-" + format_size(-n)
    # Exact first, so `config show` prints back what the user wrote.
    for units in (_BINARY, _DECIMAL):
        for unit in units:
            factor = _UNITS[unit.lower()]
            if n >= factor and n % factor == 0:
                return f"{n // factor}{unit}"
    for unit in _BINARY:
        factor = _UNITS[unit.lower()]
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"
