from units.convert import convert, square_area

__all__ = ["convert", "square_area"]
