"""Errors that become error replies (or closes) on the wire.

Each error carries a short, stable ``code`` that clients can branch on; the
human-readable ``message`` may change between releases.
"""

from __future__ import annotations


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


class ConnectionRefused(ChatError):
    """The request is answered by closing the connection, not by a reply."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__("closed", reason)
        self.close_code = close_code


# Stable error codes, for clients and tests to import rather than spell.
INVALID_REQUEST = "invalidRequest"
INVALID_ID = "invalidId"
UNKNOWN_ACTION = "unknownAction"
AUTHORIZATION_FAILED = "authorizationFailed"
INVALID_MESSAGE = "invalidMessage"
INVALID_QUERY = "invalidQuery"
NOT_GROUP_MEMBER = "notGroupMember"
NOT_FOUND = "notFound"
STORAGE_ERROR = "storageError"
ACTION_FAILED = "actionFailed"
INTERNAL_ERROR = "internalError"
RATE_LIMITED = "rateLimited"
TOO_LARGE = "tooLarge"
STORAGE_TIMEOUT = "storageTimeout"

# WebSocket close codes (RFC 6455, section 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
