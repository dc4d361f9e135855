"""The one place that relies on Twisted's and Autobahn's private details.

Everything here is guarded: each fast path checks, before use, that the
private attributes it needs exist and behave as expected, and otherwise falls
back to the public API (and logs once). Tests prove each fallback by running
it against transports without those attributes. When a Twisted or Autobahn
release renames something, the server gets slower, never silent.

Private attributes used:

- ``twisted.internet.tcp.Connection``: ``_tempDataBuffer``, ``dataBuffer``,
  ``offset`` (what is still queued for the socket) and ``writeSomeData`` (a
  write straight to the socket), so that a connection whose queue is empty
  is written at once, without the two ``epoll_ctl`` calls of a queued write.
- ``autobahn.websocket.protocol.WebSocketProtocol.data``: the bytes received
  and not parsed yet. Autobahn parses everything already read even after the
  connection is closing (one 64 KiB read holds 10,000 tiny frames, each
  parsed and sliced off the buffer); a connection closed for abuse discards
  it instead.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.logger import Logger

from chatserver.logs import Throttle

log = Logger()

_fast_writes = True


def _disable_fast_writes(reason: str) -> None:
    global _fast_writes
    if _fast_writes:
        _fast_writes = False
        log.warn(
            "writing through the public transport API from now on: {reason} "
            "(this Twisted release differs from the tested ones; the server works, a bit slower)",
            reason=reason,
        )


def fast_writes_enabled() -> bool:
    """Whether writes still try the socket directly."""
    return _fast_writes


def write_now(transport: ITransport, data: bytes) -> None:
    """Write ``data``, straight to the socket when nothing is queued for it
    (as libuv does), else through ``transport.write``.

    Only a plain TCP connection qualifies: a TLS transport forwards unknown
    attributes to the TCP connection under it, whose ``writeSomeData`` would
    bypass the encryption.
    """
    if _fast_writes and isinstance(transport, tcp.Connection):
        try:
            idle = (
                not transport._tempDataBuffer
                and len(transport.dataBuffer) == transport.offset
                and not transport.disconnecting
            )
            write_some = transport.writeSomeData
        except (AttributeError, TypeError) as e:
            _disable_fast_writes(f"{type(transport).__name__}: {e}")
            idle = False
        if idle:
            sent = write_some(data)
            if type(sent) is int:
                if sent == len(data):
                    return
                if not 0 <= sent < len(data):
                    _disable_fast_writes(f"writeSomeData returned {sent} for {len(data)} bytes")
                    # Nothing is known to have been sent: queue it all.
                else:
                    data = data[sent:]
            # Anything else (an exception object): the connection is lost,
            # and write() lets Twisted see it.
    transport.write(data)


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what was queued during this reactor turn."""


class TurnBatcher:
    """Connections written to during a reactor turn, each flushed once at the
    end of the turn: a connection that gets several frames in one turn sends
    them in one write.

    A connection whose flush fails is logged (throttled) and skipped; the
    others in the batch are still flushed.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._queue: list[Flushable] = []
        self._call: IDelayedCall | None = None
        self._throttle = Throttle(clock)

    def schedule(self, connection: Flushable) -> None:
        """Flush ``connection`` at the end of this reactor turn."""
        self._queue.append(connection)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Flush every scheduled connection now."""
        self._call = None
        queue, self._queue = self._queue, []
        for connection in queue:
            try:
                connection.flush()
            except Exception:
                self._throttle.failure("flush", "writing to a connection failed")


_discard_input = True


def discard_input(protocol: Any) -> None:
    """Drop what ``protocol`` (an Autobahn WebSocket protocol) has received
    but not parsed yet; the frame being parsed completes as empty."""
    global _discard_input
    if not _discard_input:
        return
    data = getattr(protocol, "data", None)
    if type(data) is not bytes:
        _discard_input = False
        log.warn(
            "cannot discard unparsed input on closing: this Autobahn release differs from "
            "the tested ones (the server works; an abusive client costs it more CPU)"
        )
        return
    protocol.data = b""


def tune_tcp(transport: Any) -> None:
    """Nagle off and keepalive on, where the transport is TCP (public API)."""
    for name in ("setTcpNoDelay", "setTcpKeepAlive"):
        setter = getattr(transport, name, None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass  # the socket is already gone
