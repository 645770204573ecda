from tabulate import tabulate  # the project's own dependency, installed in its .venv

from inventory.stock import Stock


def render(stock: Stock) -> str:
    rows = [(i.sku, i.quantity, f"{i.unit_price:.2f}") for i in sorted(stock.items.values(), key=lambda i: i.sku)]
    return tabulate(rows, headers=["sku", "qty", "price"])
