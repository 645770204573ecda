"""Shapes with areas in square metres."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rectangle:
    width_m: float
    height_m: float

    def area(self) -> float:
        return self.width_m * self.height_m


@dataclass(frozen=True)
class Circle:
    radius_m: float

    def area(self) -> float:
        return math.pi * self.radius_m**2
