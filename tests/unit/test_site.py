"""The HTTP side of the port on a fake clock: deadlines, bodies, paths, origins."""

from __future__ import annotations

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserver import IChatStorage, Limits, MemoryStorage
from chatserver.factory import OriginCheck
from chatserver.site import READY_TIMEOUT
from tests.unit.fakes import server

PEER = IPv4Address("TCP", "127.0.0.1", 40001)


class Transport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()

    def unregisterProducer(self) -> None:
        self.producer = None  # as a TCP connection does, registered or not


def channel(**limits):
    app, clock = server(limits=Limits(rate=0, **limits))
    transport = Transport(peerAddress=PEER)
    protocol = app.site.buildProtocol(PEER)
    protocol.makeConnection(transport)
    return app, clock, protocol, transport


def test_a_request_head_has_a_deadline_not_reset_by_each_byte():
    _, clock, protocol, transport = channel(http_head_timeout=10)
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
        protocol.dataReceived(bytes([byte]))
        clock.advance(0.5)
    assert transport.aborted  # 10 s passed, bytes trickling all along


def test_a_prompt_request_is_answered_and_the_next_head_gets_its_own_deadline():
    _, clock, protocol, transport = channel(http_head_timeout=10)
    clock.advance(9)
    protocol.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    clock.advance(9)
    assert not transport.aborted
    clock.advance(1.5)
    assert transport.aborted  # an idle keep-alive connection, 10 s later


