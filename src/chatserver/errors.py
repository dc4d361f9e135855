"""Errors that become error replies, or the end of a session, on the wire.

Each error carries a short, stable ``code`` that clients can branch on; the
human-readable ``message`` may change between releases. Nothing here knows
WebSocket close codes: the protocol maps an :class:`Ending` to one.
"""

from __future__ import annotations

import enum


class ChatError(Exception):
    """A request failed in a way the client should hear about.

    Raise it (or fail a Deferred with it) from a storage method or a custom
    action to send ``{"id": ..., "error": code, "message": message}``.
    """

    code = "error"

    def __init__(self, code: str | None = None, message: str = "") -> None:
        super().__init__(message or code or self.code)
        if code is not None:
            self.code = code
        self.message = message


class Ending(enum.Enum):
    """Why a session ends; the protocol turns each into a close code."""

    #: The client broke a rule (not authorized, too many connections, flooding).
    POLICY = "policy"
    #: The server is stopping.
    GOING_AWAY = "goingAway"
    #: An operator ended the user's sessions (user removed, token replaced).
    REVOKED = "revoked"
    #: The credentials the session was opened with have expired.
    EXPIRED = "expired"
    #: A message was too big, or had too many fragments.
    TOO_BIG = "tooBig"


class SessionRefused(ChatError):
    """The request is answered by ending the session, not by a reply."""

    def __init__(self, reason: str, ending: Ending = Ending.POLICY) -> None:
        super().__init__("closed", reason)
        self.ending = ending


# Stable error codes, for clients and tests to import rather than spell.
INVALID_REQUEST = "invalidRequest"
INVALID_ID = "invalidId"
UNKNOWN_ACTION = "unknownAction"
AUTHORIZATION_FAILED = "authorizationFailed"
INVALID_MESSAGE = "invalidMessage"
INVALID_QUERY = "invalidQuery"
NOT_GROUP_MEMBER = "notGroupMember"
NOT_FOUND = "notFound"
NOT_SUPPORTED = "notSupported"
CONFLICT = "conflict"
STORAGE_ERROR = "storageError"
ACTION_FAILED = "actionFailed"
INTERNAL_ERROR = "internalError"
RATE_LIMITED = "rateLimited"
TOO_LARGE = "tooLarge"
STORAGE_TIMEOUT = "storageTimeout"

#: Every code a client may receive, for documentation and tests.
ERROR_CODES = (
    INVALID_REQUEST,
    INVALID_ID,
    UNKNOWN_ACTION,
    AUTHORIZATION_FAILED,
    INVALID_MESSAGE,
    INVALID_QUERY,
    NOT_GROUP_MEMBER,
    NOT_FOUND,
    NOT_SUPPORTED,
    CONFLICT,
    STORAGE_ERROR,
    STORAGE_TIMEOUT,
    ACTION_FAILED,
    INTERNAL_ERROR,
    RATE_LIMITED,
    TOO_LARGE,
)
