"""JSON on the wire: decoding client frames and encoding replies and pushes.

orjson is the fast path. The stdlib ``json`` module is only the fallback for
the odd frame orjson refuses (numbers out of range, very deep nesting), so that
such a frame can still be answered by id instead of closing the connection.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson


def _default(value: object) -> object:
    # Storage may hand back ObjectIds, sets, bytes...: send what a client can read.
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def encode(value: Any) -> bytes:
    """Serialise ``value`` as one UTF-8 JSON frame."""
    try:
        return orjson.dumps(value, default=_default)
    except TypeError:
        # Integers beyond 64 bits, or non-string keys: rare, so take the slow path.
        return json.dumps(value, default=_default, ensure_ascii=False).encode()


def decode(payload: bytes) -> Any:
    """Parse one frame.

    @raise ValueError: when ``payload`` is not JSON.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise ValueError("not JSON") from e


def reply(request_id: object, data: object) -> bytes:
    """The frame answering request ``request_id`` with ``data``."""
    return encode({"id": request_id, "data": data})


def error_reply(request_id: object, code: str, message: str) -> bytes:
    """The frame answering request ``request_id`` with error ``code``."""
    return encode({"id": request_id, "error": code, "message": message})


def push(event_type: str, data: object) -> bytes:
    """A server-initiated frame: it has a ``type`` and no ``id``."""
    return encode({"type": event_type, "data": data})


class Timestamps:
    """Formats ``createdAt`` as node-chat-server does: ``2026-11-24T23:27:50.298Z``.

    The date-and-time part changes once a second, so it is formatted once a
    second rather than once a message.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, seconds: float) -> str:
        millis = int(seconds * 1000)
        second, millis = divmod(millis, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{millis:03d}Z"
