"""A complete in-memory store, for tests, demos and benchmarks.

:class:`MemoryStorage` provides :class:`~chatserver.interfaces.IChatStorage`
and every optional interface, with the same behaviour as the SQLite store.
"""

from __future__ import annotations

import hashlib
import secrets
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from itertools import count
from typing import Any

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from chatserver.errors import NOT_FOUND, ChatError
from chatserver.interfaces import (
    IAccountStore,
    IChatStorage,
    IConversationStore,
    ISessionRevocations,
    IUserDirectory,
)
from chatserver.storage.pages import (
    Position,
    conversation_page,
    decode_position,
    merge_ids,
    page_after,
    page_limit,
    slice_after,
)

#: A key of one user's conversation index: (is it a group, the other side's id).
InboxKey = tuple[bool, str]


def conversation_key(
    message_or_ids: Mapping[str, Any] | list[Any], is_group: bool
) -> tuple[str, ...]:
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


def _created_at(message: Mapping[str, Any]) -> str:
    created_at: str = message["createdAt"]
    return created_at


def _position(message: Mapping[str, Any]) -> Position:
    return message["createdAt"], int(message["_id"])


def _hash_token(token: object) -> bytes:
    return hashlib.sha256(str(token).encode("utf-8", "surrogatepass")).digest()


def _client_key(client_id: object) -> str:
    """``clientMessageId`` as one string, so that 42 and "42" stay distinct."""
    if isinstance(client_id, str):
        return client_id
    return orjson.dumps(client_id, option=orjson.OPT_SORT_KEYS).decode()


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


# An entry of a user's conversation index is a list, the cheapest object to
# make and update on the hot path: [position of the last message, the last
# message, unread count, since], where since is the sequence number from
# which the conversation's messages count for the user (None: none do, as
# they left the group, until the next one they receive).
_POSITION, _LAST, _UNREAD, _SINCE = range(4)


class _Group:
    __slots__ = ("member_set", "members", "name", "sorted_members")

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.members: list[str] = []  # in the order given
        self.member_set: set[str] = set()
        self.sorted_members: list[str] = []  # for contact pages


