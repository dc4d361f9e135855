"""A small custom storage for chatserver: three demo users, one group, messages in memory.

Run it with::

    twistd -n chatserver --port 4001 --storage examples.custom_storage:DemoStorage

then connect with chat-client and authorize with ``{token: "alice-token"}``
(or ``"bob-token"``, ``"carol-token"``). Alice and Bob are the group ``"team"``;
Carol belongs to no group. Everything is forgotten when the server stops.

It is written only against the documented storage contract: the five methods
of :class:`chatserver.IChatStorage`, each returning a Deferred, plus the
optional :class:`chatserver.interfaces.IUserDirectory`, which gives the web
page names and groups. The server handles the wire protocol, pushes and
group-membership checks. ``tests/test_example_storage.py`` runs the
conformance suites against it.
"""

from __future__ import annotations

import copy
import itertools
from bisect import bisect_right, insort
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chatserver import IChatStorage
from chatserver.interfaces import IUserDirectory

Message = dict[str, Any]

USERS_BY_TOKEN: dict[str, dict[str, str]] = {
    "alice-token": {"id": "alice", "name": "Alice"},
    "bob-token": {"id": "bob", "name": "Bob"},
    "carol-token": {"id": "carol", "name": "Carol"},
}
GROUPS: dict[str, list[str]] = {"team": ["alice", "bob"]}


def _page(ids: list[str], query: dict) -> list[str]:
    """The page of the sorted ``ids`` that ``query`` asks for: after
    ``query["after"]``, at most ``query["limit"]``."""
    after = query.get("after")
    start = 0 if after is None else bisect_right(ids, after)
    return ids[start : start + query["limit"]]


@implementer(IChatStorage, IUserDirectory)
class DemoStorage:
    """Keeps users and groups in dicts and messages in a list."""

    def __init__(
        self,
        users: Mapping[str, Mapping[str, str]] | None = None,
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """
        :param users: token → ``{"id", "name"}``; the three demo users if ``None``.
        :param groups: group id → member ids; the demo group if ``None``.
        """
        self._users_by_token: dict[str, dict[str, str]] = {}
        self._users: dict[str, dict[str, str]] = {}  # by id
        self._user_ids: list[str] = []  # sorted, for directory pages
        self._groups: dict[str, list[str]] = {}
        self._messages: list[Message] = []  # oldest first
        self._by_id: dict[str, Message] = {}
        self._by_client_id: dict[tuple[str, str], Message] = {}
        self._partners: dict[str, set[str]] = {}  # who wrote to whom
        self._next_id = itertools.count(1)
        for token, user in (USERS_BY_TOKEN if users is None else users).items():
            self.add_user(token, user)
        for group_id, members in (GROUPS if groups is None else groups).items():
            self.set_group(group_id, members)

    # Provisioning (not part of the contract: each application has its own)

    def add_user(self, token: str, user: Mapping[str, str]) -> None:
        """Let ``token`` sign in as ``user`` (``{"id", "name"}``)."""
        self._users_by_token[token] = dict(user)
        if user["id"] not in self._users:
            insort(self._user_ids, user["id"])
        self._users[user["id"]] = dict(user)

    def set_group(self, group_id: str, member_ids: Iterable[str]) -> None:
        """Create a group, or replace its members."""
        self._groups[group_id] = list(dict.fromkeys(member_ids))

    # IAuthorizer

    def authorize(self, credentials: dict) -> Deferred[dict | None]:
        token = credentials.get("token") if isinstance(credentials, dict) else None
        user = self._users_by_token.get(token) if isinstance(token, str) else None
        return succeed(dict(user) if user else None)

    # IGroupDirectory

    def getGroupUserIds(self, data: dict) -> Deferred[list[str]]:
        return succeed(list(self._groups.get(data.get("groupId"), [])))

    # IMessageStore

    def create(self, message: dict) -> Deferred[Message]:
        client_id = message.get("clientMessageId")
        key = (message["from"], repr(client_id))
        if client_id is not None and key in self._by_client_id:
            # The client sent this message before (a retry): keep one copy.
            return succeed(copy.deepcopy(self._by_client_id[key]))

        stored = {**message, "_id": str(next(self._next_id))}
        if stored.get("isGroup"):
            stored["readBy"] = []
        else:
            stored["read"] = False
            self._partners.setdefault(stored["from"], set()).add(stored["to"])
            self._partners.setdefault(stored["to"], set()).add(stored["from"])
        self._messages.append(stored)
        self._by_id[stored["_id"]] = stored
        if client_id is not None:
            self._by_client_id[key] = stored
        return succeed(copy.deepcopy(stored))

    def getMessages(self, query: dict) -> Deferred[list[Message]]:
        me, other = query["ids"]
        if query.get("isGroup"):
            wanted = [m for m in self._messages if m.get("isGroup") and m["to"] == other]
        else:
            pair = {me, other}
            wanted = [
                m for m in self._messages if not m.get("isGroup") and {m["from"], m["to"]} == pair
            ]
        # Oldest first by createdAt; the sort is stable, so ties keep insertion order.
        wanted.sort(key=lambda m: m["createdAt"])
        skip, limit = query.get("skip", 0), query.get("limit", 10)
        newest_first = wanted[::-1][skip : skip + limit]
        return succeed([copy.deepcopy(m) for m in newest_first])

    def read(self, messageId: str, userId: str) -> Deferred[Message | None]:
        message = self._by_id.get(messageId)
        if message is None:
            return succeed(None)
        if message.get("isGroup"):
            members = self._groups.get(message["to"], [])
            if userId not in members or userId == message["from"]:
                return succeed(None)  # only the other members may read it
            if userId not in message["readBy"]:
                message["readBy"].append(userId)
        elif userId == message["to"] and userId != message["from"]:
            message["read"] = True
        else:
            return succeed(None)  # only the recipient may read it
        return succeed(copy.deepcopy(message))

    # IUserDirectory: whom a user can talk to, a page at a time, by id

    def listUsers(self, query: dict) -> Deferred[list[dict]]:
        return succeed([self._user(user_id) for user_id in _page(self._user_ids, query)])

    def listGroups(self, query: dict) -> Deferred[list[dict]]:
        me = query["userId"]
        mine = sorted(g for g, members in self._groups.items() if me in members)
        return succeed([{"id": g, "name": g} for g in _page(mine, query)])

    def listContacts(self, query: dict) -> Deferred[list[dict]]:
        # Sorting each time is fine for a demo; a store with many users keeps
        # its indexes sorted instead (see chatserver.storage.memory).
        me = query["userId"]
        contacts = set(self._partners.get(me, ()))
        for members in self._groups.values():
            if me in members:
                contacts.update(members)
        contacts.discard(me)
        return succeed([self._user(c) for c in _page(sorted(contacts), query)])

    def getUsers(self, userIds: list) -> Deferred[dict[str, dict]]:
        return succeed({u: self._user(u) for u in userIds if u in self._users})

    def _user(self, user_id: str) -> dict[str, str]:
        user = self._users.get(user_id, {})
        return {"id": user_id, "name": user.get("name") or user_id}
