"""Dependency inference: imports read from source, resolved to workspace files."""
