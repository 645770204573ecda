#!/usr/bin/env python3
"""incremental-build-analyzer.py affected|graph ARGS... = `ciopt affected ARGS...` / `ciopt graph ARGS...`.

Kept for CI files that call the script by this name; every argument goes to ciopt unchanged.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import forward  # noqa: E402 (after the path insert)

if __name__ == "__main__":
    forward(Path(sys.argv[0]).name, ("affected", "graph"), sys.argv[1:])
