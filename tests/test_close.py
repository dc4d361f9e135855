"""Closing: our Close frame always reaches the client, and the TCP connection
then ends cleanly (FIN, not RST), whether the client's Close crosses ours or
a protocol error makes us close; only a client that does not finish in time
is aborted.

Over raw sockets against a server process first (what a client sees), then
:class:`chatserver._internals.GracefulCloseMixin` on in-memory transports,
including its fallback when Autobahn lacks what it relies on.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

import orjson
import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from chatserver._internals import GracefulCloseMixin, close_internals_problem
from chatserver.protocol import ChatServerProtocol
from tests.processes import ServerProcess

NOT_JSON = b"not json!!"  # ten octets
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# How long a test waits for the server to answer before it fails.
TIMEOUT = 10


def frame(opcode: int, payload: bytes = b"", *, rsv: int = 0, mask: bool = True) -> bytes:
    """One WebSocket frame, masked as a client sends it."""
    head = bytes([0x80 | rsv << 4 | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return frame(8, b"" if code is None else struct.pack("!H", code) + reason)


def handshake_request(host: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """An opening handshake, and the Sec-WebSocket-Accept it must get."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    request = (
        b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return request, accept


def split_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """The first unmasked frame in ``data``: (opcode, payload, what follows),
    or ``None`` when it is not all there yet."""
    if len(data) < 2:
        return None
    opcode, length = data[0] & 0x0F, data[1] & 0x7F
    offset = 2
    if length == 126:
        offset = 4
        length = struct.unpack("!H", data[2:4])[0] if len(data) >= offset else 0
    elif length == 127:
        offset = 10
        length = struct.unpack("!Q", data[2:10])[0] if len(data) >= offset else 0
    if len(data) < offset + length:
        return None
    return opcode, data[offset : offset + length], data[offset + length :]


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each frame in ``data``, which must end with one."""
    frames = []
    while data:
        split = split_frame(data)
        assert split is not None, f"a truncated frame: {data!r}"
        opcode, payload, data = split
        frames.append((opcode, payload))
    return frames


class RawClient:
    """A WebSocket client on a plain blocking socket, to see exactly what
    arrives, and how the connection ends."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        request, accept = handshake_request()
        self.sock.sendall(request)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed during the handshake: {response!r}"
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"Sec-WebSocket-Accept: " + accept in head

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame the server sends."""
        while (split := split_frame(self.buffer)) is None:
            chunk = self.sock.recv(65536)
            assert chunk, f"the connection ended in a frame: {self.buffer!r}"
            self.buffer += chunk
        opcode, payload, self.buffer = split
        return opcode, payload

    def read_to_end(self) -> tuple[list[tuple[int, bytes]], str]:
        """Every frame until the server ends the connection, and how it
        ended: ``"eof"`` (a FIN) or ``"reset"`` (an RST)."""
        data = self.buffer
        ending = "eof"
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            ending = "reset"
        self.buffer = b""
        return list(parse_frames(data)), ending

    def close(self) -> None:
        self.sock.close()


def close_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode()


@pytest.fixture(scope="module")
def server():
    process = ServerProcess.twistd("--storage", "memory", "--dev-auth")
    yield process
    process.stop()
    assert b"Traceback" not in process.log, process.log.decode(errors="replace")


@pytest.fixture
def client(server):
    client = RawClient(server.port)
    yield client
    client.close()


# Frames after which the server closes: the close code and reason it sends.
BAD_FRAMES = {
    "text that is not JSON": (frame(1, NOT_JSON), 1007, "frames must be JSON objects"),
    "a reserved opcode": (frame(3, b"x"), 1002, "data frame using reserved opcode 3"),
    "an RSV bit": (frame(1, b"{}", rsv=4), 1002, "RSV = 4 and no extension negotiated"),
    "a binary frame": (frame(2, b"\x00\xff"), 1003, "binary frames are not supported"),
}


@pytest.mark.parametrize("bad", BAD_FRAMES, ids=list(BAD_FRAMES))
def test_our_close_arrives_when_the_clients_close_crosses_it(client, bad):
    data, code, reason = BAD_FRAMES[bad]
    # One write: the client's Close is read before ours has left.
    client.send(data + close_frame(1000))
    frames, ending = client.read_to_end()
    assert frames == [(8, close_payload(code, reason))]
    assert ending == "eof"


def test_frames_after_the_clients_close_do_not_reset_the_connection(client):
    # Autobahn's case 7.1.6: a message, a Close, then a ping nobody reads.
    client.send(frame(1, NOT_JSON * 1000) + close_frame(1000) + frame(9, b"ping") + b"\x00" * 4096)
    frames, ending = client.read_to_end()
    assert frames == [(8, close_payload(1007, "frames must be JSON objects"))]
    assert ending == "eof"


@pytest.mark.parametrize(
    ("close", "reason"),
    [
        (frame(8, b"a"), "received close control frame with payload len 1"),
        (close_frame(999), "invalid close code 999"),
        (close_frame(5000), "invalid close code 5000"),
        (close_frame(1000, b"x" * 124), "control frame with payload length > 125 octets"),
    ],
    ids=["one octet", "code 999", "code 5000", "too long"],
)
def test_a_bad_close_frame_is_answered_with_1002_and_a_clean_close(client, close, reason):
    # Autobahn's cases 7.3.2, 7.3.6, 7.9.x, 7.13.x.
    client.send(close)
    frames, ending = client.read_to_end()
    assert frames == [(8, close_payload(1002, reason))]
    assert ending == "eof"


def test_a_close_reason_that_is_not_utf8_is_answered_with_1007(client):
    # Autobahn's case 7.5.1.
    client.send(close_frame(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"))
    frames, ending = client.read_to_end()
    assert frames == [(8, close_payload(1007, "invalid close reason (non-UTF8 payload)"))]
    assert ending == "eof"


@pytest.mark.parametrize("bad", BAD_FRAMES, ids=list(BAD_FRAMES))
def test_a_closing_handshake_in_turn_ends_cleanly(client, bad):
    data, code, reason = BAD_FRAMES[bad]
    client.send(data)
    assert client.read_frame() == (8, close_payload(code, reason))
    client.send(close_frame(code))
    frames, ending = client.read_to_end()
    assert frames == []
    assert ending == "eof"


def test_replies_already_due_go_out_before_our_close(client):
    # An error reply waits for the end of the reactor turn; the Close that a
    # later frame of the same read causes must not overtake it.
    client.send(frame(1, b'{"type": "x"}') + frame(1, NOT_JSON) + close_frame(1000))
    frames, ending = client.read_to_end()
    assert [opcode for opcode, _ in frames] == [1, 8]
    assert orjson.loads(frames[0][1])["error"] == "invalidId"
    assert frames[1] == (8, close_payload(1007, "frames must be JSON objects"))
    assert ending == "eof"


def test_a_client_that_never_answers_our_close_is_aborted(client):
    client.send(frame(1, NOT_JSON))
    assert client.read_frame() == (8, close_payload(1007, "frames must be JSON objects"))
    # No Close back: after the closing handshake timeout, a reset.
    frames, ending = client.read_to_end()
    assert (frames, ending) == ([], "reset")


def test_a_client_that_keeps_the_connection_open_after_our_fin_is_aborted(server, client):
    client.send(frame(1, NOT_JSON) + close_frame(1000))
    assert client.read_to_end() == (
        [(8, close_payload(1007, "frames must be JSON objects"))],
        "eof",
    )
    # The client neither closes nor answers: the server gives up on it.
    aborted = server.log.count(b"did not finish closing in time")
    assert server.wait_for_log(b"did not finish closing in time", TIMEOUT, aborted + 1)


# -- the mixin, in memory ---------------------------------------------------


class EchoLess(GracefulCloseMixin, WebSocketServerProtocol):
    """A server that closes with 1007 on any text, as ours does on non-JSON."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendCloseFrame(1007, b"no", isReply=False)


