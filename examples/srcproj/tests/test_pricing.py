import pytest

from inventory.pricing import stock_value


def test_value(stock):
    assert stock_value(stock) == 8.0


def test_value_with_vat(stock):
    assert stock_value(stock, with_vat=True) == 9.6


@pytest.mark.slow
def test_many_items(stock):
    for n in range(1000):
        stock.add(f"sku{n}", 1, 1.0)
    assert stock_value(stock) == 1008.0
