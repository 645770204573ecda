"""A tiny stock-keeping library: the demo project for `make demo`."""
