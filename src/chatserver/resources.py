"""The HTTP side of the port: the web demo, health, readiness and metrics,
beside the WebSocket (an upgrade request on any path)."""

from __future__ import annotations

import orjson
from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from chatserver.factory import ChatServerFactory
from chatserver.metrics import metrics_registry

WEB_ROOT = FilePath(__file__).sibling("web")
READY_TIMEOUT = 2.0


def _json(request: Request, status: int, body: dict) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body)


class Health(Resource):
    """Liveness: answering at all means the reactor runs."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _json(request, 200, {"status": "ok"})


class Ready(Resource):
    """Readiness: storage answers (and Redis is connected, in a cluster)."""

    isLeaf = True

    def __init__(self, factory: ChatServerFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        Deferred.fromCoroutine(self._check(request, gone))
        return NOT_DONE_YET

    async def _check(self, request: Request, gone: list[bool]) -> None:
        factory = self.factory
        body: dict[str, str] = {}
        try:
            # The cheapest question every store can answer.
            await factory.handler.probe_storage(READY_TIMEOUT)
            body["storage"] = "ok"
        except Exception:
            body["storage"] = "error"
        if factory.cluster is not None:
            body["redis"] = "ok" if factory.cluster.connected else "error"
        ready = all(v == "ok" for v in body.values())
        body["status"] = "ready" if ready else "unavailable"
        if not gone:  # the client may have hung up while we asked
            request.write(_json(request, 200 if ready else 503, body))
            request.finish()


class Metrics(Resource):
    """The server's figures in the Prometheus text format."""

    isLeaf = True

    def __init__(self, factory: ChatServerFactory) -> None:
        super().__init__()
        self.registry = metrics_registry(factory)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class ChatRoot(Resource):
    """Routes a WebSocket upgrade on any path to the chat (as node-chat-server
    accepts any path), and plain HTTP to the pages."""

    def __init__(self, factory: ChatServerFactory, web: bool = True) -> None:
        super().__init__()
        self.websocket = WebSocketResource(factory)
        self.static = File(WEB_ROOT.path) if web else None
        self.putChild(b"health", Health())
        self.putChild(b"ready", Ready(factory))
        self.putChild(b"metrics", Metrics(factory))

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if request.requestHeaders.hasHeader(b"upgrade"):
            return self.websocket
        if path in self.children:
            return self.children[path]
        if self.static is not None:
            return self.static.getChildWithDefault(path, request)
        return notFound()


class ChatSite(Site):
    """The HTTP site of the chat port, without an access log: health probes
    and metric scrapes would flood it."""

    noisy = False

    def log(self, request: Request) -> None:
        pass
