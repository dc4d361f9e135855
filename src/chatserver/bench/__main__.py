"""``python -m chatserver.bench``: see :mod:`chatserver.bench`."""

import sys

from chatserver.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
