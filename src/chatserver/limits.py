"""The limits a public server needs, in one place, with their defaults, and
the small mechanisms that enforce them."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Every limit the server enforces. Zero turns a limit off.

    :ivar max_frame_bytes: the largest WebSocket message a client may send;
        larger ones close the connection with 1009.
    :ivar max_request_bytes: the largest request answered normally; a larger
        one (up to ``max_frame_bytes``) is refused with ``tooLarge``.
    :ivar max_fragments: frames one message may be split into; more close
        the connection with 1009.
    :ivar message_timeout: seconds a fragmented message may take to
        complete; longer closes the connection with 1008.
    :ivar authorize_timeout: seconds a connection may stay unauthorized
        before it is closed with 1008.
    :ivar rate: sustained requests per second per connection (control frames
        and extra fragments count too).
    :ivar burst: requests a connection may send at once above ``rate``.
    :ivar max_strikes: refused (rate-limited) requests, net of accepted ones,
        after which the connection is closed with 1008.
    :ivar max_in_flight: requests of one connection still waiting for their
        reply; more are refused with ``rateLimited`` at once.
    :ivar max_connections: open WebSocket connections in total; more are
        refused at the handshake with HTTP 503.
    :ivar max_pending_connections: connections that have not authorized yet
        (HTTP requests, WebSockets before ``authorize``); past it, the oldest
        of them is closed to make room.
    :ivar max_connections_per_user: open connections per user; another
        ``authorize`` as that user closes the new connection with 1008.
    :ivar max_buffered_bytes: bytes the server will queue for a client that
        stopped reading before it drops the connection.
    :ivar ping_interval: seconds between the server's pings on an idle
        connection.
    :ivar ping_timeout: seconds to answer a ping before the connection is
        dropped.
    :ivar http_head_timeout: seconds a client has to send a whole HTTP
        request head (not reset by each byte); slower ones are dropped.
    :ivar max_http_body_bytes: the largest HTTP request body; larger ones get
        413 without being read.
    :ivar storage_timeout: seconds a storage call may take before the request
        fails with ``storageTimeout``.
    :ivar shutdown_timeout: seconds a stopping server waits for in-flight
        requests and closing handshakes.
    """

    max_frame_bytes: int = 256 * 1024
    max_request_bytes: int = 64 * 1024
    max_fragments: int = 128
    message_timeout: float = 10.0
    authorize_timeout: float = 10.0
    rate: float = 50.0
    burst: int = 100
    max_strikes: int = 100
    max_in_flight: int = 32
    max_connections: int = 0
    max_pending_connections: int = 1024
    max_connections_per_user: int = 16
    max_buffered_bytes: int = 4 * 1024 * 1024
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    http_head_timeout: float = 10.0
    max_http_body_bytes: int = 64 * 1024
    storage_timeout: float = 15.0
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"{field.name} must not be negative")
        for name in ("ping_interval", "ping_timeout"):
            # Autobahn schedules pings on timers batched to a fraction of a
            # second: shorter intervals fire at once.
            if 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be 0 (off) or at least 1 second")
        if self.max_frame_bytes and self.max_request_bytes > self.max_frame_bytes:
            raise ValueError("max_request_bytes cannot exceed max_frame_bytes")


class TokenBucket:
    """Allows ``rate`` events a second on average, ``burst`` at once."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._tokens = self._burst
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; say whether there was."""
        tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class PendingConnections:
    """Connections that have not authorized yet, oldest first, at most
    ``limit`` of them: admitting one more closes the oldest.

    Slow or idle connections that never sign in (a slowloris attack, a flood
    of bare handshakes) so cannot hold every file descriptor: whoever is
    still pending when newer ones arrive makes room, while a real client,
    which authorizes within milliseconds, is never the oldest.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: OrderedDict[int, Any] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def admit(self, transport: Any) -> bool:
        """Count ``transport`` as pending (again: a no-op).

        :return: whether it is pending now.
        """
        key = id(transport)
        if key in self._pending or not self.limit:
            return bool(self.limit)
        while len(self._pending) >= self.limit:
            _, oldest = self._pending.popitem(last=False)
            self.evicted += 1
            oldest.abortConnection()
        self._pending[key] = transport
        return True

    def settle(self, transport: Any) -> None:
        """``transport`` authorized, or closed: it is no longer pending."""
        self._pending.pop(id(transport), None)