class RenamedInternals(WebSocketServerProtocol):
    """Autobahn as a release might be that renamed ``_closeConnection``."""

    _closeConnection = None

    def _close_transport(self, abort: bool = False) -> None:
        WebSocketServerProtocol._closeConnection(self, abort)

    def dropConnection(self, abort: bool = False) -> None:
        if self.state != self.STATE_CLOSED:
            self.droppedByMe = True
            self.state = self.STATE_CLOSED
            self._close_transport(abort)


class Transport(StringTransport):
    """A transport that, like TCP's, lets one unregister no producer."""

    def unregisterProducer(self) -> None:
        self.producer = None


def connect(protocol_class: type, clock: Clock) -> tuple[WebSocketServerProtocol, Transport]:
    factory = WebSocketServerFactory(reactor=clock)
    factory.protocol = protocol_class
    # No timers on the global reactor: these tests run on the Clock.
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, failByDrop=False)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    protocol.makeConnection(transport)
    request, _ = handshake_request()
    protocol.dataReceived(request)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    transport.clear()
    return protocol, transport


def test_the_installed_autobahn_has_what_the_mixin_relies_on():
    assert close_internals_problem(WebSocketServerProtocol) is None
    assert ChatServerProtocol.graceful_close
    assert EchoLess.graceful_close


def test_crossing_closes_end_with_our_close_and_an_orderly_close():
    clock = Clock()
    protocol, transport = connect(EchoLess, clock)
    protocol.dataReceived(frame(1, NOT_JSON) + close_frame(1000))
    assert list(parse_frames(transport.value())) == [(8, close_payload(1007, "no"))]
    assert transport.disconnecting and not transport.disconnected  # lost, not aborted
    # The client closes its side in time: nothing is left to abort.
    protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_what_a_closing_client_still_sends_is_dropped_unread():
    clock = Clock()
    protocol, _ = connect(EchoLess, clock)
    protocol.dataReceived(frame(1, NOT_JSON) + close_frame(1000))
    protocol.dataReceived(frame(1, b"x" * 100_000))
    assert len(protocol.data) < 100
    protocol.connectionLost(Failure(ConnectionDone()))


def test_a_closing_client_that_does_not_finish_is_aborted_after_a_timeout():
    clock = Clock()
    protocol, transport = connect(EchoLess, clock)
    protocol.dataReceived(frame(1, NOT_JSON) + close_frame(1000))
    clock.advance(0.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected  # aborted


def test_without_the_internals_the_mixin_keeps_autobahns_behaviour():
    with capturedLogs() as events:

        class Fallback(GracefulCloseMixin, RenamedInternals):
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                self.sendCloseFrame(1007, b"no", isReply=False)

    assert not Fallback.graceful_close
    warnings = [e for e in events if e["log_namespace"] == "chatserver._internals"]
    assert len(warnings) == 1
    assert "_closeConnection" in warnings[0]["problem"]
    clock = Clock()
    protocol, transport = connect(Fallback, clock)
    protocol.dataReceived(frame(1, NOT_JSON) + close_frame(1000))
    # Autobahn's own way: the crossing Close aborts the connection.
    assert transport.disconnected
    assert clock.getDelayedCalls() == []


def test_a_dropconnection_that_no_longer_closes_through_closeconnection_is_detected():
    class Elsewhere(WebSocketServerProtocol):
        def dropConnection(self, abort: bool = False) -> None:
            self.state = self.STATE_CLOSED  # and closes the transport some other way

    problem = close_internals_problem(Elsewhere)
    assert problem is not None and "_closeConnection" in problem
