"""MongoStorage's optional interfaces against a real MongoDB-compatible server:
the paged directory, the conversation index and history cursors, session
revocations and accounts (see chatserver.interfaces for the contracts)."""

from __future__ import annotations

import orjson
import pytest
import pytest_twisted
from bson import ObjectId
from twisted.internet.defer import gatherResults

from chatserver.errors import INVALID_QUERY, NOT_FOUND, ChatError
from chatserver.interfaces import (
    IAccountStore,
    IChatStorage,
    IConversationStore,
    ISessionRevocations,
    IUserDirectory,
)
from chatserver.storage.mongo import MongoStorage
from chatserver.testing.conformance import timestamp


@pytest_twisted.async_yield_fixture
async def storage(mongodb_uri):
    store = MongoStorage(mongodb_uri, timeout=30)
    store.startService()
    await store.whenReady()
    yield store
    await store.stopService()


class Sender:
    """Creates messages with increasing ``createdAt``, as a server would."""

    def __init__(self, storage: MongoStorage) -> None:
        self.storage = storage
        self.clock = 0

    async def __call__(self, sender: str, to: str, text: str = "", **fields: object) -> dict:
        self.clock += 1
        fields.setdefault("createdAt", timestamp(self.clock))
        message = {"from": sender, "to": to, "text": text or f"m{self.clock}", **fields}
        return await self.storage.create(message)


@pytest.fixture
def send(storage):
    return Sender(storage)


def page(limit: int = 100, after: str | None = None, **query: object) -> dict:
    return {"after": after, "limit": limit, **query}


def test_provides_every_interface():
    store = MongoStorage("mongodb://127.0.0.1:9/x")
    for interface in (
        IChatStorage,
        IUserDirectory,
        IConversationStore,
        ISessionRevocations,
        IAccountStore,
    ):
        assert interface.providedBy(store), interface


# -- IUserDirectory -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_users_a_page_at_a_time(storage):
    for user_id in ("dave", "alice", "carol", "bob", "erin"):
        await storage.add_user(user_id, name=user_id.title() if user_id != "erin" else None)
    first = await storage.listUsers(page(2, userId="anyone"))
    assert first == [{"id": "alice", "name": "Alice"}, {"id": "bob", "name": "Bob"}]
    second = await storage.listUsers(page(2, after="bob"))
    assert [u["id"] for u in second] == ["carol", "dave"]
    last = await storage.listUsers(page(2, after="dave"))
    assert last == [{"id": "erin", "name": "erin"}]  # the name defaults to the id
    assert await storage.listUsers(page(2, after="erin")) == []
    assert await storage.list_all_users(after="alice", limit=1) == [{"id": "bob", "name": "Bob"}]


@pytest_twisted.ensureDeferred
async def test_list_groups_keeps_names(storage):
    await storage.add_group("team", ["alice", "bob"], name="The Team")
    await storage.add_group("book-club", ["alice"])
    await storage.add_group("others", ["bob"])
    groups = await storage.listGroups(page(userId="alice"))
    assert groups == [
        {"id": "book-club", "name": "book-club"},
        {"id": "team", "name": "The Team"},
    ]
    assert await storage.listGroups(page(1, after="book-club", userId="alice")) == [
        {"id": "team", "name": "The Team"}
    ]
    assert await storage.listGroups(page(userId="nobody")) == []


@pytest_twisted.ensureDeferred
async def test_contacts_share_a_group_or_a_direct_conversation(storage, send):
    for user_id in ("alice", "bob", "carol", "dave", "erin", "frank"):
        await storage.add_user(user_id, name=user_id.title())
    await storage.add_group("team", ["alice", "bob", "carol"])
    await storage.add_group("pair", ["carol", "alice"])
    await storage.add_group("elsewhere", ["erin", "frank"])
    await send("dave", "alice")  # dave wrote to alice: a contact of hers, and she of his
    await send("alice", "alice")  # herself: never her own contact
    await send("frank", "team", isGroup=True)  # not a member: no contact for that
    contacts = await storage.listContacts(page(userId="alice"))
    assert contacts == [
        {"id": "bob", "name": "Bob"},
        {"id": "carol", "name": "Carol"},
        {"id": "dave", "name": "Dave"},
    ]
    assert await storage.listContacts(page(2, userId="alice")) == contacts[:2]
    assert await storage.listContacts(page(2, after="bob", userId="alice")) == contacts[1:]
    assert await storage.listContacts(page(userId="dave")) == [{"id": "alice", "name": "Alice"}]
    # Someone the store has no account for (a removed user, say) keeps their id as name.
    await send("ghost", "erin")
    assert await storage.listContacts(page(userId="erin")) == [
        {"id": "frank", "name": "Frank"},
        {"id": "ghost", "name": "ghost"},
    ]


