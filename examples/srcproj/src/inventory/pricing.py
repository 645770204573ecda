from inventory.stock import Stock

VAT = 0.2


def stock_value(stock: Stock, with_vat: bool = False) -> float:
    total = sum(i.quantity * i.unit_price for i in stock.items.values())
    return round(total * (1 + VAT) if with_vat else total, 2)
