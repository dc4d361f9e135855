"""JSON on the wire: parsing client frames, encoding replies and pushes.

Pure functions, no I/O: the protocol feeds them payloads and sends what they
return. Everything a client sends is validated here, once, before any handler
or storage sees it, so that nothing stored can fail to encode later: a request
holding a lone surrogate, ``NaN``/``Infinity``, a number beyond ±(2^53-1)
(the integers a JavaScript client can represent) or nesting deeper than
:data:`MAX_DEPTH` is refused.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import orjson

from chatserver import errors

MAX_SAFE_INTEGER = 2**53 - 1
#: The deepest nesting of objects and arrays a request may hold.
MAX_DEPTH = 32
MAX_REQUEST_ID_LENGTH = 128
MAX_ACTION_LENGTH = 128

NOT_JSON = "frames must be JSON objects"
UNSAFE_JSON = (
    "requests may not hold lone surrogates, NaN or Infinity, numbers beyond "
    f"±(2^53-1) or nesting deeper than {MAX_DEPTH}"
)

# Only a payload that could break a rule is walked: one with more openers than
# MAX_DEPTH, or a run of 16 digits or an exponent of two digits (a number that
# may exceed 2^53). Everything else is safe as orjson parsed it.
_MAYBE_BIG_NUMBER = re.compile(rb"\d{16}|[eE]\+?\d\d")
# The same test without the regex engine, which tries its alternation at every
# byte (about 60 ns a byte): a copy of the payload with every digit made "0",
# "E" made "e", "+" kept and every other byte made "." holds b"0" * 16, b"e00"
# or b"e+00" exactly where the pattern above matches.
_shapes = bytearray(b"." * 256)
_shapes[ord("0") : ord("9") + 1] = b"0" * 10
_shapes[ord("e")] = _shapes[ord("E")] = ord("e")
_shapes[ord("+")] = ord("+")
_NUMBER_SHAPES = bytes(_shapes)
del _shapes


def _maybe_big_number(payload: bytes) -> bool:
    """Whether ``payload`` may hold a number beyond ±(2^53-1): what
    :data:`_MAYBE_BIG_NUMBER` finds, about four times faster."""
    shapes = payload.translate(_NUMBER_SHAPES)
    return b"0000000000000000" in shapes or b"e00" in shapes or b"e+00" in shapes


class Request(NamedTuple):
    """A well-formed request: ``{"type": action, "data": data, "id": id}``."""

    id: int | str
    action: str
    data: Any


class Refusal(NamedTuple):
    """A frame answered with an error reply (``id`` is None if it had none)."""

    id: int | str | None
    code: str
    message: str


class Unreadable(NamedTuple):
    """A frame that is not a JSON object: the connection is closed (1007)."""

    reason: str


def _safe(value: object) -> bool:
    """Whether ``value``, as orjson parsed it, keeps every rule."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if depth >= MAX_DEPTH:
                return False
            values = item.values() if kind is dict else item
            stack.extend((v, depth + 1) for v in values)
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return False
        elif kind is float and not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
            return False  # orjson reads integers beyond 64 bits as floats
    return True


def _valid_id(value: Any) -> bool:
    if type(value) is str:
        return len(value) <= MAX_REQUEST_ID_LENGTH
    return type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def _salvage(payload: bytes) -> Refusal | Unreadable:
    """The answer to a frame orjson refused: if the lenient stdlib parser
    reads a JSON object, the client hears why by id (when the id itself is
    safe to send back); anything else is unreadable."""
    try:
        frame = json.loads(payload)
    except (ValueError, RecursionError):
        return Unreadable(NOT_JSON)
    if type(frame) is not dict:
        return Unreadable(NOT_JSON)
    request_id = frame.get("id")
    if type(request_id) is str:
        try:
            request_id.encode()
        except UnicodeEncodeError:  # a lone surrogate in the id itself
            request_id = None
    if not _valid_id(request_id):
        return Refusal(None, errors.INVALID_ID, "id must be an integer or a short string")
    return Refusal(request_id, errors.INVALID_REQUEST, UNSAFE_JSON)


def parse_request(payload: bytes, max_bytes: int = 0) -> Request | Refusal | Unreadable:
    """Parse and validate one text frame.

    :param max_bytes: the largest request answered normally (0: any); a
        larger one is refused with ``tooLarge``.
    :return: the :class:`Request`; or a :class:`Refusal` to answer with an
        error reply; or :class:`Unreadable` when the frame is not a JSON object.
    """
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _salvage(payload)
    if type(frame) is not dict:
        return Unreadable(NOT_JSON)
    request_id: Any = frame.get("id")
    if not _valid_id(request_id):
        return Refusal(None, errors.INVALID_ID, "id must be an integer or a short string")
    if max_bytes and len(payload) > max_bytes:
        return Refusal(request_id, errors.TOO_LARGE, f"requests are limited to {max_bytes} bytes")
    if (
        payload.count(b"{") + payload.count(b"[") > MAX_DEPTH or _maybe_big_number(payload)
    ) and not _safe(frame):
        return Refusal(request_id, errors.INVALID_REQUEST, UNSAFE_JSON)
    action = frame.get("type")
    if type(action) is not str or not 0 < len(action) <= MAX_ACTION_LENGTH:
        return Refusal(request_id, errors.INVALID_REQUEST, "type must name an action")
    data = frame.get("data")
    return Request(request_id, action, {} if data is None else data)


def parse_document(payload: bytes) -> Any:
    """Parse a JSON document a client sent outside a frame (an HTTP API
    request's body) under the same rules as :func:`parse_request`.

    :raise ValueError: when ``payload`` is not JSON, or breaks a rule; the
        message says which, in words a client can be shown.
    """
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ValueError("the body must be a JSON document in UTF-8") from None
    if (
        payload.count(b"{") + payload.count(b"[") > MAX_DEPTH or _maybe_big_number(payload)
    ) and not _safe(value):
        raise ValueError(UNSAFE_JSON)
    return value


def parse_binary(payload: bytes) -> Refusal | Unreadable:
    """A binary frame: refused by id when it is JSON carrying one, else unreadable."""
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        frame = None
    if type(frame) is dict and _valid_id(frame.get("id")):
        return Refusal(frame["id"], errors.INVALID_REQUEST, "binary frames are not supported")
    return Unreadable("binary frames are not supported")


def _default(value: object) -> object:
    # Storage may hand back ObjectIds, sets, bytes...: send what a client can read.
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def encode(value: Any) -> bytes:
    """Serialise ``value`` as one UTF-8 JSON document.

    :raise TypeError: for what JSON cannot carry (integers beyond 64 bits,
        lone surrogates, non-string keys).
    """
    return orjson.dumps(value, default=_default)


def decode(payload: bytes) -> Any:
    """Parse one JSON document (what the server itself wrote, or a client's
    frame without validation).

    :raise ValueError: when ``payload`` is not JSON.
    """
    return orjson.loads(payload)


def reply(request_id: object, data: object) -> bytes:
    """The frame answering request ``request_id`` with ``data``."""
    return encode({"id": request_id, "data": data})


def error_reply(request_id: object, code: str, message: str) -> bytes:
    """The frame answering request ``request_id`` with error ``code``."""
    return encode({"id": request_id, "error": code, "message": message})


def push(event_type: str, data: object) -> bytes:
    """A server-initiated frame: it has a ``type`` and no ``id``."""
    return encode({"type": event_type, "data": data})
