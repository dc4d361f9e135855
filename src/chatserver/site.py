"""The HTTP side of the chat port: the WebSocket upgrade on any path, the web
page, ``/health``, ``/ready`` and ``/metrics`` — hardened for the open
internet.

Before a connection upgrades it is plain HTTP, and an attacker's cheapest
tool: here every request head must arrive whole within a deadline (not reset
by each byte, as Twisted's idle timeout is), connections that have not
authorized are capped (the oldest makes room), request bodies past a small
size are refused with 413 without being read, malformed paths get 400, and a
failing request logs at most one traceback per interval.

Each connection is read first by a :class:`HeadReader`, which waits for the
first request head and hands the connection over: an upgrade straight to the
WebSocket protocol, which parses the head itself, anything else to
twisted.web. A WebSocket client so costs one parse of its handshake, not two
(twisted.web's, then Autobahn's of the head rebuilt from it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, cast

import orjson
from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from chatserver._internals import switch_protocol
from chatserver.factory import ChatServerFactory
from chatserver.limits import Limits, PendingConnections
from chatserver.logs import Throttle

WEB_ROOT = FilePath(__file__).sibling("web")
READY_TIMEOUT = 2.0
# Seconds an idle keep-alive connection is kept (Twisted's default is 60).
IDLE_TIMEOUT = 15
#: The most a :class:`HeadReader` buffers while waiting for the end of a
#: request head; past it the connection goes to twisted.web, which refuses
#: the head by its own limits (16 KiB of headers).
MAX_HEAD_BYTES = 16 * 1024

#: Fires with ``{"part": "ok" | "error" | words}`` for the readiness check.
ReadinessCheck = Callable[[], Deferred[dict[str, str]]]


def _json_body(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body)


def _raw_response(status: int, phrase: str, body: dict[str, Any]) -> bytes:
    """A whole HTTP response for a request that will not be processed."""
    content = orjson.dumps(body)
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(content)}\r\nconnection: close\r\n\r\n"
    ).encode() + content


class JSONPage(Resource):
    """A fixed JSON answer, e.g. for 400 and 403."""

    isLeaf = True

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__()
        self.status = status
        self.body = body

    def render(self, request: Request) -> bytes:
        return _json_body(request, self.status, self.body)


class Health(Resource):
    """Liveness: answering at all means the reactor runs."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _json_body(request, 200, {"status": "ok"})


