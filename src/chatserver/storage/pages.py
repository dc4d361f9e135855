"""Paging helpers the shipped stores share: id pages, merged contact pages,
and the conversation-list cursor."""

from __future__ import annotations

import base64
import binascii
import heapq
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from chatserver.errors import INVALID_QUERY, ChatError

#: A conversation's position: its last message's ``createdAt``, then its
#: insertion sequence number (the tie-break).
Position = tuple[str, int]


def page_limit(query: dict[str, Any], default: int = 100) -> int:
    """``query["limit"]`` as a non-negative int (the server has validated it)."""
    return max(0, int(query.get("limit", default)))


def page_after(query: dict[str, Any]) -> str | None:
    """``query["after"]`` as a string, or ``None`` for the first page."""
    after = query.get("after")
    return None if after is None else str(after)


def slice_after(ordered: Sequence[str], after: str | None, limit: int) -> Sequence[str]:
    """The (at most) ``limit`` items of the sorted ``ordered`` that follow ``after``."""
    start = 0 if after is None else bisect_right(ordered, after)
    return ordered[start : start + limit]


def merge_ids(sources: Iterable[Iterable[str]], exclude: str, limit: int) -> list[str]:
    """The first ``limit`` distinct ids of several sorted sources, without ``exclude``.

    Each source needs to hold only its first ``limit + 1`` ids after the
    page's start: an id of the answer has at most ``limit - 1`` other ids of
    the answer, and ``exclude``, before it in its own source.
    """
    page: list[str] = []
    previous = None
    for user_id in heapq.merge(*sources):
        if user_id == previous or user_id == exclude:
            continue
        previous = user_id
        page.append(user_id)
        if len(page) == limit:
            break
    return page


def encode_position(position: Position) -> str:
    """The opaque ``next`` cursor of a conversation page ending at ``position``."""
    return base64.urlsafe_b64encode(orjson.dumps(list(position))).decode("ascii")


def decode_position(cursor: object) -> Position:
    """The position that :func:`encode_position` encoded into ``cursor``.

    :raise ChatError: ``invalidQuery``, if ``cursor`` is not such a cursor.
    """
    try:
        if not isinstance(cursor, str) or len(cursor) > 1024:
            raise ValueError(cursor)
        created_at, seq = orjson.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if not isinstance(created_at, str) or type(seq) is not int:
            raise ValueError(cursor)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise ChatError(INVALID_QUERY, "before is not a cursor from getConversations") from None
    return created_at, seq


def conversation_page(entries: list[tuple[Position, dict[str, Any]]], limit: int) -> dict[str, Any]:
    """The reply of ``getConversations``, from up to ``limit + 1`` entries,
    newest first: one more than the page says whether there is a next one."""
    page = entries[:limit]
    more = len(entries) > limit and page
    return {
        "conversations": [conversation for _, conversation in page],
        "next": encode_position(page[-1][0]) if more else None,
    }
