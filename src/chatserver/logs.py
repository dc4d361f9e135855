"""Log formats for twistd's ``--logger`` option.

    twistd --logger chatserver.logs.json_observer -n chatserver ...

writes one JSON object per event on standard output, for log shippers.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """Twisted's own JSON-lines format (``twisted.logger.eventsFromJSONLogFile``
    reads it back)."""
    return jsonFileLogObserver(sys.stdout)
