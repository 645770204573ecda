from geometry.shapes import Circle, Rectangle

__all__ = ["Circle", "Rectangle"]
