import pytest


def test_add_accumulates(stock):
    stock.add("apple", 5, 0.6)
    assert stock.items["apple"].quantity == 15


def test_remove_more_than_held_fails(stock):
    with pytest.raises(ValueError, match="only 4"):
        stock.remove("pear", 5)
