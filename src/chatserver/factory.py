"""The server: connections, the registry of who is online, and the server API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatserver.events import SOCKET_CLOSED, SOCKET_CONNECTED, EventEmitter, Listener
from chatserver.handlers import Action, ChatHandler
from chatserver.interfaces import IChatStorage
from chatserver.protocol import ChatServerProtocol
from chatserver.registry import ConnectionRegistry
from chatserver.wire import push

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


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
    log = Logger()

    def __init__(
        self,
        storage: IChatStorage,
        url: str | None = None,
        *,
        actions: Mapping[str, Action] | None = None,
        open_actions: Mapping[str, Action] | None = None,
        verbose: bool = False,
        max_history: int = 100,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param storage: provides L{IChatStorage}.
        @param url: the WebSocket URL clients connect to, if Autobahn should
            check it (C{None} accepts any host).
        @param actions: custom actions, C{name → action(connection, data)},
            returning a value or a Deferred; C{connection.user} is the user.
        @param open_actions: custom actions allowed before ``authorize``.
        @param verbose: log each request (never its data).
        @param max_history: the cap on ``getMessages``'s ``limit``.
        @param max_message_bytes: the largest frame a client may send.
        """
        if not IChatStorage.providedBy(storage):
            raise TypeError(
                f"{storage!r} does not provide IChatStorage: declare it with "
                "@implementer(IChatStorage) and implement its five methods"
            )
        super().__init__(url, reactor=reactor)
        self.storage = storage
        self.verbose = verbose
        self.events = EventEmitter()
        self.registry = ConnectionRegistry(self.prepareMessage)
        self.handler = ChatHandler(
            storage,
            self.registry,
            self.registry.push,
            self.events,
            self.reactor,
            actions=actions,
            open_actions=open_actions,
            max_history=max_history,
        )
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_bytes,
            maxMessagePayloadSize=max_message_bytes,
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
        each of ``user_ids``.

        @return: the number of connections it was written to.
        """
        return self.registry.push(push(event_type, data), [str(u) for u in user_ids])

    def broadcast(self, event_type: str, data: Any) -> int:
        """Push ``{"type": event_type, "data": data}`` to every authorized
        connection.

        @return: the number of connections it was written to.
        """
        return self.registry.push_all(push(event_type, data))

    # -- called by the protocol --------------------------------------------

    def connection_opened(self, connection: ChatServerProtocol) -> None:
        """A WebSocket handshake has completed."""
        self.events.emit(SOCKET_CONNECTED, connection)

    def connection_closed(self, connection: ChatServerProtocol) -> None:
        """A connection has closed (or failed before opening)."""
        if connection.user_id is not None:
            self.registry.remove(connection.user_id, connection)
        if connection.opened:
            self.events.emit(SOCKET_CLOSED, connection)