@pytest_twisted.ensureDeferred
async def test_get_users(storage):
    await storage.add_user("alice", name="Alice")
    await storage.add_user("bob")
    assert await storage.getUsers(["bob", "alice", "nobody", "bob"]) == {
        "alice": {"id": "alice", "name": "Alice"},
        "bob": {"id": "bob", "name": "bob"},
    }
    assert await storage.getUsers([]) == {}


async def plan(storage: MongoStorage, collection: str, command: str = "find", **body: object):
    explained = await storage.database.command({"explain": {command: collection, **body}})
    return repr(explained)


@pytest_twisted.ensureDeferred
async def test_directory_queries_are_served_by_indexes(storage, send):
    await storage.add_group("team", ["alice", "bob"])
    await send("alice", "bob")
    groups = await plan(
        storage, "groups", filter={"users": "alice", "_id": {"$gt": ""}}, sort={"_id": 1}, limit=5
    )
    assert "'member_groups'" in groups
    partners = await plan(
        storage,
        "conversations",
        filter={"user": "alice", "isGroup": False, "with": {"$gt": ""}},
        sort={"with": 1},
        limit=5,
    )
    assert "'conversations_by_partner'" in partners
    for query in ({"user": "alice"}, {"user": "alice", "last": {"$lt": "2026"}}):
        conversations = await plan(storage, "conversations", filter=query, sort={"last": -1})
        assert "'conversations_by_last'" in conversations
    # History pages before or after a message: two ranges of the history index.
    key = '["d","alice","bob"]'
    at, oid = "2026-01-01T00:00:00.000Z", ObjectId()
    for bound, order in (("$lt", -1), ("$gt", 1)):
        for query in (
            {"conversation": key, "createdAt": at, "_id": {bound: oid}},
            {"conversation": key, "createdAt": {bound: at}},
        ):
            history = await plan(
                storage, "messages", filter=query, sort={"createdAt": order, "_id": order}, limit=9
            )
            assert "'conversation_history'" in history, query


# -- IConversationStore: the conversation list ---------------------------------


@pytest_twisted.ensureDeferred
async def test_conversations_latest_first_with_unread_counts(storage, send):
    await storage.add_group("team", ["alice", "bob", "carol"])
    await send("bob", "alice", "hi alice")
    to_bob = await send("alice", "bob", "hi bob")
    await send("carol", "alice", "one")
    from_carol = await send("carol", "alice", "two")
    team = await send("bob", "team", "team news", isGroup=True)

    listed = await storage.getConversations({"userId": "alice", "limit": 10, "before": None})
    assert listed["next"] is None
    assert [(c["with"], c["isGroup"], c["unread"]) for c in listed["conversations"]] == [
        ("team", True, 1),
        ("carol", False, 2),
        ("bob", False, 1),  # bob's message, not hers
    ]
    lasts = [c["last"] for c in listed["conversations"]]
    assert [m["_id"] for m in lasts] == [team["_id"], from_carol["_id"], to_bob["_id"]]
    # "last" is the message as getMessages returns it.
    [newest] = await storage.getMessages({"ids": ["alice", "carol"], "limit": 1})
    assert lasts[1] == newest

    # Reading lowers the count, once per message.
    await storage.read(from_carol["_id"], "alice")
    await storage.read(from_carol["_id"], "alice")
    await storage.read(team["_id"], "alice")
    await storage.read(team["_id"], "alice")
    listed = await storage.getConversations({"userId": "alice", "limit": 10, "before": None})
    assert [(c["with"], c["unread"]) for c in listed["conversations"]] == [
        ("team", 0),
        ("carol", 1),
        ("bob", 1),
    ]
    assert listed["conversations"][1]["last"]["read"] is True

    bobs = await storage.getConversations({"userId": "bob", "limit": 10, "before": None})
    assert [(c["with"], c["unread"]) for c in bobs["conversations"]] == [("team", 0), ("alice", 1)]
    assert (await storage.getConversations({"userId": "nobody", "limit": 5})) == {
        "conversations": [],
        "next": None,
    }


@pytest_twisted.ensureDeferred
async def test_conversations_page_by_cursor(storage, send):
    partners = [f"user{i:02d}" for i in range(7)]
    for partner in partners:
        await send(partner, "alice")
    seen = []
    before = None
    while True:
        listed = await storage.getConversations({"userId": "alice", "limit": 3, "before": before})
        seen.extend(c["with"] for c in listed["conversations"])
        before = listed["next"]
        if before is None:
            break
        # Opaque, and a JSON string: the server may hand it to clients as is.
        assert isinstance(before, str) and orjson.loads(orjson.dumps(before)) == before
    assert seen == list(reversed(partners))

    for bad in ("nope", "", "eyJ4Ijox", 42, ["x"]):
        with pytest.raises(ChatError) as refused:
            await storage.getConversations({"userId": "alice", "limit": 3, "before": bad})
        assert refused.value.code == INVALID_QUERY


