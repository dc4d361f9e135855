"""A Twisted client for the chat protocol: for scripts, tests and load generation.

client = await connect("ws://127.0.0.1:4001")
await client.authorize(token="...")
await client.send({"to": "bob", "text": "hi"})
push = await client.next_push("chatMessage")
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure

from chatserver.wire import decode, encode

DEFAULT_TIMEOUT = 10.0


class RequestFailed(Exception):
    """The server answered a request with an error."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ConnectionClosed(Exception):
    """The connection closed before the awaited frame arrived."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class _Inbox:
    """Frames waiting for a reader, and readers waiting for a frame."""

    def __init__(self) -> None:
        self.frames: deque[Any] = deque()
        self.waiters: deque[Deferred[Any]] = deque()

    def put(self, frame: Any) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.called:  # a timed-out waiter is already cancelled
                waiter.callback(frame)
                return
        self.frames.append(frame)

    def get(self, timeout: float, clock: Any) -> Deferred[Any]:
        if self.frames:
            return succeed(self.frames.popleft())
        waiter: Deferred[Any] = Deferred()
        self.waiters.append(waiter)
        return waiter.addTimeout(timeout, clock)

    def fail_all(self, error: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.called:
                waiter.errback(Failure(error))


class ChatClientProtocol(WebSocketClientProtocol):
    """One client connection. Requests are numbered 1, 2, 3… as ``chat-client``
    numbers them; replies fire the request's Deferred, pushes queue by type."""

    timeout = DEFAULT_TIMEOUT

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 0
        self._pending: dict[object, Deferred[Any]] = {}
        self._pushes: dict[str, _Inbox] = {}
        self._unmatched = _Inbox()
        self.close_info: tuple[int | None, str | None] | None = None
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()

    # -- requests ----------------------------------------------------------

    def request(self, action: str, data: Any = None) -> Deferred[Any]:
        """Send a request; fire with its reply's ``data`` or fail with
        L{RequestFailed} (an error reply) or L{ConnectionClosed}."""
        if self.close_info is not None:
            return fail(ConnectionClosed(*self.close_info))
        self._next_id += 1
        request_id = self._next_id
        d: Deferred[Any] = Deferred()
        self._pending[request_id] = d
        self.sendMessage(
            encode({"type": action, "data": {} if data is None else data, "id": request_id})
        )
        return d.addTimeout(self.timeout, self.factory.reactor)

    def authorize(self, **credentials: Any) -> Deferred[Any]:
        return self.request("authorize", credentials)

    def send(self, message: dict[str, Any]) -> Deferred[Any]:
        return self.request("create", message)

    def get_messages(self, **query: Any) -> Deferred[Any]:
        return self.request("getMessages", query)

    def read(self, message_id: str) -> Deferred[Any]:
        return self.request("read", {"id": message_id})

    def send_raw(self, payload: bytes, is_binary: bool = False) -> None:
        """Send a frame as it is, for testing how the server takes bad input."""
        self.sendMessage(payload, isBinary=is_binary)

    # -- incoming ----------------------------------------------------------

    def next_push(self, event_type: str, timeout: float | None = None) -> Deferred[Any]:
        """Fire with the ``data`` of the next push of ``event_type``."""
        inbox = self._pushes.setdefault(event_type, _Inbox())
        return inbox.get(self.timeout if timeout is None else timeout, self.factory.reactor)

    def pending_pushes(self, event_type: str) -> list[Any]:
        """Pushes of ``event_type`` received and not yet taken."""
        inbox = self._pushes.get(event_type)
        return list(inbox.frames) if inbox else []

    def next_unmatched(self, timeout: float | None = None) -> Deferred[Any]:
        """Fire with the next reply whose id matches no request of ours."""
        return self._unmatched.get(
            self.timeout if timeout is None else timeout, self.factory.reactor
        )

    def connectionMade(self) -> None:
        super().connectionMade()
        # connect() always dials TCP. See ChatServerProtocol.connectionMade.
        cast(ITCPTransport, self.transport).setTcpNoDelay(True)

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = decode(payload)
        if frame.get("type"):
            self._pushes.setdefault(frame["type"], _Inbox()).put(frame.get("data"))
            return
        d = self._pending.pop(frame.get("id"), None)
        if d is None:
            self._unmatched.put(frame)
        elif frame.get("error"):
            d.errback(RequestFailed(frame["error"], frame.get("message", "")))
        else:
            d.callback(frame.get("data"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (code, reason)
        error = ConnectionClosed(code, reason)
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(error))
        for inbox in (*self._pushes.values(), self._unmatched):
            inbox.fail_all(error)
        if not self.factory.opened.called:
            self.factory.opened.errback(Failure(error))
        self.closed.callback(self.close_info)


class _ClientFactory(WebSocketClientFactory):
    protocol = ChatClientProtocol

    def __init__(self, url: str, reactor: Any, **kwargs: Any) -> None:
        super().__init__(url, reactor=reactor, **kwargs)
        self.opened: Deferred[ChatClientProtocol] = Deferred()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.opened.called:
            self.opened.errback(reason)


def connect(
    url: str,
    reactor: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    headers: dict[str, str] | None = None,
    tls: Any = None,
) -> Deferred[ChatClientProtocol]:
    """Open a connection to a chat server.

    @param headers: extra handshake headers, e.g. C{{"Origin": ...}}.
    @param tls: for ``wss://``, the client TLS options (e.g. from
        C{twisted.internet.ssl.optionsForClientTLS}); the default verifies
        the server against the system's trust roots.
    @return: a Deferred firing with a L{ChatClientProtocol} once the
        WebSocket is open.
    """
    reactor = reactor or global_reactor
    factory = _ClientFactory(url, reactor, headers=headers)
    connectWS(factory, contextFactory=tls, timeout=timeout)
    return factory.opened.addTimeout(timeout, reactor)
