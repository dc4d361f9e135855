"""The :class:`~chatserver.interfaces.IConversationStore` contract, as pytest tests."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from chatserver.errors import INVALID_QUERY, NOT_FOUND
from chatserver.interfaces import IAccountStore, IConversationStore
from chatserver.testing.conformance import (
    MALFORMED_IDS,
    ConformanceHooks,
    _call,
    failure_of,
    message_id,
    timestamp,
)

ORDER_RULE = "getConversations must order conversations by their last message, newest first"


class ConversationConformanceTests(ConformanceHooks):
    """Tests for a store that provides :class:`IConversationStore`.

    A mixin: add it to the bases of your :class:`StorageConformanceTests`
    subclass, whose hooks it uses to provision users and groups (and to
    change a group's members, by calling ``add_group`` again).
    """

    async def conversations(
        self, storage: Any, user_id: str, limit: int = 100, before: str | None = None
    ) -> dict[str, Any]:
        """One page of ``getConversations``, checked for shape."""
        query = {"userId": user_id, "limit": limit, "before": before}
        page = await _call(storage.getConversations, query)
        assert isinstance(page, dict) and isinstance(page.get("conversations"), list), (
            f'getConversations must fire with {{"conversations": [...], "next": ...}}, got {page!r}'
        )
        assert page.get("next") is None or isinstance(page["next"], str), (
            f"getConversations' next must be a string or None, got {page.get('next')!r}"
        )
        assert len(page["conversations"]) <= limit, (
            f"getConversations must return at most limit={limit} conversations"
        )
        for conversation in page["conversations"]:
            assert set(conversation) >= {"with", "isGroup", "last", "unread"}, (
                f"each conversation must carry with, isGroup, last and unread, got {conversation!r}"
            )
            assert isinstance(conversation["with"], str)
            assert conversation["isGroup"] in (True, False)
            assert type(conversation["unread"]) is int and conversation["unread"] >= 0, (
                f"unread must be a non-negative int, got {conversation['unread']!r}"
            )
        return page

    async def all_conversations(
        self, storage: Any, user_id: str, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Every conversation of ``user_id``, walking the pages with ``next``."""
        found: list[dict[str, Any]] = []
        before = None
        while True:
            page = await self.conversations(storage, user_id, limit, before)
            found.extend(page["conversations"])
            before = page["next"]
            if before is None:
                return found
            assert page["conversations"], "a page with a next cursor must not be empty"
            assert len(found) < 100_000, "walking getConversations with next must end"

    async def summary(self, storage: Any, user_id: str) -> list[tuple[str, bool, str | None, int]]:
        """``(with, isGroup, text of last, unread)`` for each conversation."""
        return [
            (c["with"], c["isGroup"], c["last"].get("text"), c["unread"])
            for c in await self.all_conversations(storage, user_id)
        ]

    async def unread(self, storage: Any, user_id: str, other: str) -> int | None:
        for conversation in await self.all_conversations(storage, user_id):
            if conversation["with"] == other:
                unread: int = conversation["unread"]
                return unread
        return None

    async def read(self, storage: Any, message: dict[str, Any], user_id: str) -> Any:
        return await _call(storage.read, message_id(message), user_id)

    # The tests

    @pytest_twisted.ensureDeferred
    async def test_store_declares_the_conversation_store(self, storage: Any) -> None:
        """The store declares IConversationStore (``@implementer(IConversationStore)``)."""
        assert IConversationStore.providedBy(storage), (
            "the store must declare IConversationStore, or the server will not use it"
        )

    @pytest_twisted.ensureDeferred
    async def test_no_conversations(self, storage: Any) -> None:
        """A user with no messages has no conversations and no next page."""
        await self.user(storage, "alice")
        assert await self.conversations(storage, "alice") == {"conversations": [], "next": None}

    @pytest_twisted.ensureDeferred
    async def test_a_direct_message_starts_a_conversation_on_both_sides(self, storage: Any) -> None:
        """A direct message puts the conversation in the sender's and the
        recipient's lists, with the message as ``last``; it is unread for the
        recipient only."""
        sent = await self.create(storage, self.message("alice", "bob", "hello"))
        [mine] = (await self.conversations(storage, "alice"))["conversations"]
        [theirs] = (await self.conversations(storage, "bob"))["conversations"]
        assert (mine["with"], mine["isGroup"], theirs["with"], theirs["isGroup"]) == (
            "bob",
            False,
            "alice",
            False,
        ), "a direct conversation must be listed with the other side's id and isGroup false"
        for conversation in (mine, theirs):
            assert message_id(conversation["last"]) == message_id(sent), (
                "last must be the conversation's last message"
            )
            [fetched] = await self.history(storage, "alice", "bob")
            assert conversation["last"] == fetched, (
                "last must be the message as getMessages returns it"
            )
        assert (mine["unread"], theirs["unread"]) == (0, 1), (
            "a message must be unread for its recipient and not for its sender"
        )
        assert await self.conversations(storage, "carol") == {"conversations": [], "next": None}

    @pytest_twisted.ensureDeferred
    async def test_ordered_by_last_message_newest_first(self, storage: Any) -> None:
        """getConversations orders conversations by their last message, newest first."""
        for other in ("bob", "carol", "dave"):
            await self.create(storage, self.message("alice", other, f"to {other}"))
        await self.create(storage, self.message("bob", "alice", "bob again"))
        await self.group(storage, "team", ["alice", "erin"])
        await self.create(storage, self.message("erin", "team", "to the team", group=True))
        await self.create(storage, self.message("dave", "alice", "dave again"))
        assert [c[0] for c in await self.summary(storage, "alice")] == [
            "dave",
            "team",
            "bob",
            "carol",
        ], ORDER_RULE

    @pytest_twisted.ensureDeferred
    async def test_equal_created_at_is_ordered_by_insertion(self, storage: Any) -> None:
        """Conversations whose last messages have equal ``createdAt`` are
        ordered by insertion: the later message is the newer."""
        at = timestamp(5)
        for other in ("bob", "carol", "dave", "bob"):
            await self.create(storage, self.message("alice", other, other, createdAt=at))
        assert [c[0] for c in await self.summary(storage, "alice")] == [
            "bob",
            "dave",
            "carol",
        ], ORDER_RULE + ", and for equal createdAt, the later insertion first"
        [bob] = [c for c in await self.all_conversations(storage, "alice") if c["with"] == "bob"]
        assert bob["last"]["text"] == "bob", "last must be the latest insertion among equals"

    @pytest_twisted.ensureDeferred
    async def test_an_older_message_does_not_move_a_conversation(self, storage: Any) -> None:
        """A message whose ``createdAt`` is older than its conversation's last
        neither becomes ``last`` nor moves the conversation (it still counts
        as unread)."""
        await self.create(storage, self.message("bob", "alice", "new", createdAt=timestamp(50)))
        await self.create(storage, self.message("carol", "alice", "mid", createdAt=timestamp(30)))
        await self.create(storage, self.message("bob", "alice", "old", createdAt=timestamp(10)))
        assert await self.summary(storage, "alice") == [
            ("bob", False, "new", 2),
            ("carol", False, "mid", 1),
        ], (
            "a conversation's position and last must be its newest message by createdAt, "
            "whatever the order of insertion; every message to the user counts as unread"
        )
        await self.create(storage, self.message("dave", "alice", "older", createdAt=timestamp(1)))
        assert [c[0] for c in await self.summary(storage, "alice")] == ["bob", "carol", "dave"], (
            ORDER_RULE + " by createdAt, even when inserted out of order"
        )

    @pytest_twisted.ensureDeferred
    async def test_a_group_conversation_is_listed_for_its_members(self, storage: Any) -> None:
        """A group message puts the group in every member's list, unread for
        all but the sender, and in no one else's."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        sent = await self.create(storage, self.message("alice", "team", "hi all", group=True))
        for member, unread in (("alice", 0), ("bob", 1), ("carol", 1)):
            [conversation] = (await self.conversations(storage, member))["conversations"]
            assert (conversation["with"], conversation["isGroup"]) == ("team", True), (
                "a group conversation must be listed with the group's id and isGroup true"
            )
            assert message_id(conversation["last"]) == message_id(sent)
            assert conversation["unread"] == unread, (
                "a group message must be unread for every member but its sender"
            )
        assert (await self.conversations(storage, "dave"))["conversations"] == [], (
            "a group conversation must not be listed for a non-member"
        )

    @pytest_twisted.ensureDeferred
    async def test_direct_unread_counts(self, storage: Any) -> None:
        """``unread`` counts the messages to the user that they have not read:
        their own messages never count, and reading a message lowers it once."""
        to_bob = [
            await self.create(storage, self.message("alice", "bob", f"m{i}")) for i in range(3)
        ]
        from_bob = await self.create(storage, self.message("bob", "alice", "reply"))
        assert await self.unread(storage, "bob", "alice") == 3
        assert await self.unread(storage, "alice", "bob") == 1, (
            "the user's own messages must never count as unread"
        )
        await self.read(storage, to_bob[1], "bob")
        await self.read(storage, to_bob[1], "bob")
        assert await self.unread(storage, "bob", "alice") == 2, (
            "reading a message must lower unread by one, the first time only"
        )
        assert await self.read(storage, to_bob[0], "alice") is None
        assert await self.read(storage, to_bob[0], "carol") is None
        assert await self.unread(storage, "bob", "alice") == 2, (
            "a read refused (by the sender or a stranger) must not change unread"
        )
        await self.read(storage, from_bob, "alice")
        for message in to_bob:
            await self.read(storage, message, "bob")
        assert (
            await self.unread(storage, "bob", "alice"),
            await self.unread(storage, "alice", "bob"),
        ) == (0, 0)

    @pytest_twisted.ensureDeferred
    async def test_a_message_to_oneself(self, storage: Any) -> None:
        """A message to oneself makes one conversation with oneself, never unread."""
        await self.create(storage, self.message("alice", "alice", "note"))
        assert await self.summary(storage, "alice") == [("alice", False, "note", 0)]

    @pytest_twisted.ensureDeferred
    async def test_group_unread_counts(self, storage: Any) -> None:
        """Each member's ``unread`` of a group counts the messages they have
        not read, their own excepted; one member reading changes only theirs."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        sent = [
            await self.create(storage, self.message(sender, "team", f"m{i}", group=True))
            for i, sender in enumerate(["alice", "alice", "bob", "alice"])
        ]
        assert [await self.unread(storage, m, "team") for m in ("alice", "bob", "carol")] == [
            1,
            3,
            4,
        ], "a member's unread must count the group's messages from the others"
        await self.read(storage, sent[0], "bob")
        await self.read(storage, sent[0], "bob")
        await self.read(storage, sent[2], "bob")  # his own: refused
        assert [await self.unread(storage, m, "team") for m in ("alice", "bob", "carol")] == [
            1,
            2,
            4,
        ], "reading a group message must lower that reader's unread once, and no one else's"
        await self.read(storage, sent[0], "dave")  # not a member: refused
        assert await self.unread(storage, "carol", "team") == 4

    @pytest_twisted.ensureDeferred
    async def test_a_member_who_joins_later(self, storage: Any) -> None:
        """A member added to a group sees it once a message is sent after they
        joined, and only such messages count as unread for them."""
        await self.group(storage, "team", ["alice", "bob"])
        before = await self.create(storage, self.message("alice", "team", "before", group=True))
        await self.group(storage, "team", ["alice", "bob", "carol"])
        assert (await self.conversations(storage, "carol"))["conversations"] == [], (
            "a member added later must not see the group before a message is sent to it"
        )
        after = await self.create(storage, self.message("bob", "team", "after", group=True))
        assert await self.summary(storage, "carol") == [("team", True, "after", 1)], (
            "a member added later must see the group once a message arrives, counting "
            "only the messages sent since they joined"
        )
        await self.read(storage, before, "carol")
        assert await self.unread(storage, "carol", "team") == 1, (
            "reading a message sent before joining must not lower unread"
        )
        await self.read(storage, after, "carol")
        assert await self.unread(storage, "carol", "team") == 0

    @pytest_twisted.ensureDeferred
    async def test_a_member_who_leaves(self, storage: Any) -> None:
        """A member who leaves a group keeps the conversation as it was, with
        nothing unread, and nothing sent while they are out counts for them;
        back in, new messages count again."""
        await self.group(storage, "team", ["alice", "bob"])
        await self.create(storage, self.message("alice", "team", "one", group=True))
        await self.group(storage, "team", ["alice"])
        assert await self.summary(storage, "bob") == [("team", True, "one", 0)], (
            "a member who left must keep the conversation, its last as it was, unread 0"
        )
        await self.create(storage, self.message("alice", "team", "two", group=True))
        assert await self.summary(storage, "bob") == [("team", True, "one", 0)], (
            "messages sent to a group after a member left must not reach their conversation"
        )
        await self.group(storage, "team", ["alice", "bob"])
        await self.create(storage, self.message("alice", "team", "three", group=True))
        assert await self.summary(storage, "bob") == [("team", True, "three", 1)], (
            "back in the group, a member must count the messages sent since"
        )

    @pytest_twisted.ensureDeferred
    async def test_leaving_through_the_account_methods(self, storage: Any) -> None:
        """Leaving a group by remove_member, remove_group or remove_user
        (IAccountStore) resets the conversation's unread to 0 as well."""
        if not IAccountStore.providedBy(storage):
            pytest.skip("needs IAccountStore, which the store lacks")
        for group_id in ("one", "two", "three"):
            await _call(storage.add_group, group_id, ["alice", "bob", "carol"])
            await self.create(storage, self.message("alice", group_id, group=True))
        await _call(storage.remove_member, "one", "bob")
        await _call(storage.remove_group, "two")
        assert [await self.unread(storage, "bob", g) for g in ("one", "two", "three")] == [
            0,
            0,
            1,
        ], "remove_member and remove_group must reset the unread of those who leave"
        assert await self.unread(storage, "carol", "two") == 0
        await _call(storage.remove_user, "carol")
        assert [await self.unread(storage, "carol", g) for g in ("one", "three")] == [0, 0], (
            "remove_user must reset the unread of every group the user leaves"
        )

    @pytest_twisted.ensureDeferred
    async def test_last_follows_reads(self, storage: Any) -> None:
        """``last`` is the message as it is now: a read shows in it."""
        await self.create(storage, self.message("alice", "bob", "hello"))
        [message] = await self.history(storage, "bob", "alice")
        await self.read(storage, message, "bob")
        [conversation] = (await self.conversations(storage, "alice"))["conversations"]
        assert conversation["last"].get("read") is True, (
            "last must show the message as getMessages would, read by its recipient"
        )

    @pytest_twisted.ensureDeferred
    async def test_many_conversations_page_by_page(self, storage: Any) -> None:
        """getConversations pages through 250 conversations with ``limit``
        and ``next``, newest first, each once; ``next`` is None on the last page."""
        others = [f"user{i:03}" for i in range(250)]
        for i, other in enumerate(others):
            sender, to = (other, "alice") if i % 3 else ("alice", other)
            await self.create(storage, self.message(sender, to, other))
        newest_first = others[::-1]
        pages = []
        before = None
        while True:
            page = await self.conversations(storage, "alice", 100, before)
            pages.append([c["with"] for c in page["conversations"]])
            before = page["next"]
            if before is None:
                break
        assert [len(p) for p in pages] == [100, 100, 50], (
            "250 conversations read 100 at a time must come in pages of 100, 100 and 50, "
            f"the last with next None; got pages of {[len(p) for p in pages]}"
        )
        assert [c for p in pages for c in p] == newest_first, (
            ORDER_RULE + ", across pages, each conversation once"
        )
        exact = await self.conversations(storage, "user000", 1)
        assert exact["next"] is None, "next must be None on the last page, even when it is full"
        assert await self.all_conversations(storage, "alice", 7) == await self.all_conversations(
            storage, "alice", 250
        )

    @pytest_twisted.ensureDeferred
    async def test_pages_never_repeat_while_messages_arrive(self, storage: Any) -> None:
        """A conversation that gets a new message between two pages moves to
        the top, out of the pages still to come: none is listed twice."""
        for i in range(30):
            await self.create(storage, self.message(f"u{i:02}", "alice"))
        first = await self.conversations(storage, "alice", 10)
        seen = [c["with"] for c in first["conversations"]]
        await self.create(storage, self.message("u05", "alice"))  # not seen yet
        await self.create(storage, self.message("u29", "alice"))  # seen already
        before = first["next"]
        while before is not None:
            page = await self.conversations(storage, "alice", 10, before)
            seen.extend(c["with"] for c in page["conversations"])
            before = page["next"]
        assert len(seen) == len(set(seen)), "walking the pages must never list a conversation twice"
        assert "u05" not in seen, "a conversation moved to the top must not show on later pages"

    @pytest_twisted.ensureDeferred
    async def test_a_cursor_the_store_did_not_make(self, storage: Any) -> None:
        """getConversations fails with ``invalidQuery`` for a ``before`` that
        is not a ``next`` it made."""
        await self.create(storage, self.message("alice", "bob"))
        for cursor in ("nope", "", "{}", "1", "😀"):
            failure = await failure_of(
                storage.getConversations, {"userId": "alice", "limit": 10, "before": cursor}
            )
            assert failure == INVALID_QUERY, (
                f"getConversations with before={cursor!r} must fail with "
                f"ChatError('invalidQuery'), not {failure}"
            )

    @pytest_twisted.ensureDeferred
    async def test_unread_stays_exact_under_concurrency(self, storage: Any) -> None:
        """Unread counts stay exact when creates and reads are fired at once."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        sends = [self.message("alice", "bob", f"d{i}") for i in range(60)]
        sends += [self.message("carol", "team", f"g{i}", group=True) for i in range(60)]
        stored = await gatherResults([_call(storage.create, dict(m)) for m in sends])
        reads = [_call(storage.read, message_id(m), "bob") for m in stored[::2]]
        reads += [_call(storage.read, message_id(m), "bob") for m in stored[::2]]
        await gatherResults(reads)
        assert await self.unread(storage, "bob", "alice") == 30
        assert await self.unread(storage, "bob", "team") == 30
        assert await self.unread(storage, "alice", "team") == 60, (
            "unread must count every message exactly once, whatever the concurrency"
        )

    # getMessages cursors

    async def thirty(self, storage: Any) -> list[dict[str, Any]]:
        """Thirty messages between alice and bob, oldest first, three of
        them sharing one ``createdAt``."""
        stored = []
        for i in range(30):
            at = timestamp(100) if i in (10, 11, 12) else timestamp(10 * i)
            sender, to = ("alice", "bob") if i % 2 else ("bob", "alice")
            stored.append(
                await self.create(storage, self.message(sender, to, f"m{i}", createdAt=at))
            )
        return stored

    @pytest_twisted.ensureDeferred
    async def test_before_pages_back_newest_first(self, storage: Any) -> None:
        """getMessages with ``before`` returns the messages before that one,
        newest first."""
        stored = await self.thirty(storage)
        page = await self.history(storage, "alice", "bob", before=message_id(stored[20]), limit=5)
        assert [m["text"] for m in page] == ["m19", "m18", "m17", "m16", "m15"], (
            "getMessages with before must return the messages before it, newest first"
        )
        page = await self.history(storage, "bob", "alice", before=message_id(stored[12]), limit=5)
        assert [m["text"] for m in page] == ["m11", "m10", "m9", "m8", "m7"], (
            "before must respect insertion order among equal createdAt, from either side"
        )
        assert await self.history(storage, "alice", "bob", before=message_id(stored[0])) == [], (
            "nothing comes before the oldest message"
        )
        walked, cursor = [], None
        while True:
            query: dict[str, str] = {"before": cursor} if cursor else {}
            page = await self.history(storage, "alice", "bob", limit=7, **query)
            if not page:
                break
            walked.extend(page)
            cursor = message_id(page[-1])
        assert self.ids(walked) == self.ids(reversed(stored)), (
            "paging back with before must visit every message once, newest first"
        )

    @pytest_twisted.ensureDeferred
    async def test_after_catches_up_oldest_first(self, storage: Any) -> None:
        """getMessages with ``after`` returns the messages after that one,
        oldest first."""
        stored = await self.thirty(storage)
        page = await self.history(storage, "alice", "bob", after=message_id(stored[20]), limit=5)
        assert [m["text"] for m in page] == ["m21", "m22", "m23", "m24", "m25"], (
            "getMessages with after must return the messages after it, oldest first"
        )
        page = await self.history(storage, "bob", "alice", after=message_id(stored[10]), limit=3)
        assert [m["text"] for m in page] == ["m11", "m12", "m13"], (
            "after must respect insertion order among equal createdAt, from either side"
        )
        assert await self.history(storage, "alice", "bob", after=message_id(stored[-1])) == [], (
            "nothing comes after the newest message"
        )
        walked, cursor = [], message_id(stored[0])
        while True:
            page = await self.history(storage, "alice", "bob", limit=7, after=cursor)
            if not page:
                break
            walked.extend(page)
            cursor = message_id(page[-1])
        assert self.ids(walked) == self.ids(stored[1:]), (
            "catching up with after must visit every later message once, oldest first"
        )

    @pytest_twisted.ensureDeferred
    async def test_cursors_in_a_group(self, storage: Any) -> None:
        """``before`` and ``after`` work in a group conversation too."""
        await self.group(storage, "team", ["alice", "bob", "carol"])
        stored = [
            await self.create(storage, self.message(s, "team", f"g{i}", group=True))
            for i, s in enumerate(["alice", "bob", "carol"] * 4)
        ]
        middle = message_id(stored[6])
        before = await self.history(storage, "carol", "team", isGroup=True, before=middle, limit=3)
        after = await self.history(storage, "carol", "team", isGroup=True, after=middle, limit=3)
        assert [m["text"] for m in before] == ["g5", "g4", "g3"], "before must work in a group"
        assert [m["text"] for m in after] == ["g7", "g8", "g9"], "after must work in a group"

    @pytest_twisted.ensureDeferred
    async def test_a_cursor_that_names_no_message_here(self, storage: Any) -> None:
        """A cursor that is unknown, malformed, or a message of another
        conversation fails getMessages with ``notFound``."""
        await self.group(storage, "team", ["alice", "bob"])
        here = await self.create(storage, self.message("alice", "bob"))
        elsewhere = await self.create(storage, self.message("alice", "carol"))
        in_group = await self.create(storage, self.message("alice", "team", group=True))
        to_team_user = await self.create(storage, self.message("alice", "team"))
        unknown = self.unknown_message_id(message_id(to_team_user))
        cases = [
            ("alice", "bob", False, unknown, "an unknown id"),
            ("alice", "bob", False, message_id(elsewhere), "a message of another conversation"),
            ("alice", "bob", False, message_id(in_group), "a message of a group"),
            ("alice", "team", True, message_id(here), "a direct message, in a group"),
            (
                "alice",
                "team",
                True,
                message_id(to_team_user),
                "a direct message to a user named as the group",
            ),
            *(("alice", "bob", False, bad, "a malformed id") for bad in MALFORMED_IDS if bad),
        ]
        for me, other, is_group, cursor, what in cases:
            for direction in ("before", "after"):
                query = {"ids": [me, other], "skip": 0, "limit": 10, direction: cursor}
                if is_group:
                    query["isGroup"] = True
                failure = await failure_of(storage.getMessages, query)
                assert failure == NOT_FOUND, (
                    f"getMessages with {direction} = {what} ({cursor!r}) must fail with "
                    f"ChatError('notFound'), not {failure}"
                )
