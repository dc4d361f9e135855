"""The limits a public server needs, in one place, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Every limit the server enforces. Zero turns a limit off.

    @ivar max_frame_bytes: the largest WebSocket message a client may send;
        larger ones close the connection with 1009.
    @ivar max_request_bytes: the largest request answered normally; a larger
        one (up to C{max_frame_bytes}) is refused with ``tooLarge``.
    @ivar authorize_timeout: seconds a connection may stay unauthorized
        before it is closed with 1008.
    @ivar rate: sustained requests per second per connection.
    @ivar burst: requests a connection may send at once above C{rate}.
    @ivar max_strikes: refused (rate-limited) requests, net of accepted ones,
        after which the connection is closed with 1008.
    @ivar max_connections: open connections in total; more are refused at
        the handshake with HTTP 503.
    @ivar max_connections_per_user: open connections per user; another
        ``authorize`` as that user closes the new connection with 1008.
    @ivar max_buffered_bytes: bytes the server will queue for a client that
        stopped reading before it drops the connection.
    @ivar storage_timeout: seconds a storage call may take before the request
        fails with ``storageTimeout``.
    @ivar shutdown_timeout: seconds a stopping server waits for in-flight
        requests and closing handshakes.
    """

    max_frame_bytes: int = 256 * 1024
    max_request_bytes: int = 64 * 1024
    authorize_timeout: float = 10.0
    rate: float = 50.0
    burst: int = 100
    max_strikes: int = 100
    max_connections: int = 0
    max_connections_per_user: int = 16
    max_buffered_bytes: int = 4 * 1024 * 1024
    storage_timeout: float = 15.0
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_frame_bytes and self.max_request_bytes > self.max_frame_bytes:
            raise ValueError("max_request_bytes cannot exceed max_frame_bytes")


class TokenBucket:
    """Allows C{rate} events a second on average, C{burst} at once."""

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