class Ready(Resource):
    """Readiness: every part the check names says ``ok``."""

    isLeaf = True

    def __init__(self, check: ReadinessCheck) -> None:
        super().__init__()
        self.check = check

    def render_GET(self, request: Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        Deferred.fromCoroutine(self._answer(request, gone))
        return NOT_DONE_YET

    async def _answer(self, request: Request, gone: list[bool]) -> None:
        try:
            body = dict(await self.check())
        except Exception:
            body = {"server": "error"}
        ready = all(v == "ok" for v in body.values())
        body["status"] = "ready" if ready else "unavailable"
        if not gone:  # the client may have hung up while we asked
            request.write(_json_body(request, 200 if ready else 503, body))
            request.finish()


class Metrics(Resource):
    """The server's figures in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def _valid_segment(segment: bytes) -> bool:
    """Whether a path segment (already %-decoded) is one a file could have."""
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text not in ("..", ".") and all(c >= " " and c != "\x7f" for c in text)


class ChatRoot(Resource):
    """Routes a WebSocket upgrade on any path to the chat (as node-chat-server
    accepts any path), and plain HTTP to the pages."""

    def __init__(
        self,
        factory: ChatServerFactory,
        readiness: ReadinessCheck,
        metrics: CollectorRegistry,
        *,
        web: bool = True,
        api: IResource | None = None,
    ) -> None:
        """
        :param api: the server API, served under ``/api`` (None: no ``/api``).
        """
        super().__init__()
        self.websocket = WebSocketResource(factory)
        self.static = File(WEB_ROOT.path) if web else None
        self.putChild(b"health", Health())
        self.putChild(b"ready", Ready(readiness))
        self.putChild(b"metrics", Metrics(metrics))
        if api is not None:
            self.putChild(b"api", api)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if request.requestHeaders.hasHeader(b"upgrade"):
            # An upgrade after other requests on a keep-alive connection (the
            # first request of a connection is routed by HeadReader); the
            # protocol checks the origin.
            return self.websocket
        segments = [path, *(request.postpath or ())]
        if not all(_valid_segment(s) for s in segments):
            return JSONPage(400, {"error": "badRequest", "message": "malformed path"})
        child: IResource
        if path in self.children:
            child = self.children[path]
        elif self.static is not None:
            child = self.static.getChildWithDefault(path, request)
        else:
            child = notFound()
        return child


class ChatRequest(Request):
    """A request whose body is bounded, and whose failures are logged sparingly."""

    channel: ChatHTTPChannel

    _refused = False
    _body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        limit = self.channel.site.limits.max_http_body_bytes
        if limit and length is not None and length > limit:
            self._refuse_body()
            return
        # Bodies are small here: never spill them to a temporary file.
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        limit = self.channel.site.limits.max_http_body_bytes
        if limit and self._body_bytes > limit:
            self._refuse_body()
            return
        assert self.content is not None  # set by gotLength
        self.content.write(data)

    def _refuse_body(self) -> None:
        self._refused = True
        self.content = io.BytesIO()
        limit = self.channel.site.limits.max_http_body_bytes
        transport = self.channel.transport
        if transport is not None:
            transport.write(
                _raw_response(
                    413,
                    "Content Too Large",
                    {
                        "error": "tooLarge",
                        "message": f"request bodies are limited to {limit} bytes",
                    },
                )
            )
            transport.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # answered already (413); the connection is closing
        super().requestReceived(command, path, version)

    def processingFailed(self, reason: Failure) -> None:
        self.channel.site.throttle.failure("http", "HTTP request failed", reason)
        if self.finished or self.startedWriting:
            if not self.finished:
                self.finish()
            return
        body = orjson.dumps({"error": "internalError", "message": "internal error"})
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", str(len(body)).encode())
        self.write(body)
        self.finish()


class HeadDeadline:
    """Aborts a connection whose request head has not arrived whole within
    the site's ``http_head_timeout`` (not reset by each byte)."""

    def __init__(self, site: ChatSite, transport: Any) -> None:
        self._site = site
        self._transport = transport
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        """Start the wait for a head (again: the next one's deadline)."""
        self.stop()
        timeout = self._site.limits.http_head_timeout
        if timeout:
            self._timer = self._site.clock.callLater(timeout, self._too_slow)

    def stop(self) -> None:
        """The head arrived (or the connection ended)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _too_slow(self) -> None:
        self._timer = None
        self._site.slow_heads += 1
        self._transport.abortConnection()


class HeadReader(Protocol):
    """The first reader of every connection on the chat port.

    It buffers the first request head (at most :data:`MAX_HEAD_BYTES`, within
    the head deadline), then hands the connection, with what it read, to the
    WebSocket protocol if the head asks for an upgrade, else to the site's
    HTTP channel. Until then the connection counts as pending (see
    :class:`~chatserver.limits.PendingConnections`).
    """

    transport: Any  # a TCP (or TLS) transport, which can also abort

    def __init__(self, site: ChatSite, addr: Any) -> None:
        self._site = site
        self._addr = addr
        self._head = bytearray()
        self._deadline: HeadDeadline | None = None
        #: The protocol the connection was handed to, while this reader still
        #: forwards to it (a transport it could not switch).
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        self._site.admission.admit(self.transport)
        self._deadline = HeadDeadline(self._site, self.transport)
        self._deadline.start()

    def dataReceived(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            inner.dataReceived(data)
            return
        head = self._head
        searched = max(len(head) - 3, 0)
        head += data
        end = head.find(b"\r\n\r\n", searched)
        if end < 0:
            if len(head) <= MAX_HEAD_BYTES:
                return  # wait for the rest of the head
            websocket = False  # too long: twisted.web refuses it
        else:
            # Any request with an Upgrade header, as ChatRoot routes it.
            websocket = b"\r\nupgrade:" in head[: end + 2].lower()
        self._hand_over(websocket, bytes(head))

    def _hand_over(self, websocket: bool, data: bytes) -> None:
        site = self._site
        inner: IProtocol | None = None
        if websocket and site.websocket is not None:
            # A factory may decline a connection (None): twisted.web answers it.
            inner = cast(IProtocol | None, site.websocket.buildProtocol(self._addr))
        if inner is None:
            inner = site.build_channel(self._addr)
        assert self._deadline is not None
        self._deadline.stop()
        self._deadline = None
        self._head = bytearray()
        transport = self.transport
        if not switch_protocol(transport, self, inner):
            self._inner = inner
        inner.makeConnection(transport)
        inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self._deadline.stop()
            self._deadline = None
        inner = self._inner
        if inner is not None:
            inner.connectionLost(reason)
        else:
            self._site.admission.settle(self.transport)


class ChatHTTPChannel(HTTPChannel):
    """An HTTP connection that must send each request head within a deadline
    and counts as pending until it authorizes (or closes)."""

    site: ChatSite
    transport: Any  # a TCP (or TLS) transport, which can also abort
    _deadline: HeadDeadline | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.admission.admit(self.transport)
        self._deadline = HeadDeadline(self.site, self.transport)
        self._deadline.start()

    def allHeadersReceived(self) -> None:
        if self._deadline is not None:
            self._deadline.stop()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        # The next request on this keep-alive connection has its own deadline
        # (started first: the next head may already be buffered, and parsed
        # by the call below).
        if self._deadline is not None:
            self._deadline.start()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self._deadline.stop()
        self.site.admission.settle(self.transport)
        super().connectionLost(reason)


class ChatSite(Site):
    """The HTTP site of the chat port, without an access log: health probes
    and metric scrapes would flood it, and a URL may carry a token."""

    noisy = False
    requestFactory = ChatRequest

    def __init__(
        self,
        root: ChatRoot,
        *,
        limits: Limits,
        admission: PendingConnections,
        clock: IReactorTime,
        websocket: ChatServerFactory | None = None,
    ) -> None:
        """
        :param websocket: the factory of the WebSocket protocol that a
            connection opening with an upgrade is handed to (``None``: every
            connection goes through twisted.web, and ``root`` upgrades).
        """
        super().__init__(root, timeout=IDLE_TIMEOUT, reactor=clock)
        self.limits = limits
        self.admission = admission
        self.clock = clock
        self.websocket = websocket
        self.throttle = Throttle(clock)
        self.slow_heads = 0

    def buildProtocol(self, addr: Any) -> HeadReader:  # type: ignore[override]
        """A :class:`HeadReader`, which picks the connection's protocol."""
        return HeadReader(self, addr)

    def build_channel(self, addr: Any) -> ChatHTTPChannel:
        """The HTTP channel for a connection (Twisted's ``Site.buildProtocol``)."""
        channel = super().buildProtocol(addr)
        assert isinstance(channel, ChatHTTPChannel)
        return channel

    def protocol(self) -> ChatHTTPChannel:  # type: ignore[override]
        # A plain HTTP/1.1 channel: no HTTP/2 negotiation on the chat port.
        return ChatHTTPChannel()

    def log(self, request: Any) -> None:
        pass
