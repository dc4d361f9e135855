"""A raw WebSocket client on a blocking socket, for tests that play an attacker.

It sends whatever frames it is told to — fragments, control frames, reserved
bits, half-sent handshakes — and reads the server's frames back one by one.
Blocking sockets and threads, not the reactor: the server under attack runs in
its own process, and a test can drive several of these at once.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from typing import Any

import orjson

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class Closed(Exception):
    """The server closed the connection (``code`` and ``reason`` if it said)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if payload else b""
    return head + mask + masked


def handshake(
    host: str, port: int, path: str = "/", headers: dict[str, str] | None = None
) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawWebSocket:
    """One client connection, opened with a real handshake."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        path: str = "/",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.sock.sendall(handshake(host, port, path, headers))
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        if self.status != 101:
            raise Closed(None, head.decode("latin-1"))
        self._next_id = 0
        self.pushes: list[dict[str, Any]] = []  # seen while waiting for a reply

    # -- bytes ---------------------------------------------------------------

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            raise Closed(None, "reset") from None
        if not chunk:
            raise Closed(None, "connection ended")
        self._buffer += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.sock.sendall(frame(opcode, payload, **kwargs))

    # -- frames --------------------------------------------------------------

    def recv_frame(self) -> tuple[int, bytes]:
        """The next frame from the server, as ``(opcode, payload)``."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x0F, self._read(n)

    def recv_json(self, *, answer_pings: bool = True) -> Any:
        """The next text frame, parsed; a close frame raises :class:`Closed`."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == TEXT:
                return orjson.loads(payload)
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(code, payload[2:].decode("utf-8", "replace"))
            if opcode == PING and answer_pings:
                self.send_frame(PONG, payload)

    def wait_closed(self, timeout: float = 10.0) -> Closed:
        """Read until the server closes; return how (frames before it are skipped)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self.recv_json(answer_pings=False)
        except Closed as closed:
            return closed
        except (ConnectionResetError, BrokenPipeError):
            return Closed(None, "reset")

    # -- requests ------------------------------------------------------------

    def send_request(self, action: str, data: Any = None, request_id: Any = None) -> Any:
        if request_id is None:
            self._next_id += 1
            request_id = self._next_id
        self.send_frame(TEXT, orjson.dumps({"type": action, "data": data or {}, "id": request_id}))
        return request_id

    def reply(self, request_id: Any) -> Any:
        """Read frames until the reply to ``request_id``; pushes on the way
        are kept for :meth:`push`."""
        while True:
            message = self.recv_json()
            if "type" not in message and message.get("id") == request_id:
                return message
            if message.get("type"):
                self.pushes.append(message)

    def request(self, action: str, data: Any = None) -> Any:
        return self.reply(self.send_request(action, data))

    def push(self, event_type: str) -> Any:
        """The next push of ``event_type`` (kept earlier, or read now)."""
        for kept in self.pushes:
            if kept["type"] == event_type:
                self.pushes.remove(kept)
                return kept["data"]
        while True:
            message = self.recv_json()
            if message.get("type") == event_type:
                return message["data"]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Pair:
    """Two signed-in users sending each other messages, timing round trips:
    the well-behaved clients whose service an attack must not degrade."""

    def __init__(self, port: int, credentials: tuple[dict[str, Any], dict[str, Any]]) -> None:
        self.sender = RawWebSocket(port)
        self.receiver = RawWebSocket(port)
        me = self.sender.request("authorize", credentials[0])["data"]
        other = self.receiver.request("authorize", credentials[1])["data"]
        self.to = str(other.get("id", other.get("_id")))
        self.me = str(me.get("id", me.get("_id")))

    def round_trips(self, count: int, interval: float = 0.0) -> list[float]:
        """Send ``count`` messages, one every ``interval`` seconds at most (a
        user's pace, within the default rate limit); return the seconds from
        each send to its push reaching the receiver (which follows the ack)."""
        times = []
        next_send = time.monotonic()
        for n in range(count):
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing a user's typing, not synchronisation
            next_send += interval
            started = time.perf_counter()
            request_id = self.sender.send_request("create", {"to": self.to, "text": f"m{n}"})
            reply = self.sender.reply(request_id)
            assert "data" in reply, reply
            pushed = self.receiver.push("chatMessage")
            assert pushed["_id"] == reply["data"]["_id"]
            times.append(time.perf_counter() - started)
        return times

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
