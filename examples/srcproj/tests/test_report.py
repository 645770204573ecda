from inventory.report import render


def test_render_has_a_row_per_item(stock):
    lines = render(stock).splitlines()
    assert lines[0].split() == ["sku", "qty", "price"]
    assert [l.split()[0] for l in lines[2:]] == ["apple", "pear"]