def test_a_large_body_is_refused_unread():
    _, _, protocol, transport = channel(max_http_body_bytes=1000)
    protocol.dataReceived(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413")
    assert transport.disconnecting


def test_a_chunked_body_is_counted_too():
    _, _, protocol, transport = channel(max_http_body_bytes=1000)
    protocol.dataReceived(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        protocol.dataReceived(b"200\r\n" + b"x" * 512 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("path", [b"/%00", b"/%ff", b"/a/%0a", b"/..", b"/x/%7f"])
def test_malformed_paths_get_400(path):
    _, _, protocol, transport = channel()
    protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert orjson.loads(body)["error"] == "badRequest"


def test_connections_count_as_pending_until_they_close():
    app, _, protocol, _ = channel()
    assert len(app.factory.admission) == 1
    protocol.connectionLost(None)
    assert len(app.factory.admission) == 0


@implementer(IChatStorage)
class Unresponsive(MemoryStorage):
    """A database that stopped answering."""

    def getGroupUserIds(self, data):
        return Deferred()


def test_ready_says_503_when_storage_does_not_answer_in_time():
    app, clock = server(storage=Unresponsive())
    transport = Transport(peerAddress=PEER)
    protocol = app.site.buildProtocol(PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value() == b""
    clock.advance(READY_TIMEOUT)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert (
        orjson.loads(body.split(b"\r\n")[1] if b"chunked" in head else body)["storage"] == "error"
    )


def test_origins():
    check = OriginCheck(["https://chat.example.com", "https://*.example.org"])
    assert check.allows(None)
    assert check.allows("https://chat.example.com")
    assert check.allows("https://chat.example.com:443")
    assert check.allows("https://a.example.org")
    assert not check.allows("https://evil.example.net")
    assert not check.allows("http://chat.example.com")
    assert not check.allows("null")
    assert not check.allows("file://")
    assert not check.allows("https://chat.example.com:notaport")
    assert OriginCheck(None).allows("null")


# -- the first reader of each connection ----------------------------------------


class WrappedTransport:
    """A TLS-like wrapper (a ``ProtocolWrapper``) over a ``StringTransport``:
    the shape of transport the head reader switches to another protocol."""

    def __init__(self, app):
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

        self.reader = app.site.buildProtocol(PEER)
        self.outer = Transport(peerAddress=PEER)
        self.wrapper = ProtocolWrapper(WrappingFactory(app.site), self.reader)
        self.wrapper.makeConnection(self.outer)


def test_an_upgrade_goes_straight_to_the_websocket_protocol_which_answers_it():
    from chatserver.protocol import ChatServerProtocol
    from tests.rawws import TEXT, frame, handshake
    from tests.unit.fakes import parse_frames

    app, clock = server()
    link = WrappedTransport(app)
    link.wrapper.dataReceived(handshake("127.0.0.1", 80))
    # The transport now hands its bytes to the WebSocket protocol itself.
    assert isinstance(link.wrapper.wrappedProtocol, ChatServerProtocol)
    assert link.outer.value().startswith(b"HTTP/1.1 101")
    link.outer.clear()
    request = {"type": "authorize", "data": {"token": "alice-token"}, "id": 1}
    link.wrapper.dataReceived(frame(TEXT, orjson.dumps(request)))
    clock.advance(0)
    [(_, payload)] = parse_frames(link.outer.value())
    assert orjson.loads(payload)["data"]["id"] == "alice"


@pytest.mark.parametrize("pieces", [1, 2, 7, 200])
def test_a_head_in_pieces_is_read_whole_then_handed_over(pieces):
    from tests.rawws import handshake

    app, _ = server()
    link = WrappedTransport(app)
    head = handshake("127.0.0.1", 80)
    step = max(len(head) // pieces, 1)
    for start in range(0, len(head), step):
        link.wrapper.dataReceived(head[start : start + step])
    assert link.outer.value().startswith(b"HTTP/1.1 101")
    assert len(app.factory.connections) == 1


def test_a_plain_request_goes_to_twisted_web_and_keep_alive_upgrades_still_work():
    from chatserver.site import ChatHTTPChannel
    from tests.rawws import handshake

    app, _ = server()
    link = WrappedTransport(app)
    link.wrapper.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(link.wrapper.wrappedProtocol, ChatHTTPChannel)
    assert link.outer.value().startswith(b"HTTP/1.1 200")
    link.outer.clear()
    # The next request on the same connection upgrades through twisted.web.
    link.wrapper.dataReceived(handshake("127.0.0.1", 80))
    assert link.outer.value().startswith(b"HTTP/1.1 101")
    assert len(app.factory.connections) == 1


def test_a_transport_that_cannot_be_switched_is_forwarded_to():
    from tests.rawws import TEXT, frame, handshake
    from tests.unit.fakes import parse_frames

    app, clock = server()
    transport = Transport(peerAddress=PEER)
    reader = app.site.buildProtocol(PEER)
    reader.makeConnection(transport)
    reader.dataReceived(handshake("127.0.0.1", 80))
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    reader.dataReceived(frame(TEXT, b'{"type": "serverInfo", "id": 1}'))
    clock.advance(0)
    [(_, payload)] = parse_frames(transport.value())
    assert orjson.loads(payload)["id"] == 1
    reader.connectionLost(Failure(ConnectionDone()))
    assert not app.factory.connections
    assert len(app.factory.admission) == 0


def test_header_names_are_matched_in_any_case():
    from tests.rawws import handshake

    app, _ = server()
    link = WrappedTransport(app)
    link.wrapper.dataReceived(handshake("127.0.0.1", 80).replace(b"Upgrade:", b"uPGRADE:"))
    assert link.outer.value().startswith(b"HTTP/1.1 101")


def test_an_endless_head_is_handed_to_twisted_web_which_refuses_it():
    from chatserver.site import MAX_HEAD_BYTES

    app, _ = server()
    link = WrappedTransport(app)
    link.wrapper.dataReceived(b"GET / HTTP/1.1\r\n")
    for _ in range(MAX_HEAD_BYTES // 1000 + 1):
        link.wrapper.dataReceived(b"X-Filler: " + b"a" * 988 + b"\r\n")
    assert link.outer.value().startswith(b"HTTP/1.1 400")
    assert link.outer.disconnecting


def test_the_first_head_has_a_deadline_and_counts_as_pending():
    app, clock = server(limits=Limits(rate=0, http_head_timeout=10))
    link = WrappedTransport(app)
    assert len(app.factory.admission) == 1
    link.wrapper.dataReceived(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n")
    clock.advance(10)
    assert link.outer.aborted
    assert app.site.slow_heads == 1


@pytest.mark.parametrize("keep_alive", [False, True])
def test_a_page_of_another_origin_is_refused_with_403(keep_alive):
    from tests.rawws import handshake

    app, _ = server(allowed_origins=["https://chat.example.com"])
    link = WrappedTransport(app)
    if keep_alive:  # the upgrade comes through twisted.web
        link.wrapper.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        link.outer.clear()
    link.wrapper.dataReceived(handshake("x", 80, headers={"Origin": "https://evil.example.net"}))
    assert link.outer.value().startswith(b"HTTP/1.1 403")
    assert not app.factory.connections
