"""``getConversations``: the conversation list, newest first, with unread counts.

Request ``{"limit"?: 20, "before"?: cursor}``; reply ``{"conversations":
[{"with", "isGroup", "last", "unread"}], "next": cursor | null}``. Served by a
store providing :class:`~chatserver.interfaces.IConversationStore` (a
per-user conversation index, never a scan of messages); with any other store
the action answers ``notSupported``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail

from chatserver import errors
from chatserver.errors import ChatError
from chatserver.handlers.chat import ChatHandler, signed_in
from chatserver.interfaces import IConversationStore
from chatserver.session import Session

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_CURSOR_LENGTH = 2048


class Conversations:
    """The ``getConversations`` action."""

    def __init__(self, handler: ChatHandler, store: object) -> None:
        self._handler = handler
        self._store = store if IConversationStore.providedBy(store) else None

    def __call__(self, session: Session, data: object) -> Deferred[Any]:
        if self._store is None:
            return fail(
                ChatError(errors.NOT_SUPPORTED, "this server's storage has no conversations")
            )
        if data is None:
            data = {}
        if type(data) is not dict:
            raise ChatError(errors.INVALID_QUERY, "getConversations data must be an object")
        limit = data.get("limit", DEFAULT_PAGE)
        if type(limit) is not int or limit < 1:
            raise ChatError(errors.INVALID_QUERY, "limit must be a positive integer")
        before = data.get("before")
        if before is not None and (
            type(before) is not str or not 0 < len(before) <= MAX_CURSOR_LENGTH
        ):
            raise ChatError(errors.INVALID_QUERY, "before must be the `next` of an earlier page")
        query = {"userId": signed_in(session), "limit": min(limit, MAX_PAGE), "before": before}
        return self._handler.call_storage(
            "getConversations",
            self._store.getConversations,
            query,
        )
