"""``getUsersAndGroups``: whom the signed-in user can talk to, a page at a time.

After node-chat-server's example action, made safe for a large deployment:
each call costs O(page) in the store (never "load every user"), and it lists
only the caller's contacts — users who share a group or a conversation with
them — and the caller's groups, unless the server runs with ``--directory
all`` (for demos: every user the store knows, and everyone online here).

Request ``{"limit"?: 100, "after"?: cursor}``; reply ``{"users": [{"id",
"name", "online"}], "groups": [{"id", "name"}], "next": cursor | null}``.
"""

from __future__ import annotations

import base64
import bisect
from typing import Any

import orjson
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime

from chatserver import errors
from chatserver.delivery import SessionRegistry
from chatserver.errors import ChatError
from chatserver.interfaces import IUserDirectory
from chatserver.session import Session

CONTACTS = "contacts"
ALL = "all"
MODES = (CONTACTS, ALL)
DEFAULT_PAGE = 100
MAX_PAGE = 500
MAX_CURSOR_LENGTH = 2048
# Seconds the sorted list of users online here is reused (``all`` mode).
ONLINE_SNAPSHOT_SECONDS = 1.0


def encode_cursor(state: list[object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode()


def decode_cursor(cursor: object) -> list[Any]:
    """``[users_after, users_done, groups_after, groups_done]`` from a cursor."""
    if type(cursor) is not str or len(cursor) > MAX_CURSOR_LENGTH:
        raise ChatError(errors.INVALID_QUERY, "after must be the `next` of an earlier page")
    try:
        state = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        state = None
    if (
        type(state) is not list
        or len(state) != 4
        or not all(s is None or type(s) is str for s in state[0::2])
        or not all(type(s) is bool for s in state[1::2])
    ):
        raise ChatError(errors.INVALID_QUERY, "after must be the `next` of an earlier page")
    return state


class UsersAndGroups:
    """The ``getUsersAndGroups`` action."""

    def __init__(
        self,
        directory: IUserDirectory | None,
        registry: SessionRegistry,
        online: Any,
        clock: IReactorTime,
        mode: str = CONTACTS,
    ) -> None:
        """
        :param directory: the store, if it provides :class:`IUserDirectory`.
        :param registry: this node's sessions (``all`` mode lists them).
        :param online: ``online(user_ids) -> {id: bool}``, cluster-wide.
        :param mode: :data:`CONTACTS` or :data:`ALL`.
        """
        if mode not in MODES:
            raise ValueError(f"directory mode must be one of {MODES}, not {mode!r}")
        self._directory = directory
        self._registry = registry
        self._online = online
        self._clock = clock
        self.mode = mode
        self._snapshot: list[str] = []
        self._snapshot_at = float("-inf")

    async def __call__(self, session: Session, data: object) -> dict[str, Any]:
        if type(data) is not dict:
            data = {}
        limit = data.get("limit", DEFAULT_PAGE)
        if type(limit) is not int or limit < 1:
            raise ChatError(errors.INVALID_QUERY, "limit must be a positive integer")
        limit = min(limit, MAX_PAGE)
        cursor = data.get("after")
        state: list[Any] = [None, False, None, False] if cursor is None else decode_cursor(cursor)
        users_after: str | None = state[0]
        users_done: bool = state[1]
        groups_after: str | None = state[2]
        groups_done: bool = state[3]
        me = session.user_id
        users: list[dict[str, Any]] = []
        groups: list[dict[str, Any]] = []
        if not users_done:
            users = await self._users(me, users_after, limit + 1)
            users_done = len(users) <= limit
            users = users[:limit]
            if users:
                users_after = users[-1]["id"]
        if not groups_done:
            groups = await self._groups(me, groups_after, limit + 1)
            groups_done = len(groups) <= limit
            groups = groups[:limit]
            if groups:
                groups_after = groups[-1]["id"]
        online = self._online([u["id"] for u in users])
        listed = [
            {"id": u["id"], "name": u.get("name") or u["id"], "online": online.get(u["id"], False)}
            for u in users
        ]
        done = users_done and groups_done
        return {
            "users": listed,
            "groups": [{"id": g["id"], "name": g.get("name") or g["id"]} for g in groups],
            "next": None
            if done
            else encode_cursor([users_after, users_done, groups_after, groups_done]),
        }

    async def _users(self, me: str | None, after: str | None, limit: int) -> list[dict[str, Any]]:
        query = {"userId": me, "after": after, "limit": limit}
        known: list[dict[str, Any]] = []
        if self._directory is not None:
            method = self._directory.listUsers if self.mode == ALL else self._directory.listContacts
            page: list[dict[str, Any]] = await maybeDeferred(method, query)  # type: ignore[call-overload]
            known = [{"id": str(u["id"]), "name": u.get("name")} for u in page]
        if self.mode == CONTACTS:
            return [u for u in known if u["id"] != me]
        # Everyone online here too (with --dev-auth, the store knows no one).
        merged = {u["id"]: u for u in known}
        for user_id in self._online_after(after, limit):
            merged.setdefault(user_id, {"id": user_id, "name": user_id})
        if me is not None:
            merged.pop(me, None)
        return [merged[k] for k in sorted(merged)][:limit]

    def _online_after(self, after: str | None, limit: int) -> list[str]:
        now = self._clock.seconds()
        if now - self._snapshot_at >= ONLINE_SNAPSHOT_SECONDS:
            self._snapshot = sorted(self._registry.user_ids())
            self._snapshot_at = now
        start = 0 if after is None else bisect.bisect_right(self._snapshot, after)
        return self._snapshot[start : start + limit]

    async def _groups(self, me: str | None, after: str | None, limit: int) -> list[dict[str, Any]]:
        if self._directory is None:
            return []
        query = {"userId": me, "after": after, "limit": limit}
        page: list[dict[str, Any]] = await maybeDeferred(self._directory.listGroups, query)  # type: ignore[call-overload]
        return [{"id": str(g["id"]), "name": g.get("name")} for g in page]