@pytest_twisted.ensureDeferred
async def test_a_group_conversation_counts_from_when_one_joined(storage, send):
    await storage.add_group("team", ["alice", "bob"])
    before_carol = await send("alice", "team", "before carol", isGroup=True)
    await storage.add_member("team", "carol")
    # No message yet since she joined: no conversation.
    listed = await storage.getConversations({"userId": "carol", "limit": 5})
    assert listed["conversations"] == []
    after_carol = await send("bob", "team", "welcome", isGroup=True)
    [entry] = (await storage.getConversations({"userId": "carol", "limit": 5}))["conversations"]
    assert (entry["with"], entry["unread"], entry["last"]["_id"]) == ("team", 1, after_carol["_id"])
    # Reading what came before she joined changes no count.
    assert (await storage.read(before_carol["_id"], "carol"))["readBy"] == ["carol"]
    [entry] = (await storage.getConversations({"userId": "carol", "limit": 5}))["conversations"]
    assert entry["unread"] == 1
    await storage.read(after_carol["_id"], "carol")
    [entry] = (await storage.getConversations({"userId": "carol", "limit": 5}))["conversations"]
    assert entry["unread"] == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_creates_leave_the_latest_as_last(storage):
    # Fired together: the index writes may land in any order.
    messages = [
        {"from": "alice", "to": "bob", "createdAt": timestamp(i % 5), "text": f"m{i}"}
        for i in range(40)
    ]
    stored = await gatherResults([storage.create(dict(m)) for m in messages])
    [newest] = await storage.getMessages({"ids": ["bob", "alice"], "limit": 1})
    # createdAt 4 is the latest; of those, the one created last.
    assert newest["_id"] == stored[39]["_id"]
    for user in ("alice", "bob"):
        [entry] = (await storage.getConversations({"userId": user, "limit": 5}))["conversations"]
        assert entry["last"]["_id"] == newest["_id"]
        assert entry["unread"] == (40 if user == "bob" else 0)


@pytest_twisted.ensureDeferred
async def test_a_resent_message_is_counted_once(storage):
    message = {"from": "alice", "to": "bob", "createdAt": timestamp(1), "clientMessageId": "c"}
    first = await storage.create(dict(message))
    again = await storage.create(dict(message))
    assert again["_id"] == first["_id"]
    [entry] = (await storage.getConversations({"userId": "bob", "limit": 5}))["conversations"]
    assert entry["unread"] == 1


# -- IConversationStore: history cursors -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_before_and_after_a_message(storage, send):
    sent = [await send("alice" if i % 2 else "bob", "bob" if i % 2 else "alice") for i in range(9)]
    ids = [m["_id"] for m in sent]

    async def history(**query: object) -> list[str]:
        messages = await storage.getMessages({"ids": ["alice", "bob"], "skip": 0, **query})
        return [m["_id"] for m in messages]

    assert await history(limit=3, before=ids[5]) == [ids[4], ids[3], ids[2]]  # newest first
    assert await history(limit=3, before=ids[1]) == [ids[0]]
    assert await history(limit=3, before=ids[0]) == []
    assert await history(limit=3, after=ids[5]) == [ids[6], ids[7], ids[8]]  # oldest first
    assert await history(limit=3, after=ids[8]) == []
    assert await history(limit=100, after=ids[0]) == ids[1:]
    assert await history(limit=0, after=ids[0]) == []


@pytest_twisted.ensureDeferred
async def test_history_cursors_keep_insertion_order_within_an_instant(storage, send):
    same = timestamp(0)
    sent = [await send("alice", "bob", createdAt=same) for _ in range(5)]
    ids = [m["_id"] for m in sent]
    page = await storage.getMessages({"ids": ["bob", "alice"], "limit": 10, "after": ids[1]})
    assert [m["_id"] for m in page] == ids[2:]
    page = await storage.getMessages({"ids": ["bob", "alice"], "limit": 10, "before": ids[3]})
    assert [m["_id"] for m in page] == [ids[2], ids[1], ids[0]]


@pytest_twisted.ensureDeferred
async def test_group_history_cursors(storage, send):
    await storage.add_group("team", ["alice", "bob"])
    sent = [await send("alice", "team", isGroup=True) for _ in range(4)]
    await send("alice", "bob")  # another conversation, in between
    page = await storage.getMessages(
        {"ids": ["bob", "team"], "isGroup": True, "limit": 10, "after": sent[0]["_id"]}
    )
    assert [m["_id"] for m in page] == [m["_id"] for m in sent[1:]]


