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
    buffered = WithBuffer()
    _internals.discard_input(buffered)
    assert buffered.data == b""
