"""CI helpers: the base revision for test selection (GitHub Actions first, then plain git)."""
