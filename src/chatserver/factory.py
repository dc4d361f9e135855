"""The server: connections, the registry of who is online, and the server API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from chatserver.cluster import RedisCluster
from chatserver.errors import CLOSE_GOING_AWAY
from chatserver.events import SOCKET_CLOSED, SOCKET_CONNECTED, EventEmitter, Listener
from chatserver.handlers import Action, ChatHandler
from chatserver.interfaces import IChatStorage
from chatserver.limits import Limits
from chatserver.metrics import ServerStats
from chatserver.protocol import ChatServerProtocol
from chatserver.registry import ConnectionRegistry
from chatserver.wire import push

# Module level: Autobahn's classes keep their own `log`, a txaio logger.
log = Logger()


class Router(Protocol):
    """Where pushes go: L{ConnectionRegistry} alone, or a L{RedisCluster}."""

    def push(self, payload: bytes, user_ids: Iterable[str]) -> int: ...

    def push_all(self, payload: bytes) -> int: ...


def _with_port(origin: str) -> str:
    """C{https://chat.example.com} → C{https://chat.example.com:443}: Autobahn
    matches origins with their port."""
    scheme, sep, rest = origin.partition("://")
    if not sep or rest.rsplit(":", 1)[-1].isdigit() or rest == "*":
        return origin
    return f"{origin}:{ {'https': 443, 'http': 80}.get(scheme, 80) }"


class ChatServerFactory(WebSocketServerFactory):
    """A chat server speaking node-chat-server's protocol.

    Listen with it on any stream endpoint::

        factory = ChatServerFactory(MemoryStorage(users=..., groups=...))
        serverFromString(reactor, "tcp:4001").listen(factory)

    @ivar storage: the L{IChatStorage} provider.
    @ivar registry: user id → that user's open, authorized connections.
    @ivar handler: the L{ChatHandler} that runs every action.
    """

    protocol = ChatServerProtocol

    def __init__(
        self,
        storage: IChatStorage,
        url: str | None = None,
        *,
        actions: Mapping[str, Action] | None = None,
        open_actions: Mapping[str, Action] | None = None,
        limits: Limits | None = None,
        allowed_origins: Sequence[str] | None = None,
        cluster: RedisCluster | None = None,
        verbose: bool = False,
        max_history: int = 100,
        server_info: Mapping[str, object] | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param storage: provides L{IChatStorage}.
        @param url: the WebSocket URL clients connect to, if Autobahn should
            check it (C{None} accepts any host).
        @param actions: custom actions, C{name → action(connection, data)},
            returning a value or a Deferred; C{connection.user} is the user.
        @param open_actions: custom actions allowed before ``authorize``.
        @param limits: the L{Limits} to enforce (the defaults if C{None}).
        @param allowed_origins: origins (patterns such as
            C{https://*.example.com}) whose pages may connect; C{None} allows
            any. Clients that send no Origin header (not browsers) always may.
        @param cluster: a L{RedisCluster}, to reach users connected to other
            nodes; C{None} for a single node.
        @param verbose: log each request (never its data).
        @param max_history: the cap on ``getMessages``'s ``limit``.
        @param server_info: what the open ``serverInfo`` action tells clients
            before they sign in, e.g. C{{"devAuth": True}}.
        """
        if not IChatStorage.providedBy(storage):
            raise TypeError(
                f"{storage!r} does not provide IChatStorage: declare it with "
                "@implementer(IChatStorage) and implement its five methods"
            )
        super().__init__(url, reactor=reactor)
        self.storage = storage
        self.limits = limits = limits or Limits()
        self.verbose = verbose
        self.events = EventEmitter()
        self.stats = ServerStats()
        self.registry = ConnectionRegistry(self.prepareMessage)
        # Where pushes go: this node's registry, or the cluster (which uses it).
        self.router: Router = self.registry
        if cluster is not None:
            cluster.bind(self.registry)
            self.router = cluster
        self.cluster = cluster
        self.connections: set[ChatServerProtocol] = set()
        self._to_flush: list[ChatServerProtocol] = []
        self._flush_call: IDelayedCall | None = None
        self._in_flight: set[Deferred] = set()
        self.handler = ChatHandler(
            storage,
            self.registry,
            self.router.push,
            self.events,
            self.reactor,
            actions=actions,
            open_actions=open_actions,
            max_history=max_history,
            storage_timeout=limits.storage_timeout,
            max_connections_per_user=limits.max_connections_per_user,
            stats=self.stats,
            server_info=server_info,
        )
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_frame_bytes,
            maxMessagePayloadSize=limits.max_frame_bytes,
            maxConnections=limits.max_connections,
            allowedOrigins=[_with_port(o) for o in allowed_origins] if allowed_origins else ["*"],
            # A sandboxed or file:// page says "null": only trust it when anyone may connect.
            allowNullOrigin=not allowed_origins,
            # Say why with a close code (1002, 1007, 1009...) rather than hang up.
            failByDrop=False,
        )

    # -- server API --------------------------------------------------------

    def on(self, event: str, listener: Listener | None = None) -> Any:
        """Call ``listener(connection)`` on ``socketConnected``,
        ``socketAuthorized`` or ``socketClosed``.

        Without ``listener``, returns a decorator: C{@factory.on("socketClosed")}.
        """
        if listener is None:
            return lambda f: self.events.on(event, f)
        return self.events.on(event, listener)

    def off(self, event: str, listener: Listener) -> None:
        """Stop calling ``listener`` for ``event``."""
        self.events.off(event, listener)

    def send(self, event_type: str, data: Any, user_ids: Iterable[object]) -> int:
        """Push ``{"type": event_type, "data": data}`` to every connection of
        each of ``user_ids``, on this node and, in a cluster, on the others.

        @return: the number of connections it was written to on this node.
        """
        return self.router.push(push(event_type, data), [str(u) for u in user_ids])

    def broadcast(self, event_type: str, data: Any) -> int:
        """Push ``{"type": event_type, "data": data}`` to every authorized
        connection, on every node.

        @return: the number of connections it was written to on this node.
        """
        return self.router.push_all(push(event_type, data))

    # -- called by the protocol --------------------------------------------

    def connection_opened(self, connection: ChatServerProtocol) -> None:
        """A WebSocket handshake has completed."""
        self.connections.add(connection)
        self.events.emit(SOCKET_CONNECTED, connection)

    def connection_closed(self, connection: ChatServerProtocol) -> None:
        """A connection has closed (or failed before opening)."""
        if connection.user_id is not None:
            self.registry.remove(connection.user_id, connection)
        if connection.opened:
            self.connections.discard(connection)
            self.events.emit(SOCKET_CLOSED, connection)

    def flush_later(self, connection: ChatServerProtocol) -> None:
        """Have ``connection`` write its frames at the end of this reactor
        turn, with every other connection written to in it."""
        self._to_flush.append(connection)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        connections, self._to_flush = self._to_flush, []
        for connection in connections:
            connection.flush()

    def track(self, request: Deferred) -> None:
        """Remember a request still waiting on storage, so that a shutdown
        can let it finish."""
        self._in_flight.add(request)
        request.addBoth(self._untrack, request)

    def _untrack(self, result: object, request: Deferred) -> object:
        self._in_flight.discard(request)
        return result

    def shutdown(self) -> Deferred:
        """Stop serving, gently: read no more requests, let the ones in
        flight finish and send their replies, then close every connection
        with 1001 "going away".

        Each of the two waits lasts at most C{limits.shutdown_timeout}
        seconds; connections still open after that are dropped.

        @return: a Deferred that fires when every connection is gone.
        """
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        for connection in self.connections:
            connection.transport.pauseProducing()
        if self._in_flight:
            log.info("waiting for {n} requests", n=len(self._in_flight))
            await self._bounded(list(self._in_flight))
        closing = [c.is_closed for c in self.connections]
        for connection in tuple(self.connections):
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
            # Read again, for the client's half of the closing handshake.
            connection.transport.resumeProducing()
        await self._bounded(closing)
        for connection in tuple(self.connections):
            connection.dropConnection(abort=True)
        if self._in_flight:
            log.warn("stopped with {n} requests unfinished", n=len(self._in_flight))

    async def _bounded(self, waits: list[Deferred]) -> None:
        done = DeferredList(waits, consumeErrors=True)
        if self.limits.shutdown_timeout:
            done.addTimeout(self.limits.shutdown_timeout, self.reactor)
        try:
            await done
        except defer.TimeoutError:
            pass
