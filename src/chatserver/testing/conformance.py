"""Tests that any :class:`~chatserver.interfaces.IChatStorage` must pass.

Subclass :class:`StorageConformanceTests` in a pytest test module and say how
to build your store and how to give it users and groups (:class:`IChatStorage`
has no way to create either)::

    from chatserver.testing import StorageConformanceTests

    class TestMyStorage(StorageConformanceTests):
        def make_storage(self):
            return MyStorage()  # fresh and empty; may return a Deferred

        def add_user(self, storage, user_id, token):
            storage.users[token] = {"id": user_id}

        def add_group(self, storage, group_id, member_ids):
            storage.groups[group_id] = list(member_ids)

The tests need ``pytest`` and ``pytest-twisted`` (``pip install
'chatserver[testing]'``). Every hook may return a plain value, a Deferred or
a coroutine, and so may the store's methods, as the server accepts all three.

A store that provides optional interfaces adds their suites to the same
class, each a mixin: :class:`~chatserver.testing.DirectoryConformanceTests`,
:class:`~chatserver.testing.ConversationConformanceTests`,
:class:`~chatserver.testing.AccountConformanceTests` and
:class:`~chatserver.testing.RevocationConformanceTests`. ``python -m
chatserver.testing module:Factory`` runs every suite that applies without a
test module.

Each test's docstring states the rule it checks, in words; a failure says
what the store did wrong.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred

from chatserver.errors import ChatError

_EPOCH = datetime(2026, 11, 24, 23, 27, 50, tzinfo=UTC)

UNICODE_TEXT = (
    "emoji 😀👍🏽 🧑‍🚀 🇫🇷, RTL עברית and العربية, NUL [\x00], "
    "astral 𝄞 𠜎 𐍈 🂡, combining e\u0301, BOM \ufeff, "
    "controls \t\r\n\x7f, last plane \U0010fffd"
)

MALFORMED_IDS = (
    "",
    " ",
    "zzz",
    "-1",
    "1.5",
    "1e3",
    "null",
    "undefined",
    "[object Object]",
    "'; DROP TABLE messages; --",
    '{"$gt": ""}',
    "\x00",
    "9" * 100,
    "💬",
)


def timestamp(milliseconds: int) -> str:
    """A ``createdAt`` as the server writes it, ``milliseconds`` after a fixed instant."""
    moment = _EPOCH + timedelta(milliseconds=milliseconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_id(message: dict[str, Any]) -> str:
    """The id a store gave ``message``; it must be a string."""
    assert message is not None, "expected a stored message, got None"
    stored_id = message["_id"] if "_id" in message else message.get("id")
    assert isinstance(stored_id, str) and stored_id, f"id {stored_id!r} is not a string"
    return stored_id


def _call(function: Any, *args: object) -> Deferred[Any]:
    # Like the server: accept a Deferred, a coroutine or a plain value. The
    # call happens now, so a list of these fires requests without waiting.
    return maybeDeferred(function, *args)


async def failure_of(function: Any, *args: object) -> str:
    """How ``function(*args)`` failed: the code of the :class:`ChatError`,
    or else words saying what happened instead."""
    try:
        result = await _call(function, *args)
    except ChatError as e:
        return e.code
    except Exception as e:
        return f"a {type(e).__name__} ({e})"
    return f"success ({result!r:.100})"


async def exception_of(function: Any, *args: object) -> BaseException | None:
    """The exception ``function(*args)`` failed with, or None if it did not fail."""
    try:
        await _call(function, *args)
    except Exception as e:
        return e
    return None


class ConformanceHooks:
    """What every suite builds on: the hooks a test class overrides to make
    and provision a store, and the helpers built on them.

    :class:`StorageConformanceTests` and each optional suite's mixin derive
    from it, so the mixins can call the hooks and helpers whatever order the
    bases of the test class come in.
    """

    # Hooks

    def make_storage(self) -> Any:
        """Return a fresh, empty store (or a Deferred firing with one)."""
        raise NotImplementedError

    def close_storage(self, storage: Any) -> Any:
        """Release what :meth:`make_storage` opened; called after each test."""

    def add_user(self, storage: Any, user_id: str, token: str) -> Any:
        """Make ``token`` authorize as user ``user_id``.

        A store that makes its own tokens may ignore ``token`` and return (or
        fire with) the one that works instead.
        """
        raise NotImplementedError

    def add_group(self, storage: Any, group_id: str, member_ids: list[str]) -> Any:
        """Create group ``group_id`` with these members, or replace the
        members of an existing one (the optional suites add and remove
        members this way)."""
        raise NotImplementedError

    def unknown_message_id(self, existing_id: str) -> str:
        """An id shaped like ``existing_id`` (the only stored message's) that
        names no message: by default, its last character changed."""
        last = existing_id[-1]
        alphabet = "0123456789abcdef" if last in "0123456789abcdef" else "ab"
        replacement = alphabet[(alphabet.find(last) + 1) % len(alphabet)]
        return existing_id[:-1] + replacement

    # Helpers

    _clock = 0

    def message(
        self, sender: str, to: str, text: str = "hi", *, group: bool = False, **fields: Any
    ) -> dict[str, Any]:
        """A message as the server hands it to ``create``; each one is 1 ms
        newer than the last unless ``createdAt`` is given."""
        self._clock += 1
        message = {"to": to, "text": text, **fields, "from": sender}
        message.setdefault("createdAt", timestamp(self._clock))
        if group:
            message["isGroup"] = True
        return message

    async def create(self, storage: Any, message: dict[str, Any]) -> dict[str, Any]:
        """Store a copy of ``message`` and check the reply echoes it."""
        stored: dict[str, Any] = await _call(storage.create, dict(message))
        message_id(stored)
        for key, value in message.items():
            assert stored.get(key) == value, f"stored {key!r} differs"
        return stored

    async def history(
        self, storage: Any, me: str, other: str, **query: Any
    ) -> list[dict[str, Any]]:
        query = {"ids": [me, other], "skip": 0, "limit": 100, **query}
        messages = await _call(storage.getMessages, query)
        return list(messages)

    async def user(self, storage: Any, user_id: str) -> str:
        """Provision ``user_id``; return a token that authorizes as them."""
        token = secrets.token_urlsafe(32)
        given = await _call(self.add_user, storage, user_id, token)
        return given or token

    async def group(self, storage: Any, group_id: str, member_ids: Iterable[str]) -> None:
        await _call(self.add_group, storage, group_id, list(member_ids))

    @staticmethod
    def ids(messages: Iterable[dict[str, Any]]) -> list[str]:
        return [message_id(m) for m in messages]


class StorageConformanceTests(ConformanceHooks):
    """The storage contract, as pytest tests. Subclass it as ``TestSomething``.

    Override :meth:`make_storage`, :meth:`add_user` and :meth:`add_group`, and
    if needed :meth:`close_storage`, :meth:`unknown_message_id` and
    :attr:`max_message_bytes`.
    """

    #: The largest message (as JSON) the store must keep; the server's frame limit.
    max_message_bytes: int = 64 * 1024

    # Fixture

    @pytest.fixture
    def storage(self) -> Iterator[Any]:
        # A plain fixture, unlike pytest-twisted's async ones, runs on the
        # test's own instance, so hooks can use what other fixtures set on it.
        storage = pytest_twisted.blockon(_call(self.make_storage))
        try:
            yield storage
        finally:
            pytest_twisted.blockon(_call(self.close_storage, storage))

    # authorize

    @pytest_twisted.ensureDeferred
    async def test_authorize_with_the_right_token(self, storage: Any) -> None:
        """authorize answers a user's token with that user (``id`` or ``_id``)."""
        alice = await self.user(storage, "alice")
        bob = await self.user(storage, "bob")
        for user_id, token in (("alice", alice), ("bob", bob)):
            user = await _call(storage.authorize, {"token": token})
            assert user is not None
            assert user.get("id", user.get("_id")) == user_id

    @pytest_twisted.ensureDeferred
    async def test_authorize_refuses_a_wrong_token(self, storage: Any) -> None:
        """authorize refuses (None) a token that differs from a real one in any way."""
        token = await self.user(storage, "alice")
        for wrong in (token + "x", token[:-1], token.upper(), "nope", " " + token):
            assert await _call(storage.authorize, {"token": wrong}) is None

    @pytest_twisted.ensureDeferred
    async def test_authorize_refuses_a_missing_token(self, storage: Any) -> None:
        """authorize refuses (None) credentials without a token, or with an empty one."""
        await self.user(storage, "alice")
        for credentials in ({}, {"token": None}, {"token": ""}, {"user": "alice"}):
            assert await _call(storage.authorize, credentials) is None

    # create

    @pytest_twisted.ensureDeferred
    async def test_create_returns_the_stored_message(self, storage: Any) -> None:
        """create fires with the message as stored, every field intact, and getMessages returns the
        same."""
        sent = self.message(
            "alice",
            "bob",
            "hello",
            type="text",
            value={"nested": [1, 2.5, None, True, False, "x", {}, []]},
            big=2**53 - 1,
            negative=-7,
            empty="",
        )
        stored = await self.create(storage, sent)
        assert stored["from"] == "alice" and stored["to"] == "bob"
        assert stored["createdAt"] == sent["createdAt"]
        assert "isGroup" not in stored or not stored["isGroup"]
        [fetched] = await self.history(storage, "alice", "bob")
        assert message_id(fetched) == message_id(stored)
        for key, value in sent.items():
            assert fetched[key] == value, f"fetched {key!r} differs"

    @pytest_twisted.ensureDeferred
    async def test_create_a_group_message(self, storage: Any) -> None:
        """create keeps ``isGroup: True`` on a group message."""
        await self.group(storage, "team", ["alice", "bob"])
        stored = await self.create(storage, self.message("alice", "team", group=True))
        assert stored["isGroup"] is True

    @pytest_twisted.ensureDeferred
    async def test_ids_are_distinct_strings_that_round_trip(self, storage: Any) -> None:
        """Message ids are distinct strings that read accepts back."""
        first = await self.create(storage, self.message("alice", "bob"))
        second = await self.create(storage, self.message("alice", "bob"))
        assert message_id(first) != message_id(second)
        read = await _call(storage.read, str(message_id(first)), "bob")
        assert message_id(read) == message_id(first)

    @pytest_twisted.ensureDeferred
    async def test_identical_messages_without_client_id_are_both_stored(self, storage: Any) -> None:
        """Two identical messages without ``clientMessageId`` are two messages."""
        sent = self.message("alice", "bob")
        first = await self.create(storage, sent)
        second = await self.create(storage, sent)
        assert message_id(first) != message_id(second)
        assert len(await self.history(storage, "alice", "bob")) == 2

    # getMessages

    @pytest_twisted.ensureDeferred
    async def test_history_is_newest_first(self, storage: Any) -> None:
        """getMessages returns a conversation newest first."""
        for i in range(5):
            sender, to = ("alice", "bob") if i % 2 else ("bob", "alice")
            await self.create(storage, self.message(sender, to, f"m{i}"))
        history = await self.history(storage, "alice", "bob")
        assert [m["text"] for m in history] == ["m4", "m3", "m2", "m1", "m0"], (
            "getMessages must return the conversation newest first"
        )

    @pytest_twisted.ensureDeferred
    async def test_history_orders_by_created_at_then_insertion(self, storage: Any) -> None:
        """getMessages orders by ``createdAt``, and messages with equal ``createdAt`` by insertion
        (the later one is newer), across pages too."""
        for text, at in (("late", 50), ("early", 10), ("tie-1", 30), ("tie-2", 30)):
            await self.create(storage, self.message("alice", "bob", text, createdAt=timestamp(at)))
        history = await self.history(storage, "bob", "alice")
        assert [m["text"] for m in history] == ["late", "tie-2", "tie-1", "early"], (
            "getMessages must order by createdAt, newest first, and messages with equal "
            "createdAt by insertion, the later one first"
        )
        # Many ties, read a page at a time: no page may reorder or repeat them.
        for i in range(12):
            await self.create(
                storage, self.message("carol", "dave", f"t{i}", createdAt=timestamp(7))
            )
        pages: list[str] = []
        for skip in range(0, 12, 5):
            page = await self.history(storage, "carol", "dave", skip=skip, limit=5)
            pages.extend(m["text"] for m in page)
        assert pages == [f"t{i}" for i in range(11, -1, -1)], (
            "getMessages must keep messages with equal createdAt in insertion order "
            "(the later one first) on every page"
        )

    @pytest_twisted.ensureDeferred
    async def test_history_skip_and_limit(self, storage: Any) -> None:
        """getMessages skips ``skip`` messages from the newest and returns at most ``limit``."""
        for i in range(25):
            await self.create(storage, self.message("alice", "bob", f"m{i}"))

        async def texts(skip: int, limit: int) -> list[str]:
            page = await self.history(storage, "alice", "bob", skip=skip, limit=limit)
            return [m["text"] for m in page]

        assert await texts(0, 10) == [f"m{i}" for i in range(24, 14, -1)], (
            "getMessages must return the `limit` newest messages, newest first"
        )
        assert await texts(10, 10) == [f"m{i}" for i in range(14, 4, -1)], (
            "getMessages must skip the `skip` newest messages"
        )
        assert await texts(20, 10) == [f"m{i}" for i in range(4, -1, -1)]
        assert await texts(3, 2) == ["m21", "m20"]
        assert await texts(25, 10) == []
        assert await texts(1000, 10) == []
        assert await texts(0, 0) == []
        assert await texts(0, 100) == [f"m{i}" for i in range(24, -1, -1)]

    @pytest_twisted.ensureDeferred
    async def test_history_of_an_empty_conversation(self, storage: Any) -> None:
        """getMessages of a conversation without messages is an empty list."""
        assert await self.history(storage, "alice", "bob") == []
        await self.group(storage, "team", ["alice"])
        assert await self.history(storage, "alice", "team", isGroup=True) == []

    @pytest_twisted.ensureDeferred
    async def test_both_sides_see_the_same_direct_conversation(self, storage: Any) -> None:
        """Both sides of a direct conversation get the same history."""
        for i in range(6):
            sender, to = ("alice", "bob") if i % 3 else ("bob", "alice")
            await self.create(storage, self.message(sender, to, f"m{i}"))
        from_alice = await self.history(storage, "alice", "bob")
        from_bob = await self.history(storage, "bob", "alice")
        assert len(from_alice) == 6
        assert from_alice == from_bob

    @pytest_twisted.ensureDeferred
    async def test_history_does_not_leak_other_conversations(self, storage: Any) -> None:
        """getMessages returns only the messages of the conversation asked for."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        mine = [
            await self.create(storage, self.message("alice", "bob", "a->b")),
            await self.create(storage, self.message("bob", "alice", "b->a")),
        ]
        await self.create(storage, self.message("alice", "carol", "a->c"))
        await self.create(storage, self.message("carol", "bob", "c->b"))
        await self.create(storage, self.message("carol", "carol", "c->c"))
        await self.create(storage, self.message("alice", "team", "a->team", group=True))
        await self.create(storage, self.message("alice", "alice", "a->a"))
        history = await self.history(storage, "alice", "bob")
        assert sorted(self.ids(history)) == sorted(self.ids(mine))

    @pytest_twisted.ensureDeferred
    async def test_extra_query_keys_are_ignored(self, storage: Any) -> None:
        """getMessages ignores query keys it does not know."""
        await self.create(storage, self.message("alice", "bob"))
        history = await self.history(storage, "alice", "bob", **{"with": "bob", "foo": [1]})
        assert len(history) == 1

    @pytest_twisted.ensureDeferred
    async def test_group_history_holds_every_members_messages(self, storage: Any) -> None:
        """A group's history holds every member's messages, the same for every member."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        sent = []
        for i, sender in enumerate(["alice", "bob", "carol", "bob"]):
            sent.append(
                await self.create(storage, self.message(sender, "team", f"m{i}", group=True))
            )
        await self.create(storage, self.message("alice", "bob", "direct"))
        for member in ("alice", "bob", "carol"):
            history = await self.history(storage, member, "team", isGroup=True)
            assert self.ids(history) == self.ids(reversed(sent)), (
                "a group's history must hold every member's messages, newest first"
            )

    @pytest_twisted.ensureDeferred
    async def test_direct_and_group_conversations_are_separate(self, storage: Any) -> None:
        """A direct conversation with an id and the group of the same id are separate."""
        await self.group(storage, "team", ["alice", "bob"])
        await self.group(storage, "other", ["alice", "bob"])
        to_team = await self.create(storage, self.message("alice", "team", group=True))
        to_other = await self.create(storage, self.message("bob", "other", group=True))
        # A direct message to a user whose id happens to be the group's.
        direct = await self.create(storage, self.message("alice", "team"))
        team = await self.history(storage, "bob", "team", isGroup=True)
        assert self.ids(team) == [message_id(to_team)]
        assert self.ids(await self.history(storage, "alice", "other", isGroup=True)) == [
            message_id(to_other)
        ]
        assert self.ids(await self.history(storage, "alice", "team")) == [message_id(direct)]
        assert await self.history(storage, "alice", "bob") == []

    @pytest_twisted.ensureDeferred
    async def test_direct_messages_never_reach_a_group_history(self, storage: Any) -> None:
        """A direct message never shows in a group's history, whatever the ids."""
        # Ids are the application's: a user may be called "group", "g", "d"...
        await self.group(storage, "team", ["alice", "group"])
        for sender in ("group", "g", "d", "direct", "alice"):
            await self.create(storage, self.message(sender, "team", f"direct from {sender}"))
        grouped = await self.create(storage, self.message("alice", "team", group=True))
        history = await self.history(storage, "alice", "team", isGroup=True)
        assert [m["text"] for m in history] == [grouped["text"]]

    # getGroupUserIds

    @pytest_twisted.ensureDeferred
    async def test_group_members(self, storage: Any) -> None:
        """getGroupUserIds lists a group's members as strings."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        await self.group(storage, "pair", ["dave", "erin"])
        members = await _call(storage.getGroupUserIds, {"groupId": "team"})
        assert sorted(members) == ["alice", "bob", "carol"]
        assert all(isinstance(m, str) for m in members)

    @pytest_twisted.ensureDeferred
    async def test_unknown_group_has_no_members(self, storage: Any) -> None:
        """getGroupUserIds of an unknown group is empty."""
        await self.group(storage, "team", ["alice"])
        assert list(await _call(storage.getGroupUserIds, {"groupId": "nope"})) == []

    # read

    @pytest_twisted.ensureDeferred
    async def test_recipient_reads_a_direct_message(self, storage: Any) -> None:
        """read by the recipient marks a direct message ``read: true``, for good."""
        stored = await self.create(storage, self.message("alice", "bob", "hello"))
        read = await _call(storage.read, message_id(stored), "bob")
        assert read is not None
        assert message_id(read) == message_id(stored)
        assert read["read"] is True
        assert read["text"] == "hello"
        [fetched] = await self.history(storage, "alice", "bob")
        assert fetched["read"] is True
        again = await _call(storage.read, message_id(stored), "bob")
        assert again is not None and again["read"] is True

    @pytest_twisted.ensureDeferred
    async def test_sender_and_others_cannot_read_a_direct_message(self, storage: Any) -> None:
        """Only the recipient may read a direct message: read answers None to anyone else."""
        stored = await self.create(storage, self.message("alice", "bob"))
        assert await _call(storage.read, message_id(stored), "alice") is None, (
            "read by the sender of a direct message must answer None"
        )
        assert await _call(storage.read, message_id(stored), "carol") is None, (
            "read by someone other than the recipient must answer None"
        )
        [fetched] = await self.history(storage, "alice", "bob")
        assert not fetched.get("read")

    @pytest_twisted.ensureDeferred
    async def test_members_read_a_group_message_once_each(self, storage: Any) -> None:
        """Each member who reads a group message is added to its ``readBy`` once."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        stored = await self.create(storage, self.message("alice", "team", "hi all", group=True))
        read = await _call(storage.read, message_id(stored), "bob")
        assert message_id(read) == message_id(stored)
        assert read.get("readBy") == ["bob"], (
            "read of a group message must add the reader to its readBy list"
        )
        assert read["text"] == "hi all"
        again = await _call(storage.read, message_id(stored), "bob")
        assert again["readBy"] == ["bob"]
        both = await _call(storage.read, message_id(stored), "carol")
        assert sorted(both["readBy"]) == ["bob", "carol"]
        [fetched] = await self.history(storage, "carol", "team", isGroup=True)
        assert sorted(fetched["readBy"]) == ["bob", "carol"]

    @pytest_twisted.ensureDeferred
    async def test_sender_and_outsiders_cannot_read_a_group_message(self, storage: Any) -> None:
        """The sender and non-members may not read a group message: read answers None."""
        await self.group(storage, "team", ["alice", "bob"])
        stored = await self.create(storage, self.message("alice", "team", group=True))
        assert await _call(storage.read, message_id(stored), "alice") is None, (
            "read of a group message by its sender must answer None"
        )
        assert await _call(storage.read, message_id(stored), "mallory") is None, (
            "read of a group message by a non-member must answer None"
        )
        [fetched] = await self.history(storage, "bob", "team", isGroup=True)
        assert not fetched.get("readBy")

    @pytest_twisted.ensureDeferred
    async def test_read_an_unknown_id(self, storage: Any) -> None:
        """read of an id that names no message answers None."""
        stored = await self.create(storage, self.message("alice", "bob"))
        unknown = self.unknown_message_id(message_id(stored))
        assert unknown != message_id(stored)
        assert await _call(storage.read, unknown, "bob") is None

    @pytest_twisted.ensureDeferred
    async def test_read_a_malformed_id(self, storage: Any) -> None:
        """read of a malformed id answers None (no error, no match)."""
        stored = await self.create(storage, self.message("alice", "bob"))
        real = message_id(stored)
        for malformed in (*MALFORMED_IDS, f" {real}", f"{real} ", f"{real}\n", f"+{real}"):
            assert await _call(storage.read, malformed, "bob") is None, repr(malformed)
        [fetched] = await self.history(storage, "alice", "bob")
        assert not fetched.get("read")

    # content

    @pytest_twisted.ensureDeferred
    async def test_unicode_round_trips(self, storage: Any) -> None:
        """Any Unicode text, in ids and fields, is stored and returned unchanged."""
        sender, to = "élodie", "用户-שלום-😀"
        sent = self.message(sender, to, UNICODE_TEXT, meta={"ключ": "値 \x00 𝄞"})
        stored = await self.create(storage, sent)
        assert stored["text"] == UNICODE_TEXT
        [fetched] = await self.history(storage, to, sender)
        assert fetched["text"] == UNICODE_TEXT
        assert fetched["meta"] == {"ключ": "値 \x00 𝄞"}
        read = await _call(storage.read, message_id(stored), to)
        assert read["text"] == UNICODE_TEXT and read["read"] is True

    @pytest_twisted.ensureDeferred
    async def test_a_message_just_under_the_size_limit_round_trips(self, storage: Any) -> None:
        """A message just under the server's size limit is stored whole."""
        sent = self.message("alice", "bob", "")
        room = self.max_message_bytes - len(orjson.dumps(sent)) - 256
        pattern = "The quick brown fox jumps over the lazy dog; ünïcödé 😀. "
        text = (
            (pattern * (room // len(pattern.encode()) + 1)).encode()[:room].decode(errors="ignore")
        )
        sent["text"] = text
        assert self.max_message_bytes - 512 < len(orjson.dumps(sent)) < self.max_message_bytes
        await self.create(storage, sent)
        [fetched] = await self.history(storage, "bob", "alice")
        assert fetched["text"] == text

    # concurrency and idempotency

    @pytest_twisted.ensureDeferred
    async def test_a_thousand_concurrent_creates(self, storage: Any) -> None:
        """A thousand creates fired at once are all stored, in call order."""
        sent = [
            self.message(*(("alice", "bob") if i % 2 else ("bob", "alice")), f"m{i}", n=i)
            for i in range(1000)
        ]
        # All fired before any is waited for, as a burst of frames would be.
        stored = await gatherResults([_call(storage.create, dict(m)) for m in sent])
        assert [m["n"] for m in stored] == list(range(1000))
        assert len(set(self.ids(stored))) == 1000
        pages = []
        for skip in range(0, 1100, 100):
            pages.extend(await self.history(storage, "alice", "bob", skip=skip, limit=100))
        assert [m["n"] for m in pages] == list(range(999, -1, -1)), (
            "messages created concurrently must come back newest first, in call order"
        )
        assert self.ids(pages) == self.ids(reversed(stored))

    @pytest_twisted.ensureDeferred
    async def test_a_resent_client_message_id_is_stored_once(self, storage: Any) -> None:
        """A ``clientMessageId`` sent again by the same sender returns the first stored copy."""
        firsts = []
        for client_id in ("c1", 42):  # any JSON value the client chose
            sent = self.message("alice", "bob", f"{client_id}", clientMessageId=client_id)
            first = await self.create(storage, sent)
            resent = self.message("alice", "bob", "retry", clientMessageId=client_id)
            again = await _call(storage.create, resent)
            assert message_id(again) == message_id(first), (
                "create with a clientMessageId already used by the sender must fire with "
                "the message stored the first time, not store another"
            )
            assert again["text"] == f"{client_id}"  # the first copy, as stored
            firsts.append(first)
        history = await self.history(storage, "alice", "bob")
        assert self.ids(history) == self.ids(reversed(firsts))

    @pytest_twisted.ensureDeferred
    async def test_concurrent_resends_store_one_message_each(self, storage: Any) -> None:
        """Concurrent resends of the same ``clientMessageId`` store one message."""
        sends = [
            self.message("alice", "bob", f"{key}", clientMessageId=key)
            for _ in range(10)
            for key in (f"c{k}" for k in range(20))
        ]
        stored = await gatherResults([_call(storage.create, dict(m)) for m in sends])
        by_key: dict[str, set[str]] = {}
        for sent, result in zip(sends, stored, strict=True):
            assert result["text"] == sent["clientMessageId"]
            by_key.setdefault(sent["clientMessageId"], set()).add(message_id(result))
        assert all(len(ids) == 1 for ids in by_key.values()), (
            "concurrent creates with the same clientMessageId must store one message, "
            f"got several ids for one clientMessageId: {by_key}"
        )
        history = await self.history(storage, "bob", "alice")
        assert sorted(m["clientMessageId"] for m in history) == sorted(by_key)
        assert sorted(self.ids(history)) == sorted(i for ids in by_key.values() for i in ids)

    @pytest_twisted.ensureDeferred
    async def test_client_message_ids_are_per_sender(self, storage: Any) -> None:
        """``clientMessageId`` is per sender: two senders may use the same one."""
        from_alice = await self.create(storage, self.message("alice", "bob", clientMessageId="c1"))
        from_bob = await self.create(storage, self.message("bob", "alice", clientMessageId="c1"))
        other_id = await self.create(storage, self.message("alice", "bob", clientMessageId="c2"))
        ids = {message_id(from_alice), message_id(from_bob), message_id(other_id)}
        assert len(ids) == 3
        assert len(await self.history(storage, "alice", "bob")) == 3


__all__ = [
    "MALFORMED_IDS",
    "UNICODE_TEXT",
    "ConformanceHooks",
    "StorageConformanceTests",
    "exception_of",
    "failure_of",
    "message_id",
    "timestamp",
]