@pytest_twisted.ensureDeferred
async def test_a_cursor_that_names_no_message_here_is_not_found(storage, send):
    ours = await send("alice", "bob")
    theirs = await send("carol", "dave")
    for cursor in (theirs["_id"], str(ObjectId()), "nope", "", "1" * 24 + " ", 7):
        for direction in ("before", "after"):
            with pytest.raises(ChatError) as missing:
                await storage.getMessages({"ids": ["alice", "bob"], "limit": 5, direction: cursor})
            assert missing.value.code == NOT_FOUND, (direction, cursor)
    page = await storage.getMessages({"ids": ["bob", "alice"], "limit": 5, "before": ours["_id"]})
    assert page == []


# -- ISessionRevocations ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_revocations_after_a_cursor(storage):
    await storage.add_user("alice")
    await storage.add_user("bob")
    await storage.revoke_sessions("old")  # before the first poll: not reported
    users, cursor = await storage.revocationsAfter(None)
    assert users == []
    cursor = orjson.loads(orjson.dumps(cursor))  # the server may keep it as JSON
    assert await storage.revocationsAfter(cursor) == ([], cursor)

    await storage.revoke_sessions("alice")
    await storage.set_token("bob")
    users, cursor = await storage.revocationsAfter(cursor)
    assert sorted(users) == ["alice", "bob"]
    users, cursor = await storage.revocationsAfter(cursor)
    assert users == []  # each reported once

    assert await storage.remove_user("alice") is True
    users, cursor = await storage.revocationsAfter(cursor)
    assert users == ["alice"]

    with pytest.raises(ValueError):
        await storage.revocationsAfter("not a cursor")


# -- IAccountStore ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_accounts(storage):
    token = await storage.add_user("alice", "Alice")
    assert (await storage.authorize({"token": token}))["_id"] == "alice"
    with pytest.raises(ValueError, match="exists"):
        await storage.add_user("alice")
    assert await storage.get_user("alice") == {"id": "alice", "name": "Alice"}
    assert await storage.get_user("nobody") is None
    with pytest.raises(LookupError):
        await storage.set_token("nobody")
    fresh = await storage.set_token("alice", "chosen")
    assert fresh == "chosen"
    assert await storage.authorize({"token": token}) is None
    assert (await storage.authorize({"token": "chosen"}))["_id"] == "alice"

    await storage.add_user("bob")
    await storage.add_group("team", ["alice", "bob", "alice"], name="Team")
    assert await storage.get_group("team") == {
        "id": "team",
        "name": "Team",
        "members": ["alice", "bob"],
    }
    assert await storage.add_member("team", "carol") is True
    assert await storage.add_member("team", "carol") is False
    with pytest.raises(LookupError):
        await storage.add_member("nope", "carol")
    assert await storage.remove_member("team", "bob") is True
    assert await storage.remove_member("team", "bob") is False
    assert (await storage.get_group("team"))["members"] == ["alice", "carol"]
    # Replacing members keeps the name unless one is given.
    await storage.add_group("team", ["bob"])
    assert await storage.get_group("team") == {"id": "team", "name": "Team", "members": ["bob"]}
    await storage.add_group("team", ["alice", "bob"])

    # Removing a user: token, memberships and conversation list go; messages stay.
    message = await storage.create({"from": "alice", "to": "bob", "createdAt": timestamp(1)})
    assert await storage.remove_user("alice") is True
    assert await storage.remove_user("alice") is False
    assert await storage.authorize({"token": "chosen"}) is None
    assert (await storage.get_group("team"))["members"] == ["bob"]
    assert (await storage.getConversations({"userId": "alice", "limit": 5}))["conversations"] == []
    history = await storage.getMessages({"ids": ["bob", "alice"], "limit": 5})
    assert [m["_id"] for m in history] == [message["_id"]]

    await storage.add_group("solo", ["bob"])
    assert [g["id"] for g in await storage.list_all_groups()] == ["solo", "team"]
    assert await storage.list_all_groups(after="solo", limit=5) == [
        {"id": "team", "name": "Team", "members": ["bob"]}
    ]
    assert await storage.remove_group("solo") is True
    assert await storage.remove_group("solo") is False
    assert await storage.get_group("solo") is None

    for bad in ("", None, 5):
        with pytest.raises(ValueError):
            await storage.add_user(bad)
        with pytest.raises(ValueError):
            await storage.get_user(bad)
        with pytest.raises(ValueError):
            await storage.add_group(bad, ["x"])
