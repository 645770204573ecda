import pytest

from inventory.stock import Stock


@pytest.fixture
def stock() -> Stock:
    s = Stock()
    s.add("apple", 10, 0.5)
    s.add("pear", 4, 0.75)
    return s
