"""The HTTP side of the port on a fake clock: deadlines, bodies, paths, origins."""

from __future__ import annotations

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from chatserver import IChatStorage, Limits, MemoryStorage
from chatserver.site import READY_TIMEOUT, OriginCheck
from tests.unit.fakes import server

PEER = IPv4Address("TCP", "127.0.0.1", 40001)


class Transport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


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
    assert check.allows(b"https://chat.example.com")
    assert check.allows(b"https://chat.example.com:443")
    assert check.allows(b"https://a.example.org")
    assert not check.allows(b"https://evil.example.net")
    assert not check.allows(b"http://chat.example.com")
    assert not check.allows(b"null")
    assert not check.allows(b"https://chat.example.com:notaport")
    assert OriginCheck(None).allows(b"null")