@implementer(IChatStorage, IUserDirectory, IConversationStore, ISessionRevocations, IAccountStore)
class MemoryStorage:
    """Keeps users, groups and messages in dicts; nothing survives a restart.

    Every query is served from an index: a history page costs O(skip +
    limit) whatever else is stored (O(log n) more with a cursor), a
    directory page O(limit * the user's groups). ``create`` updates each
    recipient's conversation index with a few dict operations: O(1) for a
    direct message, O(members) for a group one. ``getConversations`` walks
    the user's index from the newest conversation, so a later page costs
    O(the conversations before it).
    """

    def __init__(
        self,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """
        :param users: token → user object (which must carry ``id`` or
            ``_id``; :meth:`authorize` answers with a copy of it), as
            :meth:`authorize_as` takes them.
        :param groups: group id → member ids.
        """
        self._accounts: dict[str, dict[str, Any]] = {}  # user id → what authorize answers
        self._account_ids: list[str] = []  # sorted
        self._token_owner: dict[bytes, str] = {}  # token hash → user id
        self._tokens_of: dict[str, set[bytes]] = {}
        self._groups: dict[str, _Group] = {}
        self._group_ids: list[str] = []  # sorted
        self._groups_of: dict[str, list[str]] = {}  # user id → sorted group ids
        self._messages: dict[str, dict[str, Any]] = {}
        self._conversations: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        self._by_client_id: dict[tuple[str, str], dict[str, Any]] = {}
        self._next_seq = count(1)
        # Each user's conversations, in the order of their last message
        # (oldest first) unless the user is in _unsorted: an out-of-order
        # createdAt is sorted out when the list is next read.
        self._inbox: dict[str, dict[InboxKey, list[Any]]] = {}
        self._unsorted: set[str] = set()
        self._newest: dict[str, Position] = {}
        self._partners: dict[str, list[str]] = {}  # direct contacts; sorted when read
        self._unsorted_partners: set[str] = set()
        self._revoked: list[str] = []
        for token, user in (users or {}).items():
            self.authorize_as(token, user)
        for group_id, members in (groups or {}).items():
            self._set_group(_text(str(group_id), "a group id"), members, None)

    def __repr__(self) -> str:
        return f"MemoryStorage({len(self._messages)} messages)"

    # Accounts

    def authorize_as(self, token: object, user: Mapping[str, Any]) -> None:
        """Let ``token`` authorize as ``user``, any object carrying ``id`` or
        ``_id`` (and, for the directory, ``name``): :meth:`authorize` answers
        with a copy of it. A user may have several such tokens."""
        user_id = str(user.get("id", user.get("_id")))
        if user_id not in self._accounts:
            insort(self._account_ids, user_id)
        self._accounts[user_id] = dict(user)
        token_hash = _hash_token(token)
        previous = self._token_owner.get(token_hash)
        if previous is not None:
            self._tokens_of[previous].discard(token_hash)
        self._token_owner[token_hash] = user_id
        self._tokens_of.setdefault(user_id, set()).add(token_hash)

    def add_user(
        self, user_id: str, name: str | None = None, token: str | None = None
    ) -> Deferred[str]:
        """Create a user who signs in with ``token`` (random if ``None``);
        fire with the token. Fails with ValueError if the user exists or the
        token is taken."""
        try:
            _text(user_id, "a user id")
            if name is not None:
                _text(name, "a name")
            if token is not None:
                _text(token, "a token")
        except ValueError as e:
            return fail(e)
        if user_id in self._accounts:
            return fail(ValueError(f"user {user_id!r} already exists"))
        token = token if token is not None else secrets.token_urlsafe(32)
        if _hash_token(token) in self._token_owner:
            return fail(ValueError("that token is already in use"))
        self.authorize_as(token, {"id": user_id, "name": name or user_id})
        return succeed(token)

    def set_token(self, user_id: str, token: str | None = None) -> Deferred[str]:
        """Replace the user's tokens with ``token`` (random if ``None``) and
        end their sessions; fire with the token."""
        if user_id not in self._accounts:
            return fail(LookupError(f"no user {user_id!r}"))
        try:
            token = _text(token, "a token") if token is not None else secrets.token_urlsafe(32)
        except ValueError as e:
            return fail(e)
        token_hash = _hash_token(token)
        if self._token_owner.get(token_hash, user_id) != user_id:
            return fail(ValueError("that token is already in use"))
        for old in self._tokens_of.pop(user_id, ()):
            del self._token_owner[old]
        self._token_owner[token_hash] = user_id
        self._tokens_of[user_id] = {token_hash}
        self._revoked.append(user_id)
        return succeed(token)

    def get_user(self, user_id: str) -> Deferred[dict[str, Any] | None]:
        return succeed(self._user(user_id) if user_id in self._accounts else None)

    def remove_user(self, user_id: str) -> Deferred[bool]:
        """Delete the account, tokens and group memberships of ``user_id``
        (their messages stay) and end their sessions; fire with whether the
        account existed."""
        user_id = str(user_id)
        for group_id in list(self._groups_of.get(user_id, ())):
            self._remove_member(group_id, user_id)
        for token_hash in self._tokens_of.pop(user_id, ()):
            del self._token_owner[token_hash]
        self._revoked.append(user_id)
        if self._accounts.pop(user_id, None) is None:
            return succeed(False)
        del self._account_ids[bisect_left(self._account_ids, user_id)]
        return succeed(True)

    def revoke_sessions(self, user_id: str) -> Deferred[None]:
        self._revoked.append(str(user_id))
        return succeed(None)

    def list_all_users(
        self, after: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        return succeed([self._user(u) for u in slice_after(self._account_ids, after, limit)])

    def add_group(
        self, group_id: str, member_ids: Iterable[str], name: str | None = None
    ) -> Deferred[None]:
        """Create (or replace the members, and the name if given, of) a group."""
        try:
            _text(group_id, "a group id")
            if name is not None:
                _text(name, "a name")
            self._set_group(group_id, member_ids, name)
        except ValueError as e:
            return fail(e)
        return succeed(None)

    def get_group(self, group_id: str) -> Deferred[dict[str, Any] | None]:
        group = self._groups.get(group_id)
        return succeed(self._group(group_id, group) if group is not None else None)

    def remove_group(self, group_id: str) -> Deferred[bool]:
        group = self._groups.get(group_id)
        if group is None:
            return succeed(False)
        for user_id in list(group.members):
            self._remove_member(group_id, user_id)
        del self._groups[group_id]
        del self._group_ids[bisect_left(self._group_ids, group_id)]
        return succeed(True)

    def add_member(self, group_id: str, user_id: str) -> Deferred[bool]:
        group = self._groups.get(group_id)
        if group is None:
            return fail(LookupError(f"no group {group_id!r}"))
        try:
            _text(user_id, "a user id")
        except ValueError as e:
            return fail(e)
        if user_id in group.member_set:
            return succeed(False)
        self._add_member(group_id, group, user_id)
        return succeed(True)

    def remove_member(self, group_id: str, user_id: str) -> Deferred[bool]:
        group = self._groups.get(group_id)
        if group is None or user_id not in group.member_set:
            return succeed(False)
        self._remove_member(group_id, user_id)
        return succeed(True)

    def list_all_groups(
        self, after: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        page = slice_after(self._group_ids, after, limit)
        return succeed([self._group(g, self._groups[g]) for g in page])

    def _user(self, user_id: str) -> dict[str, Any]:
        return {"id": user_id, "name": self._name(user_id)}

    def _name(self, user_id: str) -> str:
        account = self._accounts.get(user_id)
        name = account.get("name") if account is not None else None
        return str(name) if name else user_id

    @staticmethod
    def _group(group_id: str, group: _Group) -> dict[str, Any]:
        return {"id": group_id, "name": group.name or group_id, "members": list(group.members)}

    def _set_group(self, group_id: str, member_ids: Iterable[str], name: str | None) -> None:
        members = list(dict.fromkeys(_text(str(m), "a member id") for m in member_ids))
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = _Group(name)
            insort(self._group_ids, group_id)
        elif name is not None:
            group.name = name
        keep = set(members)
        for user_id in [m for m in group.members if m not in keep]:
            self._remove_member(group_id, user_id)
        for user_id in members:
            if user_id not in group.member_set:
                self._add_member(group_id, group, user_id)
        group.members = members  # the order given

    def _add_member(self, group_id: str, group: _Group, user_id: str) -> None:
        group.members.append(user_id)
        group.member_set.add(user_id)
        insort(group.sorted_members, user_id)
        insort(self._groups_of.setdefault(user_id, []), group_id)

    def _remove_member(self, group_id: str, user_id: str) -> None:
        group = self._groups[group_id]
        group.members.remove(user_id)
        group.member_set.discard(user_id)
        del group.sorted_members[bisect_left(group.sorted_members, user_id)]
        groups = self._groups_of[user_id]
        del groups[bisect_left(groups, group_id)]
        entry = self._inbox.get(user_id, {}).get((True, group_id))
        if entry is not None:  # they left: nothing more counts for them
            entry[_UNREAD], entry[_SINCE] = 0, None

    # IAuthorizer

    def authorize(self, credentials: dict[str, Any]) -> Deferred[dict[str, Any] | None]:
        token = credentials.get("token") if isinstance(credentials, dict) else None
        if token is None or token == "":
            return succeed(None)
        user_id = self._token_owner.get(_hash_token(token))
        return succeed(dict(self._accounts[user_id]) if user_id is not None else None)

    # IMessageStore

    def create(self, message: dict[str, Any]) -> Deferred[dict[str, Any]]:
        client_id = message.get("clientMessageId")
        if client_id is not None:
            dedupe_key = (message["from"], _client_key(client_id))
            existing = self._by_client_id.get(dedupe_key)
            if existing is not None:
                return succeed(existing)
        seq = next(self._next_seq)
        stored = {"_id": str(seq), **message}
        self._messages[stored["_id"]] = stored
        is_group = bool(stored.get("isGroup"))
        history = self._conversations.setdefault(conversation_key(stored, is_group), [])
        if history and stored["createdAt"] < history[-1]["createdAt"]:
            # The clock went back (or a store was fed out of order): keep the
            # history sorted by createdAt, ties in insertion order.
            insort(history, stored, key=_created_at)
        else:
            history.append(stored)
        if client_id is not None:
            self._by_client_id[dedupe_key] = stored
        position = (stored["createdAt"], seq)
        sender, to = stored["from"], stored["to"]
        if is_group:
            group = self._groups.get(to)
            if group is not None:
                self._file(group.members, (True, to), sender, stored, position, seq)
        else:
            self._file((sender,), (False, to), sender, stored, position, seq)
            if to != sender:
                self._file((to,), (False, sender), sender, stored, position, seq)
        return succeed(stored)

    def _file(
        self,
        user_ids: Iterable[str],
        key: InboxKey,
        sender: str,
        message: dict[str, Any],
        position: Position,
        seq: int,
    ) -> None:
        """File ``message`` in conversation ``key`` of each user's index:
        a few dict operations per user (this runs for every member of every
        group message), the entry moved to the end of the index."""
        inboxes, newest = self._inbox, self._newest
        for user_id in user_ids:
            inbox = inboxes.get(user_id)
            if inbox is None:
                inbox = inboxes[user_id] = {}
            entry = inbox.pop(key, None)
            if entry is None:
                entry = [position, message, 0 if user_id == sender else 1, seq]
                if not key[0]:
                    self._partners.setdefault(user_id, []).append(key[1])
                    self._unsorted_partners.add(user_id)
            else:
                if user_id != sender:
                    entry[_UNREAD] += 1
                if entry[_SINCE] is None:
                    entry[_SINCE] = seq
                if entry[_POSITION] < position:
                    entry[_POSITION], entry[_LAST] = position, message
            inbox[key] = entry
            latest = newest.get(user_id)
            if latest is None or latest <= entry[_POSITION]:
                newest[user_id] = entry[_POSITION]
            else:  # the clock went back: sorted when next read
                self._unsorted.add(user_id)

    def getMessages(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        key = conversation_key(list(query["ids"]), bool(query.get("isGroup")))
        history = self._conversations.get(key, [])
        skip, limit = query.get("skip", 0), query.get("limit", 10)
        before, after = query.get("before"), query.get("after")
        if before is None and after is None:
            end = len(history) - skip
            return succeed(history[max(0, end - limit) : end][::-1] if end > 0 else [])
        cursor = before if before is not None else after
        anchor = self._messages.get(cursor) if isinstance(cursor, str) else None
        if anchor is None or conversation_key(anchor, bool(anchor.get("isGroup"))) != key:
            return fail(ChatError(NOT_FOUND, f"no message {cursor!r} in this conversation"))
        at = bisect_left(history, _position(anchor), key=_position)
        if before is not None:
            end = at - skip
            return succeed(history[max(0, end - limit) : end][::-1] if end > 0 else [])
        start = at + 1 + skip
        return succeed(history[start : start + limit])

    def read(self, messageId: str, userId: str) -> Deferred[dict[str, Any] | None]:
        message = self._messages.get(str(messageId))
        if message is None or message["from"] == userId:
            return succeed(None)
        if message.get("isGroup"):
            group = self._groups.get(message["to"])
            if group is None or userId not in group.member_set:
                return succeed(None)
            readers = message.setdefault("readBy", [])
            if userId not in readers:
                readers.append(userId)
                entry = self._inbox.get(userId, {}).get((True, message["to"]))
                # Only a message sent while they were a member counted.
                if entry is not None and entry[_SINCE] is not None and entry[_UNREAD] > 0:
                    if int(message["_id"]) >= entry[_SINCE]:
                        entry[_UNREAD] -= 1
        elif message["to"] == userId:
            if message.get("read") is not True:
                message["read"] = True
                entry = self._inbox.get(userId, {}).get((False, message["from"]))
                if entry is not None and entry[_UNREAD] > 0:
                    entry[_UNREAD] -= 1
        else:
            return succeed(None)
        return succeed(message)

    # IGroupDirectory

    def getGroupUserIds(self, data: dict[str, Any]) -> Deferred[list[str]]:
        group = self._groups.get(str(data["groupId"]))
        return succeed(list(group.members) if group is not None else [])

    # IConversationStore

    def getConversations(self, query: dict[str, Any]) -> Deferred[dict[str, Any]]:
        user_id = str(query["userId"])
        limit = page_limit(query, 20)
        try:
            start = decode_position(query["before"]) if query.get("before") is not None else None
        except ChatError as e:
            return fail(e)
        inbox = self._inbox.get(user_id)
        if not inbox:
            return succeed({"conversations": [], "next": None})
        if user_id in self._unsorted:
            inbox = self._inbox[user_id] = dict(
                sorted(inbox.items(), key=lambda item: item[1][_POSITION])
            )
            self._unsorted.discard(user_id)
        page: list[tuple[Position, dict[str, Any]]] = []
        for (is_group, other), entry in reversed(inbox.items()):
            if start is not None and entry[_POSITION] >= start:
                continue
            conversation = {
                "with": other,
                "isGroup": is_group,
                "last": entry[_LAST],
                "unread": entry[_UNREAD],
            }
            page.append((entry[_POSITION], conversation))
            if len(page) > limit:
                break
        return succeed(conversation_page(page, limit))

    # IUserDirectory

    def listUsers(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        page = slice_after(self._account_ids, page_after(query), page_limit(query))
        return succeed([self._user(user_id) for user_id in page])

    def listGroups(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        mine = self._groups_of.get(str(query["userId"]), [])
        page = slice_after(mine, page_after(query), page_limit(query))
        return succeed([{"id": g, "name": self._groups[g].name or g} for g in page])

    def listContacts(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        user_id, after, limit = str(query["userId"]), page_after(query), page_limit(query)
        sources = [
            slice_after(self._groups[g].sorted_members, after, limit + 1)
            for g in self._groups_of.get(user_id, ())
        ]
        partners = self._partners.get(user_id)
        if partners:
            if user_id in self._unsorted_partners:
                partners.sort()  # nearly sorted: linear
                self._unsorted_partners.discard(user_id)
            sources.append(slice_after(partners, after, limit + 1))
        return succeed([self._user(c) for c in merge_ids(sources, user_id, limit)])

    def getUsers(self, userIds: list[Any]) -> Deferred[dict[str, dict[str, Any]]]:
        known = (str(u) for u in userIds)
        return succeed({u: self._user(u) for u in known if u in self._accounts})

    # ISessionRevocations

    def revocationsAfter(self, cursor: Any) -> Deferred[tuple[list[str], int]]:
        """The cursor is the number of revocations seen; one that this store
        did not make counts as ``None``."""
        now = len(self._revoked)
        if type(cursor) is not int or not 0 <= cursor <= now:
            return succeed(([], now))
        return succeed((self._revoked[cursor:], now))
