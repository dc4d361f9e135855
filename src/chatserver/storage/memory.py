"""A complete in-memory :class:`IChatStorage`, for tests, demos and benchmarks."""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from itertools import count

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chatserver.interfaces import IChatStorage, IUserDirectory


def conversation_key(message_or_ids: Mapping | list, is_group: bool) -> tuple[str, ...]:
    """The key one conversation's messages are filed under.

    A group conversation is every message sent to the group; a direct one is
    keyed by the two user ids in sorted order, so both sides share it. The
    tags keep a user id from ever matching a group's key.
    """
    if isinstance(message_or_ids, list):
        a, b = message_or_ids
    else:
        a, b = message_or_ids["from"], message_or_ids["to"]
    if is_group:
        return ("group", b)
    return ("direct", a, b) if a <= b else ("direct", b, a)


def _created_at(message: Mapping) -> str:
    return message["createdAt"]


@implementer(IChatStorage, IUserDirectory)
class MemoryStorage:
    """Keeps users, groups and messages in dicts; nothing survives a restart.

    Messages are indexed by conversation, so a history query costs
    O(skip + limit) whatever else is stored.
    """

    def __init__(
        self,
        users: Mapping[str, Mapping] | None = None,
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """
        @param users: token → user object (which must carry ``id`` or ``_id``).
        @param groups: group id → member ids.
        """
        self._users_by_token: dict[str, dict] = {}
        self._groups: dict[str, list[str]] = {}
        self._messages: dict[str, dict] = {}
        self._conversations: dict[tuple[str, ...], list[dict]] = {}
        self._by_client_id: dict[tuple[str, str], dict] = {}
        self._next_id = count(1)
        for token, user in (users or {}).items():
            self.add_user(user, token)
        for group_id, members in (groups or {}).items():
            self.add_group(group_id, members)

    def __repr__(self) -> str:
        return f"MemoryStorage({len(self._messages)} messages)"

    def add_user(self, user: Mapping, token: str) -> None:
        """Let ``token`` authorize as ``user``."""
        self._users_by_token[str(token)] = dict(user)

    def add_group(self, group_id: str, member_ids: Iterable[str]) -> None:
        """Create (or replace) a group with these members."""
        self._groups[str(group_id)] = [str(m) for m in member_ids]

    def list_users(self) -> Deferred[list[dict]]:
        users = {}
        for user in self._users_by_token.values():
            user_id = str(user.get("id", user.get("_id")))
            users[user_id] = {"id": user_id, "name": user.get("name", user_id)}
        return succeed(sorted(users.values(), key=lambda u: u["id"]))

    def list_groups(self) -> Deferred[list[dict]]:
        return succeed([{"id": g, "members": list(m)} for g, m in sorted(self._groups.items())])

    def authorize(self, credentials: dict) -> Deferred[dict | None]:
        token = credentials.get("token")
        user = self._users_by_token.get(str(token)) if token is not None else None
        return succeed(dict(user) if user is not None else None)

    def create(self, message: dict) -> Deferred[dict]:
        client_id = message.get("clientMessageId")
        if client_id is not None:
            dedupe_key = (message["from"], str(client_id))
            existing = self._by_client_id.get(dedupe_key)
            if existing is not None:
                return succeed(existing)
        message_id = str(next(self._next_id))
        stored = {"_id": message_id, **message}
        self._messages[message_id] = stored
        key = conversation_key(stored, bool(stored.get("isGroup")))
        history = self._conversations.setdefault(key, [])
        if history and stored["createdAt"] < history[-1]["createdAt"]:
            # The clock went back (or a store was fed out of order): keep the
            # history sorted by createdAt, ties in insertion order.
            insort(history, stored, key=_created_at)
        else:
            history.append(stored)
        if client_id is not None:
            self._by_client_id[dedupe_key] = stored
        return succeed(stored)

    def getMessages(self, query: dict) -> Deferred[list[dict]]:
        history = self._conversations.get(
            conversation_key(list(query["ids"]), bool(query.get("isGroup"))), ()
        )
        end = len(history) - query.get("skip", 0)
        if end <= 0:
            return succeed([])
        start = max(0, end - query.get("limit", 10))
        return succeed(history[start:end][::-1])

    def getGroupUserIds(self, data: dict) -> Deferred[list[str]]:
        return succeed(list(self._groups.get(str(data["groupId"]), ())))

    def read(self, messageId: str, userId: str) -> Deferred[dict | None]:
        message = self._messages.get(str(messageId))
        if message is None or message["from"] == userId:
            return succeed(None)
        if message.get("isGroup"):
            if userId not in self._groups.get(message["to"], ()):
                return succeed(None)
            readers = message.setdefault("readBy", [])
            if userId not in readers:
                readers.append(userId)
        elif message["to"] == userId:
            message["read"] = True
        else:
            return succeed(None)
        return succeed(message)
