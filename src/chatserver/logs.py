"""Logging that no client can turn into a flood, and log formats for twistd.

:class:`Throttle` lets through at most one event per kind per interval and
counts the rest, so whatever clients do, the log grows at a bounded rate.
Events carry only server-chosen text; anything a client chose is passed
through :func:`escape` first.

JSON lines for log shippers::

    twistd --logger chatserver.logs.json_observer -n chatserver ...
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, jsonFileLogObserver
from twisted.python.failure import Failure

#: Seconds between two events of one kind.
DEFAULT_INTERVAL = 10.0
#: Kinds remembered at once; past that the oldest are forgotten (kinds come
#: from server code, but may embed an action name a server defines).
MAX_KINDS = 1024
MAX_ESCAPED = 80


def escape(value: object, limit: int = MAX_ESCAPED) -> str:
    """A client-chosen value as log text: one line, printable ASCII, bounded."""
    text = value if isinstance(value, str) else repr(value)
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= limit else escaped[:limit] + "…"


class Throttle:
    """Logs at most one event of each kind per ``interval`` seconds; the next
    one that passes says how many were suppressed meanwhile."""

    def __init__(
        self, clock: IReactorTime, interval: float = DEFAULT_INTERVAL, logger: Logger | None = None
    ) -> None:
        self._clock = clock
        self.interval = interval
        self.log = logger or Logger(namespace="chatserver")
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _admit(self, kind: str) -> int | None:
        """The number suppressed since the last event of ``kind``, or None
        if this one must be suppressed too."""
        now = self._clock.seconds()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return None
        if last is None and len(self._last) >= MAX_KINDS:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._suppressed.pop(oldest, None)
        self._last.pop(kind, None)
        self._last[kind] = now
        return self._suppressed.pop(kind, 0)

    def _format(self, format: str, suppressed: int) -> str:
        if suppressed:
            return format + f" ({suppressed} similar suppressed)"
        return format

    def warn(self, kind: str, format: str, **kwargs: Any) -> None:
        suppressed = self._admit(kind)
        if suppressed is not None:
            self.log.warn(self._format(format, suppressed), **kwargs)

    def info(self, kind: str, format: str, **kwargs: Any) -> None:
        suppressed = self._admit(kind)
        if suppressed is not None:
            self.log.info(self._format(format, suppressed), **kwargs)

    def error(self, kind: str, format: str, **kwargs: Any) -> None:
        suppressed = self._admit(kind)
        if suppressed is not None:
            self.log.error(self._format(format, suppressed), **kwargs)

    def failure(
        self, kind: str, format: str, failure: Failure | None = None, **kwargs: Any
    ) -> None:
        """Log ``failure`` with its traceback, at most once per interval."""
        suppressed = self._admit(kind)
        if suppressed is not None:
            self.log.failure(self._format(format, suppressed), failure, **kwargs)


def json_observer() -> ILogObserver:
    """Twisted's own JSON-lines format (``twisted.logger.eventsFromJSONLogFile``
    reads it back)."""
    return jsonFileLogObserver(sys.stdout)
