from dataclasses import dataclass


@dataclass
class Item:
    sku: str
    quantity: int
    unit_price: float


class Stock:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add(self, sku: str, quantity: int, unit_price: float) -> None:
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        item = self.items.get(sku)
        if item is None:
            self.items[sku] = Item(sku, quantity, unit_price)
        else:
            item.quantity += quantity
            item.unit_price = unit_price

    def remove(self, sku: str, quantity: int) -> None:
        item = self.items[sku]
        if quantity > item.quantity:
            raise ValueError(f"only {item.quantity} of {sku} in stock")
        item.quantity -= quantity
