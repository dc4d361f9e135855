"""The WebSocket factory: builds a protocol per connection and keeps them.

It is given its collaborators (see :func:`chatserver.wiring.build_server`):
the handler that decides, the registry that must forget closed sessions, the
events to emit, the limits to enforce. It owns what is about connections as
such: the set of open ones, the requests in flight (so that a shutdown can let
them finish), and the graceful shutdown itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.util import wildcards2patterns
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatserver._internals import TurnBatcher, lazy_autobahn_log_arguments, protocol_with_options
from chatserver.delivery import SessionRegistry
from chatserver.events import SOCKET_CLOSED, SOCKET_CONNECTED, EventEmitter
from chatserver.handlers import ChatHandler
from chatserver.limits import Limits, PendingConnections
from chatserver.logs import Throttle
from chatserver.metrics import ServerStats
from chatserver.protocol import CLOSE_GOING_AWAY, ChatServerProtocol
from chatserver.server import ServerAPI


def with_port(origin: str) -> str:
    """``https://chat.example.com`` → ``https://chat.example.com:443``: Autobahn
    matches origins with their port."""
    scheme, sep, rest = origin.partition("://")
    if not sep or rest.rsplit(":", 1)[-1].isdigit() or rest == "*":
        return origin
    return f"{origin}:{ {'https': 443, 'http': 80}.get(scheme, 80) }"


class OriginCheck:
    """Which web pages may open a WebSocket (clients without an Origin
    header, which are not browsers, always may)."""

    def __init__(self, allowed: Sequence[str] | None) -> None:
        self.allow_any = not allowed
        self._patterns = wildcards2patterns([with_port(o) for o in allowed or ()])

    def allows(self, origin: str | None) -> bool:
        """Whether a page of ``origin`` (the Origin header; ``None`` if
        absent) may connect."""
        if origin is None or self.allow_any:
            return True
        text = origin.strip()
        if text == "null":
            return False  # a sandboxed or file:// page: only when anyone may connect
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            return False
        if not parts.scheme or not parts.hostname:
            return False
        port = port or (443 if parts.scheme in ("https", "wss") else 80)
        normalized = f"{parts.scheme}://{parts.hostname}:{port}"
        return any(p.match(normalized) for p in self._patterns)


class ChatServerFactory(WebSocketServerFactory):
    """Builds a :class:`ChatServerProtocol` per connection and keeps the open
    ones.

    :ivar connections: the open WebSocket connections.
    """

    protocol = ChatServerProtocol  # type: ignore[assignment]  # Autobahn's stubs are narrower

    def __init__(
        self,
        *,
        handler: ChatHandler,
        registry: SessionRegistry,
        api: ServerAPI,
        events: EventEmitter,
        stats: ServerStats,
        limits: Limits,
        admission: PendingConnections,
        allowed_origins: Sequence[str] | None = None,
        verbose: bool = False,
        reactor: IReactorTime,
    ) -> None:
        """
        :param allowed_origins: origins (patterns such as
            ``https://*.example.com``) whose pages may connect; ``None``
            allows any. Clients that send no Origin header (not browsers)
            always may.
        :param verbose: log each request (never its data).
        """
        super().__init__(None, reactor=reactor)
        lazy_autobahn_log_arguments()
        self.handler = handler
        self.registry = registry
        self.api = api
        self.events = events
        self.stats = stats
        self.limits = limits
        self.admission = admission
        self.origins = OriginCheck(allowed_origins)
        self.verbose = verbose
        self.log = Logger(namespace="chatserver.requests")
        self.throttle = Throttle(reactor)
        self.batcher = TurnBatcher(reactor)
        self.connections: set[ChatServerProtocol] = set()
        self._in_flight: set[Deferred[Any]] = set()
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_frame_bytes,
            maxMessagePayloadSize=limits.max_frame_bytes,
            maxConnections=limits.max_connections,
            # Origins are checked by the protocol (onConnect), which refuses
            # with 403 where Autobahn would say 400.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            # Say why with a close code (1002, 1007, 1009...) rather than hang up.
            failByDrop=False,
            # Autobahn's timers are batched to whole seconds: "1 s" (its
            # default) fires after 0 to 1 s, too soon for a busy client.
            closeHandshakeTimeout=2,
            autoPingInterval=limits.ping_interval,
            autoPingTimeout=limits.ping_timeout,
        )

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        """Autobahn's, then the options bound to the protocol class, so that
        connections made from now on find them there instead of copying
        each one (see :func:`chatserver._internals.protocol_with_options`)."""
        super().setProtocolOptions(*args, **options)
        self.protocol = protocol_with_options(ChatServerProtocol, self)

    def resetProtocolOptions(self) -> None:
        """Autobahn's defaults, bound to the protocol class as in
        :meth:`setProtocolOptions`."""
        super().resetProtocolOptions()
        self.protocol = protocol_with_options(ChatServerProtocol, self)

    # -- called by the protocol --------------------------------------------

    def connection_opened(self, connection: ChatServerProtocol) -> None:
        """A WebSocket handshake has completed."""
        self.connections.add(connection)
        self.events.emit(SOCKET_CONNECTED, connection.session)

    def connection_closed(self, connection: ChatServerProtocol) -> None:
        """A connection has closed (or failed before opening)."""
        self.admission.settle(connection.transport)
        session = connection.session
        if session is None:
            return
        if session.user_id is not None:
            self.registry.remove(session.user_id, session)
        if connection in self.connections:
            self.connections.discard(connection)
            self.events.emit(SOCKET_CLOSED, session)

    def track(self, request: Deferred[Any]) -> None:
        """Remember a request still waiting on storage, so that a shutdown
        can let it finish."""
        self._in_flight.add(request)
        request.addBoth(self._untrack, request)

    def _untrack(self, result: object, request: Deferred[Any]) -> object:
        self._in_flight.discard(request)
        return result

    def collect(self) -> Iterator[Metric]:
        """Metrics, for prometheus_client."""
        yield GaugeMetricFamily(
            "chat_connections_open", "Open WebSocket connections.", len(self.connections)
        )
        yield GaugeMetricFamily(
            "chat_connections_pending",
            "Connections that have not authorized yet (HTTP and WebSocket).",
            len(self.admission),
        )

    # -- shutdown ----------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """Stop serving, gently: read no more requests, let the ones in
        flight finish and send their replies, then close every connection
        with 1001 "going away".

        Each of the two waits lasts at most ``limits.shutdown_timeout``
        seconds; connections still open after that are dropped.

        :return: a Deferred that fires when every connection is gone.
        """
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        for connection in self.connections:
            connection.transport.pauseProducing()
        if self._in_flight:
            self.log.info("waiting for {n} requests", n=len(self._in_flight))
            await self._bounded(list(self._in_flight))
        closing = [c.is_closed for c in self.connections]
        for connection in tuple(self.connections):
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
            # Read again, for the client's half of the closing handshake.
            connection.transport.resumeProducing()
        self.batcher.flush()
        await self._bounded(closing)
        for connection in tuple(self.connections):
            connection.dropConnection(abort=True)
        if self._in_flight:
            self.log.warn("stopped with {n} requests unfinished", n=len(self._in_flight))

    async def _bounded(self, waits: list[Deferred[Any]]) -> None:
        done = DeferredList(waits, consumeErrors=True)
        if self.limits.shutdown_timeout:
            done.addTimeout(self.limits.shutdown_timeout, self.reactor)
        try:
            await done
        except defer.TimeoutError:
            pass
