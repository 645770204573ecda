import math

from geometry import Circle, Rectangle


def test_rectangle_area():
    assert Rectangle(2.0, 3.0).area() == 6.0


def test_circle_area():
    assert math.isclose(Circle(1.0).area(), math.pi)
