import math

import pytest

from units import convert, square_area


def test_feet_to_metres():
    assert math.isclose(convert(10, "ft", "m"), 3.048)


def test_square_area_in_cm():
    assert math.isclose(square_area(100, "cm"), 1.0)


def test_unknown_unit():
    with pytest.raises(ValueError, match="furlong"):
        convert(1, "furlong", "m")
