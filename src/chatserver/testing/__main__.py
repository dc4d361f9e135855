"""``python -m chatserver.testing module:Factory``: see :mod:`chatserver.testing.runner`."""

import sys

from chatserver.testing.runner import main

sys.exit(main())
