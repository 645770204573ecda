"""The build graph: labels and patterns name targets; BUILD files declare them.

`ciopt.graph.build_file` (which needs the Starlark interpreter) is imported on
its own, so that code which only handles labels does not load it.
"""

from ciopt.graph.label import Label
from ciopt.graph.pattern import Pattern, PatternKind

__all__ = ["Label", "Pattern", "PatternKind"]
