"""In-memory stand-ins for the network, for unit tests on a fake clock.

They replace what is outside the code under test (a socket, a client), never
our own code: the protocol under test is the real one, fed bytes through
Twisted's ``StringTransport``, on ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatserver import Limits, MemoryStorage, build_server
from chatserver.errors import Ending
from chatserver.protocol import ChatServerProtocol
from chatserver.wiring import ChatServer
from tests.rawws import TEXT, frame, handshake

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Link:
    """A :class:`~chatserver.session.SessionLink` that records what it is told."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.payloads: list[bytes] = []
        self.ended: list[tuple[Ending, str]] = []

    def write_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send_payload(self, payload: bytes) -> None:
        self.payloads.append(payload)

    def end_session(self, ending: Ending, reason: str) -> None:
        self.ended.append((ending, reason))


def demo_storage() -> MemoryStorage:
    storage = MemoryStorage()
    for user in ("alice", "bob", "carol"):
        storage.add_user(user, user.title(), f"{user}-token")
    storage.add_group("team", ["alice", "bob"])
    return storage


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The server's (unmasked) frames in ``data``."""
    frames = []
    while data:
        b0, b1 = data[0], data[1]
        n, i = b1 & 0x7F, 2
        if n == 126:
            (n,) = struct.unpack("!H", data[2:4])
            i = 4
        elif n == 127:
            (n,) = struct.unpack("!Q", data[2:10])
            i = 10
        frames.append((b0 & 0x0F, data[i : i + n]))
        data = data[i + n :]
    return frames


class Connection:
    """A real :class:`ChatServerProtocol` on a ``StringTransport``: a client
    that sends frames and reads what the server wrote."""

    def __init__(self, app: ChatServer, clock: Clock) -> None:
        self.clock = clock
        self.transport = StringTransport(peerAddress=PEER)
        self.protocol: ChatServerProtocol = app.factory.buildProtocol(PEER)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(handshake("127.0.0.1", 80))
        assert self.transport.value().startswith(b"HTTP/1.1 101"), self.transport.value()
        self.transport.clear()
        self._next_id = 0

    def send(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.protocol.dataReceived(frame(opcode, payload, **kwargs))

    def request(self, action: str, data: Any = None, request_id: Any = None) -> Any:
        if request_id is None:
            self._next_id += 1
            request_id = self._next_id
        self.send(TEXT, orjson.dumps({"type": action, "data": data or {}, "id": request_id}))
        return request_id

    def received(self) -> list[tuple[int, bytes]]:
        """Every frame written since the last call (after this turn's flush)."""
        self.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return parse_frames(data)

    def messages(self) -> list[Any]:
        return [orjson.loads(p) for opcode, p in self.received() if opcode == TEXT]

    def close_frame(self) -> tuple[int, str] | None:
        for opcode, payload in self.received():
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        return None


def server(clock: Clock | None = None, **kwargs: Any) -> tuple[ChatServer, Clock]:
    """A server on a fake clock over the demo store."""
    clock = clock or Clock()
    kwargs.setdefault("limits", Limits(rate=0))
    storage = kwargs.pop("storage", None) or demo_storage()
    return build_server(storage, reactor=clock, **kwargs), clock
