"""`python -m ciopt` is the `ciopt` command."""

import sys

from ciopt.cli import main

sys.exit(main())
