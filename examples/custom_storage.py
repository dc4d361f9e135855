"""A small custom storage for chatserver: three demo users, one group, messages in memory.

Run it with::

    twistd -n chatserver --port 4001 --storage examples.custom_storage:DemoStorage

then connect with chat-client and authorize with ``{token: "alice-token"}``
(or ``"bob-token"``, ``"carol-token"``). Alice and Bob are the group ``"team"``;
Carol belongs to no group. Everything is forgotten when the server stops.

It is written only against the documented storage contract,
:class:`chatserver.IChatStorage`: every method returns a Deferred, and the
server handles the wire protocol, pushes and group-membership checks.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chatserver import IChatStorage

Message = dict[str, Any]

USERS_BY_TOKEN: dict[str, dict[str, str]] = {
    "alice-token": {"id": "alice", "name": "Alice"},
    "bob-token": {"id": "bob", "name": "Bob"},
    "carol-token": {"id": "carol", "name": "Carol"},
}
GROUPS: dict[str, list[str]] = {"team": ["alice", "bob"]}


@implementer(IChatStorage)
class DemoStorage:
    """Keeps users and groups in the dicts above and messages in a list."""

    def __init__(self) -> None:
        self._messages: list[Message] = []  # oldest first
        self._by_id: dict[str, Message] = {}
        self._by_client_id: dict[tuple[str, str], Message] = {}
        self._next_id = itertools.count(1)

    # IAuthorizer

    def authorize(self, credentials: dict) -> Deferred[dict | None]:
        token = credentials.get("token") if isinstance(credentials, dict) else None
        user = USERS_BY_TOKEN.get(token) if isinstance(token, str) else None
        return succeed(dict(user) if user else None)

    # IGroupDirectory

    def getGroupUserIds(self, data: dict) -> Deferred[list[str]]:
        return succeed(list(GROUPS.get(data.get("groupId"), [])))

    # IMessageStore

    def create(self, message: dict) -> Deferred[Message]:
        client_id = message.get("clientMessageId")
        key = (message["from"], str(client_id))
        if client_id is not None and key in self._by_client_id:
            # The client sent this message before (a retry): keep one copy.
            return succeed(copy.deepcopy(self._by_client_id[key]))

        stored = {**message, "_id": str(next(self._next_id))}
        if stored.get("isGroup"):
            stored["readBy"] = []
        else:
            stored["read"] = False
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
        skip, limit = query.get("skip", 0), query.get("limit", 10)
        newest_first = wanted[::-1][skip : skip + limit]
        return succeed([copy.deepcopy(m) for m in newest_first])

    def read(self, messageId: str, userId: str) -> Deferred[Message | None]:
        message = self._by_id.get(messageId)
        if message is None:
            return succeed(None)
        if message.get("isGroup"):
            members = GROUPS.get(message["to"], [])
            if userId not in members or userId == message["from"]:
                return succeed(None)  # only the other members may read it
            if userId not in message["readBy"]:
                message["readBy"].append(userId)
        elif userId == message["to"]:
            message["read"] = True
        else:
            return succeed(None)  # only the recipient may read it
        return succeed(copy.deepcopy(message))
