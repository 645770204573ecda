#!/usr/bin/env python3
"""ci-hardware-detector.py ARGS... = `ciopt hardware ARGS...`: the capabilities an executor here would offer.

Kept for CI files that call the script by this name; every argument goes to ciopt unchanged.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import forward  # noqa: E402 (after the path insert)

if __name__ == "__main__":
    forward(Path(sys.argv[0]).name, ("hardware",), sys.argv[1:])
