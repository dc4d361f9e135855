"""A minimal asyncio WebSocket client (RFC 6455), cheap per frame.

The load generator must cost less per frame than the server it measures, or
it measures itself. This client does only what a chat client needs: the
opening handshake, text frames out (masked, as clients must), text frames in
(unmasked, as servers send them, fragmented or not), pong for ping, and the
closing frame. No extensions are offered, so none are negotiated.

Each connection is an ``asyncio.Protocol`` that hands every complete text
message to its sink's ``text_received(client, payload)``: no task, queue or
future per frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from random import getrandbits
from typing import Protocol, cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONTINUATION = 0x0
_OP_TEXT = 0x1
_OP_BINARY = 0x2
_OP_CLOSE = 0x8
_OP_PING = 0x9
_OP_PONG = 0xA
MAX_HANDSHAKE_BYTES = 16384


class HandshakeFailed(Exception):
    """The server did not upgrade the connection to a WebSocket."""


class Sink(Protocol):
    """Where a client's messages and its end go."""

    def text_received(self, client: WebSocketClient, payload: bytes) -> None: ...

    def connection_ended(self, client: WebSocketClient, error: Exception | None) -> None: ...


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame carrying ``payload``, masked with a fresh key.

    The XOR runs on two big integers, one C loop each way, rather than a
    Python loop over bytes.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = getrandbits(32).to_bytes(4, "big")
    if not n:
        return header + key
    keystream = (key * ((n >> 2) + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")
    return header + key + masked


def parse_url(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path`` → (host, port, path)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs are supported, not {url!r}")
    if parts.hostname is None:
        raise ValueError(f"no host in {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


class WebSocketClient(asyncio.Protocol):
    """One client connection.

    ``opened`` resolves once the handshake has succeeded (or fails with
    L{HandshakeFailed} or the connection's error). After that, every text
    message goes to ``sink.text_received``; ``sink`` may be swapped at any
    time.

    @ivar index: the user index this connection belongs to (set by its owner).
    @ivar user_id: the id the server authorized it as, once it has.
    @ivar outstanding: requests sent and not yet answered (kept by its owner).
    """

    __slots__ = (
        "_accept",
        "_buffer",
        "_fragments",
        "_handshake",
        "_host",
        "_key",
        "_path",
        "index",
        "opened",
        "outstanding",
        "sink",
        "transport",
        "user_id",
    )

    def __init__(self, sink: Sink, host: str, path: str, index: int) -> None:
        self.sink = sink
        self.index = index
        self.user_id: str | None = None
        self.outstanding = 0
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[WebSocketClient] = asyncio.get_running_loop().create_future()
        self._host = host
        self._path = path
        self._handshake: bytes | None = b""
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP connection's transport: a full, writable asyncio.Transport.
        self.transport = tcp = cast(asyncio.Transport, transport)
        request = (
            f"GET {self._path} HTTP/1.1\r\n"
            f"Host: {self._host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        tcp.write(request.encode())

    def send_text(self, payload: bytes) -> None:
        """Send one text message (``payload`` is UTF-8 JSON), once :attr:`opened` is done."""
        transport = self.transport
        assert transport is not None, "send_text before the connection was made"
        transport.write(_masked_frame(_OP_TEXT, payload))

    def close(self) -> None:
        """Send a closing frame (1000) and close the TCP connection."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self._handshake is None:
                transport.write(_masked_frame(_OP_CLOSE, b"\x03\xe8"))
            transport.close()

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            data = self._handshake_received(self._handshake, data)
            if not data:
                return
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        end = len(data)
        pos = 0
        sink = self.sink
        while end - pos >= 2:
            first = data[pos]
            length = data[pos + 1]
            if length & 0x80:
                self._fail("the server masked a frame")
                return
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                header = 10
            stop = pos + header + length
            if stop > end:
                break
            payload = data[pos + header : stop]
            pos = stop
            opcode = first & 0x0F
            if opcode == _OP_TEXT and first & 0x80:
                sink.text_received(self, payload)
            elif opcode in (_OP_TEXT, _OP_BINARY, _OP_CONTINUATION):
                self._fragment(first, opcode, payload)
            elif opcode == _OP_PING and self.transport is not None:
                self.transport.write(_masked_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                self.close()
                return
        if pos < end:
            self._buffer = data[pos:]

    def _fragment(self, first: int, opcode: int, payload: bytes) -> None:
        # Servers rarely fragment, but the protocol allows it.
        if opcode != _OP_CONTINUATION:
            self._fragments = [payload] if opcode == _OP_TEXT else None
        elif self._fragments is not None:
            self._fragments.append(payload)
        if first & 0x80 and self._fragments is not None:
            message = b"".join(self._fragments)
            self._fragments = None
            self.sink.text_received(self, message)

    def _handshake_received(self, handshake: bytes, data: bytes) -> bytes:
        buffered = handshake + data
        head, sep, rest = buffered.partition(b"\r\n\r\n")
        if not sep:
            if len(buffered) > MAX_HANDSHAKE_BYTES:
                self._fail("handshake response too long")
            self._handshake = buffered
            return b""
        self._handshake = None
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != b"101":
            self._fail(f"handshake refused: {lines[0].decode(errors='replace')}")
            return b""
        if headers.get(b"sec-websocket-accept") != self._accept:
            self._fail("handshake answered with a wrong Sec-WebSocket-Accept")
            return b""
        if not self.opened.done():
            self.opened.set_result(self)
        return rest

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(reason))
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or HandshakeFailed("connection closed during handshake"))
        self.sink.connection_ended(self, exc)
