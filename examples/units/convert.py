"""Length conversion over the generated factor table."""

from geometry import Rectangle
from units.table import METRES_PER_UNIT


def convert(value: float, src: str, dst: str) -> float:
    try:
        return value * METRES_PER_UNIT[src] / METRES_PER_UNIT[dst]
    except KeyError as e:
        raise ValueError(f"unknown unit {e.args[0]!r}") from None


def square_area(side: float, unit: str) -> float:
    """Area in square metres of a square whose side is given in `unit`."""
    metres = convert(side, unit, "m")
    return Rectangle(metres, metres).area()
