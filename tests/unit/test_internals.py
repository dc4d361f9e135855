"""The guarded use of Twisted's and Autobahn's private details, and the
fallback when they are missing."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatserver import _internals


@pytest.fixture(autouse=True)
def restore():
    yield
    _internals._fast_writes = True
    _internals._discard_input = True
    _internals._fast_frames = True
    _internals._take_results = True


class BareTransport(StringTransport):
    """A TCP-like transport of a Twisted release without the private queue."""


def test_without_the_private_attributes_writes_go_through_write(monkeypatch):
    from twisted.internet import tcp

    # A tcp.Connection as far as isinstance goes, but without the private
    # attributes: what a Twisted release that renamed them would look like.
    monkeypatch.setattr(_internals, "tcp", type("tcp", (), {"Connection": BareTransport}))
    transport = BareTransport()
    _internals.write_now(transport, b"hello")
    _internals.write_now(transport, b" again")
    assert transport.value() == b"hello again"
    assert not _internals.fast_writes_enabled()
    assert tcp.Connection is not BareTransport


class Flaky:
    def __init__(self, fail: bool, log: list) -> None:
        self.fail = fail
        self.log = log

    def flush(self) -> None:
        if self.fail:
            raise RuntimeError("boom")
        self.log.append(self)


def test_a_failing_flush_does_not_silence_the_rest_of_the_batch():
    clock = Clock()
    batcher = _internals.TurnBatcher(clock)
    flushed: list = []
    connections = [Flaky(False, flushed), Flaky(True, flushed), Flaky(False, flushed)]
    for c in connections:
        batcher.schedule(c)
    clock.advance(0)
    assert flushed == [connections[0], connections[2]]
    batcher.schedule(connections[0])
    clock.advance(0)
    assert flushed[-1] is connections[0]


def test_discarding_input_falls_back_when_autobahn_changed():
    class NoBuffer:
        pass

    protocol = NoBuffer()
    _internals.discard_input(protocol)
    assert not _internals._discard_input
    assert not hasattr(protocol, "data")

    class WithBuffer:
        data = b"unparsed"

    _internals._discard_input = True
    _internals._fast_frames = True
    _internals._take_results = True
    buffered = WithBuffer()
    _internals.discard_input(buffered)
    assert buffered.data == b""


def _frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes = b"\x11\x22\x33\x44"):
    import struct

    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Parsed:
    """What Autobahn's parser was handed (the MRO's next dataReceived)."""

    def dataReceived(self, data: bytes) -> None:
        self.passed.append(data)


class FrameProtocol(_internals.FastFramesMixin, Parsed):
    STATE_OPEN, STATE_CLOSING, STATE_CLOSED = 1, 2, 3

    def __init__(self) -> None:
        self.state = self.STATE_OPEN
        self.data = b""
        self.current_frame = None
        self.inside_message = False
        self._perMessageCompress = None
        self.autoPingTimeoutCall = None
        self._listeners = None
        self.applyMask = True
        self.logOctets = self.logFrames = False
        self.trackedTimings = None
        self.maxFramePayloadSize = self.maxMessagePayloadSize = 1000
        self.messages: list[bytes] = []
        self.passed: list[bytes] = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(payload)


def test_small_text_frames_skip_the_parser_and_the_rest_goes_to_it_in_order():
    protocol = FrameProtocol()
    ping = _frame(b"hi", opcode=0x9)
    data = _frame(b'{"a": 1}') + _frame("é€".encode() * 100) + ping + _frame(b"after")
    protocol.dataReceived(data)
    assert protocol.messages == [b'{"a": 1}', "é€".encode() * 100]
    assert protocol.passed == [ping + _frame(b"after")]


@pytest.mark.parametrize(
    "frame",
    [
        _frame(b"\xed\xa0\x80"),  # a surrogate: invalid UTF-8
        _frame(b"bin", opcode=0x2),
        _frame(b"part", fin=False),
        _frame(b"x" * 2000),  # over the frame limit: Autobahn closes with 1009
        _frame(b'{"a": 1}')[:-1],  # incomplete
        b"\x81\x05hello",  # unmasked
    ],
)
def test_frames_the_fast_path_does_not_take_go_to_the_parser(frame):
    protocol = FrameProtocol()
    protocol.dataReceived(frame + _frame(b"next"))
    assert protocol.messages == []
    assert protocol.passed == [frame + _frame(b"next")]


def test_nothing_skips_the_parser_while_it_holds_part_of_a_frame():
    protocol = FrameProtocol()
    protocol.data = b"\x81"
    protocol.dataReceived(_frame(b"x"))
    assert protocol.messages == []


def test_input_after_a_close_in_the_middle_of_a_read_is_dropped():
    protocol = FrameProtocol()

    def close(payload: bytes, isBinary: bool) -> None:
        protocol.state = protocol.STATE_CLOSED

    protocol.onMessage = close  # type: ignore[method-assign]
    protocol.dataReceived(_frame(b"a") + _frame(b"b"))
    assert protocol.passed == []


def test_frames_go_through_autobahn_when_it_changed():
    protocol = FrameProtocol()
    del protocol.inside_message
    data = _frame(b"x")
    protocol.dataReceived(data)
    assert protocol.passed == [data]
    assert not _internals.fast_frames_enabled()


def test_unmask_matches_the_rfc():
    import os

    for n in (0, 1, 3, 4, 5, 127, 1000):
        payload, mask = os.urandom(n), os.urandom(4)
        assert _internals.unmask(payload, mask) == bytes(
            b ^ mask[i % 4] for i, b in enumerate(payload)
        )


def test_autobahn_debug_log_arguments_are_built_only_when_written():
    import pprint

    import autobahn.util
    import autobahn.websocket.protocol as protocol

    assert _internals.lazy_autobahn_log_arguments()
    assert _internals.lazy_autobahn_log_arguments()  # idempotent
    options = [("openHandshakeTimeout", 5, "Factory")]
    lazy = protocol.pformat(options)
    assert str(lazy) == f"{lazy}" == pprint.pformat(options)
    method = protocol.WebSocketServerProtocol.sendData
    assert f"{protocol.hltype(method)}" == autobahn.util.hltype(method)


def test_a_moved_autobahn_log_function_stays_as_it_is(monkeypatch):
    import autobahn.twisted.websocket as websocket

    def hlval(value, color="white", bold=True):
        return str(value)

    monkeypatch.setattr(websocket, "hlval", hlval)
    assert not _internals.lazy_autobahn_log_arguments()
    assert websocket.hlval is hlval


def test_the_result_of_a_deferred_that_has_succeeded_is_taken():
    from twisted.internet.defer import Deferred, fail, succeed

    pending = object()
    assert _internals.fired_result(succeed(3), pending) == 3
    assert _internals.fired_result(Deferred(), pending) is pending
    failed = fail(ValueError("no"))
    assert _internals.fired_result(failed, pending) is pending
    failed.addErrback(lambda _: None)
    paused: Deferred[int] = Deferred()
    paused.pause()
    paused.callback(1)
    assert _internals.fired_result(paused, pending) is pending


def test_deferred_results_are_left_alone_when_twisted_changed():
    class Renamed:
        called = True
        result = 3

    pending = object()
    assert _internals.fired_result(Renamed(), pending) is pending  # type: ignore[arg-type]
    assert not _internals._take_results


def test_protocol_options_live_on_the_class_as_autobahn_would_copy_them():
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    def accept(offers):
        return None

    factory = WebSocketServerFactory()
    factory.setProtocolOptions(perMessageCompressionAccept=accept, maxFramePayloadSize=123)
    cls = _internals.protocol_with_options(WebSocketServerProtocol, factory)
    connection = cls()
    assert connection.maxFramePayloadSize == 123
    assert connection.perMessageCompressionAccept is accept  # not a bound method
    assert set(WebSocketServerProtocol.CONFIG_ATTRS) <= set(vars(cls))


def test_protocol_options_are_copied_when_autobahn_moved_them():
    class Moved:
        pass

    assert _internals.protocol_with_options(Moved, object()) is Moved
