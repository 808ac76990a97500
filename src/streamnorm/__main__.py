"""``python -m streamnorm``: the command line (see :mod:`streamnorm.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
