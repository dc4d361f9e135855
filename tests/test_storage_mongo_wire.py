"""MongoStorage's wire traffic and reply handling, against mockupdb.

mockupdb is MongoDB's own scriptable fake server: it runs in threads, queues
each request it does not autorespond to, and lets the test assert on the
request and choose the reply. Its blocking calls run in the reactor's thread
pool, so the reactor (and txmongo on it) keeps running meanwhile.

What this can check: the exact commands and documents sent, and how the
storage handles replies, errors and dropped connections. What it cannot:
whether a real MongoDB evaluates those commands as intended (see
tests/test_storage_mongo.py, run with MONGODB_URI set).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from bson import ObjectId
from mockupdb import MockupDB, OpMsg, absent
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThread

from chatserver.errors import STORAGE_ERROR, STORAGE_TIMEOUT
from chatserver.storage.mongo import (
    BUILDING_INDEXES,
    READY,
    UNREACHABLE,
    MongoStartupError,
    MongoStorage,
    MongoStorageError,
    conversation_entry_id,
    conversation_key,
)
from chatserver.storage.mongo_indexes import INDEXES, find_conflict, format_key

# txmongo refuses servers older than MongoDB 4.0 (wire version 7).
HELLO = {"ismaster": True, "minWireVersion": 0, "maxWireVersion": 17}
DB = "chatdb"
# Each storage call must finish (or fail) within this; short to keep tests fast.
TIMEOUT = 1.5
# How long the test waits for the storage to send the next request.
RECEIVE_TIMEOUT = 5
HIDDEN = {"conversation": 0, "clientKey": 0}
MESSAGE_ID = "0123456789abcdef01234567"


def start_mock(port: int | None = None) -> MockupDB:
    server = MockupDB(port=port, auto_ismaster=HELLO, request_timeout=RECEIVE_TIMEOUT)
    server.autoresponds("ping")
    server.run()
    return server


def discard_mock(server: MockupDB) -> None:
    """Stop ``server`` without waiting for it.

    stop() closes the sockets at once, then joins a thread that notices only
    within a second: too slow to wait for after every test.
    """
    threading.Thread(target=server.stop, daemon=True).start()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_storage(port: int, **options: Any) -> MongoStorage:
    return MongoStorage(
        f"mongodb://127.0.0.1:{port}/{DB}",
        reactor,
        timeout=TIMEOUT,
        pool_size=1,
        retry_delay=0.2,
        max_delay=0.5,
        **options,
    )


def receive(server: MockupDB, *spec: Any, **kwargs: Any) -> Deferred:
    """The next request the mock gets (asserting it matches ``spec``)."""
    return deferToThread(server.receives, *spec, timeout=RECEIVE_TIMEOUT, **kwargs)


def within(d: Deferred, seconds: float = TIMEOUT + 3) -> Deferred:
    """``d``, but failing the test instead of hanging if it never fires."""
    return d.addTimeout(seconds, reactor)


async def answer_index_creation(server: MockupDB) -> list:
    requests = []
    for spec in INDEXES:
        request = await receive(server, OpMsg({"createIndexes": spec.collection}, namespace=DB))
        request.ok()
        requests.append(request)
    return requests


async def failure_of(d: Deferred, code: str = STORAGE_ERROR) -> MongoStorageError:
    with pytest.raises(MongoStorageError) as info:
        await within(d)
    assert info.value.code == code
    return info.value


def index_conversations(server: MockupDB) -> Any:
    """Answer every write to the conversation index (for tests about something else)."""
    return server.autoresponds(OpMsg({"update": "conversations"}, namespace=DB), n=1, nModified=1)


def cursor(*docs: dict, collection: str = "messages") -> dict:
    return {"cursor": {"id": 0, "firstBatch": list(docs), "ns": f"{DB}.{collection}"}}


@pytest.fixture
def mock() -> Any:
    server = start_mock()
    yield server
    discard_mock(server)


@pytest_twisted.async_yield_fixture
async def storage(mock: MockupDB) -> AsyncIterator[MongoStorage]:
    store = make_storage(mock.port)
    store.startService()
    await answer_index_creation(mock)
    await within(store.whenReady())
    store.conversation_writes = index_conversations(mock)  # type: ignore[attr-defined]
    yield store
    await store.stopService()


# -- no I/O needed --------------------------------------------------------


def test_construction_parses_the_uri_only():
    # Port 9 would refuse a connection; nothing may try one here.
    store = MongoStorage("mongodb://user:secret@127.0.0.1:9/?timeoutMS=2500")
    assert store.database_name == "chatserver"
    assert store.timeout == 2.5
    assert "secret" not in repr(store)
    assert MongoStorage("mongodb://h1,h2:27018/chat").database_name == "chat"
    assert MongoStorage("mongodb://h/chat").timeout == 5.0
    # As in MongoDB, 0 is no limit (the server's storage timeout still applies).
    assert MongoStorage("mongodb://h/chat?timeoutMS=0").timeout is None
    assert MongoStorage("mongodb://h/chat", timeout=0).timeout is None
    assert MongoStorage("mongodb://h/chat?timeoutMS=0", timeout=3).timeout == 3.0
    bad_uris = (
        "mongodb+srv://cluster.example/db",
        "mongodb://h/db?tls=true",
        "http://h/",
        "mongodb://h/db?timeoutMS=-1",
    )
    for bad in bad_uris:
        with pytest.raises(ValueError):
            MongoStorage(bad)


def test_conversation_keys():
    assert conversation_key(["alice", "bob"], False) == conversation_key(["bob", "alice"], False)
    assert conversation_key(["alice", "team"], True) == conversation_key(["bob", "team"], True)
    # A user and a group of the same id do not share a history.
    assert conversation_key(["g", "team"], False) != conversation_key(["x", "team"], True)
    # One entry per user and conversation, whatever the ids hold.
    assert conversation_entry_id("a", '["d","a","b"]') == '["a","[\\"d\\",\\"a\\",\\"b\\"]"]'
    assert conversation_entry_id('a","b', "k") != conversation_entry_id("a", '"b","k')


def test_conflict_lines():
    [history] = [spec for spec in INDEXES if spec.name == "conversation_history"]
    [tokens] = [spec for spec in INDEXES if spec.name == "token_hash"]
    assert format_key({"conversation": 1, "createdAt": -1.0}) == "{conversation: 1, createdAt: -1}"
    # Ours already: nothing to say.
    mine = {"v": 2, **history.document()}
    assert find_conflict("chat", history, {"conversation_history": mine}) is None
    # Our name, other keys.
    other = {"key": {"to": 1}, "name": "conversation_history"}
    line = find_conflict("chat", history, {"conversation_history": other})
    assert line == (
        "index conflict: chat.messages has an index named conversation_history on {to: 1} "
        "(no options), but chatserver needs that name for "
        "{conversation: 1, createdAt: -1, _id: -1} (no options); drop it (mongosh: "
        'db.getSiblingDB("chat").messages.dropIndex("conversation_history")) and start again: '
        "chatserver then builds its own"
    )
    # Our keys under another name, without our options (mongod refuses both:
    # code 85, IndexOptionsConflict).
    loose = {"key": {"tokenHash": 1}, "name": "tokens"}
    line = find_conflict("chat", tokens, {"tokens": loose})
    assert line is not None and line.startswith("index conflict: chat.users has an index tokens")
    assert "unique: true, partialFilterExpression: {tokenHash: {$exists: true}}" in line
    assert 'dropIndex("tokens")' in line
    # Our keys and options under another name: no conflict (it is used).
    same = {**tokens.document(), "name": "tokens"}
    assert find_conflict("chat", tokens, {"tokens": same}) is None
    assert "\n" not in line


# -- start-up -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_start_creates_the_indexes_one_by_one(mock):
    store = make_storage(mock.port)
    store.startService()
    try:
        requests = await answer_index_creation(mock)
        await within(store.whenReady())
    finally:
        await store.stopService()
    for request, spec in zip(requests, INDEXES, strict=True):
        assert request["indexes"] == [spec.document()]
    by_name = {spec.name: r["indexes"][0] for r, spec in zip(requests, INDEXES, strict=True)}
    assert by_name["conversation_history"] == {
        "key": {"conversation": 1, "createdAt": -1, "_id": -1},
        "name": "conversation_history",
    }
    assert by_name["client_message_id"] == {
        "key": {"from": 1, "clientKey": 1},
        "name": "client_message_id",
        "unique": True,
        "partialFilterExpression": {"clientKey": {"$exists": True}},
    }
    assert by_name["token_hash"] == {
        "key": {"tokenHash": 1},
        "name": "token_hash",
        "unique": True,
        "partialFilterExpression": {"tokenHash": {"$exists": True}},
    }
    assert by_name["member_groups"] == {"key": {"users": 1, "_id": 1}, "name": "member_groups"}
    # Key order is the index: compound keys must go out in this order.
    assert list(by_name["conversation_history"]["key"]) == ["conversation", "createdAt", "_id"]


@pytest_twisted.ensureDeferred
async def test_status_while_building_and_a_build_over_its_budget(mock):
    store = make_storage(mock.port, index_timeout=0.5)
    store.startService()
    try:
        first = await receive(mock, OpMsg({"createIndexes": "messages"}, namespace=DB))
        assert store.status() == BUILDING_INDEXES
        # A request waits for the indexes within its own timeout, then says why.
        waiting = store.authorize({"token": "t"})
        # Never answered: past the index budget, start-up gives up on it,
        # goes on with the others, then fails with one line.
        for spec in INDEXES[1:]:
            (await receive(mock, OpMsg({"createIndexes": spec.collection}, namespace=DB))).ok()
        with pytest.raises(MongoStartupError) as stopped:
            await within(store.whenReady())
        line = stopped.value.line
        assert line.startswith(f"index build too slow: conversation_history on {DB}.messages")
        assert "within 0.5s" in line and "getIndexes()" in line
        assert store.status() == line
        error = await failure_of(waiting)
        assert line in error.message
        del first
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_a_request_waiting_for_the_indexes_times_out_saying_so(mock):
    store = make_storage(mock.port)
    store.startService()
    try:
        await receive(mock, OpMsg({"createIndexes": "messages"}, namespace=DB))
        error = await failure_of(store.authorize({"token": "t"}), STORAGE_TIMEOUT)
        assert error.message == "MongoDB storage not ready (building indexes)"
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_same_keys_other_options_stops_start_up(mock):
    store = make_storage(mock.port)
    store.startService()
    try:
        for spec in INDEXES:
            request = await receive(mock, OpMsg({"createIndexes": spec.collection}, namespace=DB))
            if spec.name != "token_hash":
                request.ok()
                continue
            # What mongod says when the keys exist under another name.
            request.command_err(
                code=85, errmsg="Index already exists with a different name: tokens"
            )
            listing = await receive(mock, OpMsg({"listIndexes": "users"}, namespace=DB))
            listing.ok(
                cursor(
                    {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                    {"v": 2, "key": {"tokenHash": 1}, "name": "tokens"},
                    collection="users",
                )
            )
        with pytest.raises(MongoStartupError) as stopped:
            await within(store.whenReady())
        assert stopped.value.line.startswith(f"index conflict: {DB}.users has an index tokens")
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_no_permission_to_make_indexes(mock):
    store = make_storage(mock.port)
    store.startService()
    try:
        for spec in INDEXES:
            request = await receive(mock, OpMsg({"createIndexes": spec.collection}, namespace=DB))
            request.command_err(code=13, errmsg="not authorized", codeName="Unauthorized")
        with pytest.raises(MongoStartupError) as stopped:
            await within(store.whenReady())
        line = stopped.value.line
        assert line.startswith("index error: MongoDB refused to create index conversation_history")
        assert "Unauthorized, code 13" in line
        assert line.endswith(f"(and {len(INDEXES) - 1} more index problems: see the log)")
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_start_while_mongodb_is_down_retries_the_indexes():
    port = free_port()  # nothing listens there yet
    store = make_storage(port)
    store.startService()
    server = None
    try:
        # Requests wait for the indexes, and give up at their deadline.
        await failure_of(store.getGroupUserIds({"groupId": "team"}), STORAGE_TIMEOUT)
        assert store.status() == UNREACHABLE
        server = start_mock(port)
        await answer_index_creation(server)
        await within(store.whenReady())
        assert store.status() == READY
        pending = store.getGroupUserIds({"groupId": "team"})
        request = await receive(server, OpMsg({"find": "groups"}, namespace=DB))
        request.ok(cursor({"_id": "team", "users": ["a", "b"]}, collection="groups"))
        assert await within(pending) == ["a", "b"]
    finally:
        await store.stopService()
        if server is not None:
            discard_mock(server)


# -- requests -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_inserts_the_message_with_its_keys(storage, mock):
    message = {
        "from": "alice",
        "to": "bob",
        "createdAt": "2026-11-24T23:27:50.298Z",
        "text": "hi",
        "meta": {"n": [1, 2.5, None, True]},
        "clientMessageId": 7,
        # Store-owned: a client cannot choose these.
        "_id": "mine",
        "readBy": ["bob"],
        "conversation": "spoofed",
    }
    pending = storage.create(message)
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.ok(n=1)
    stored = await within(pending)

    (document,) = request["documents"]
    assert isinstance(document["_id"], ObjectId)
    assert document == {
        "_id": document["_id"],
        "from": "alice",
        "to": "bob",
        "createdAt": "2026-11-24T23:27:50.298Z",
        "text": "hi",
        "meta": {"n": [1, 2.5, None, True]},
        "clientMessageId": 7,
        "conversation": '["d","alice","bob"]',
        "clientKey": "7",
    }
    assert stored == {
        "_id": str(document["_id"]),
        "from": "alice",
        "to": "bob",
        "createdAt": "2026-11-24T23:27:50.298Z",
        "text": "hi",
        "meta": {"n": [1, 2.5, None, True]},
        "clientMessageId": 7,
    }


@pytest_twisted.ensureDeferred
async def test_create_group_message_without_client_id(storage, mock):
    pending = storage.create(
        {"from": "alice", "to": "team", "createdAt": "2026-01-01T00:00:00.000Z", "isGroup": True}
    )
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.ok(n=1)
    (document,) = request["documents"]
    assert document["conversation"] == '["g","team"]'
    assert document["isGroup"] is True
    assert "clientKey" not in document
    # The members, whose conversation index it goes into.
    request = await receive(mock, OpMsg({"find": "groups"}, namespace=DB))
    assert request["filter"] == {"_id": "team"}
    request.ok(cursor({"_id": "team", "users": ["alice", "bob"]}, collection="groups"))
    await within(pending)


@pytest_twisted.ensureDeferred
async def test_create_updates_both_sides_conversation_index(storage, mock):
    storage.conversation_writes.cancel()
    pending = storage.create(
        {"from": "alice", "to": "$unread", "createdAt": "2026-01-01T00:00:00.000Z"}
    )
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.ok(n=1)
    (document,) = request["documents"]
    request = await receive(mock, OpMsg({"update": "conversations"}, namespace=DB))
    assert request["ordered"] is False  # one round trip for both
    sender, recipient = request["updates"]
    key = '["d","$unread","alice"]'
    assert sender["q"] == {"_id": conversation_entry_id("alice", key)}
    assert recipient["q"] == {"_id": conversation_entry_id("$unread", key)}
    assert sender["upsert"] is recipient["upsert"] is True
    last = f"2026-01-01T00:00:00.000Z {document['_id']}"
    assert recipient["u"] == {
        # The latest wins, whatever order concurrent writes land in.
        "$max": {"last": last},
        "$inc": {"unread": 1},
        "$setOnInsert": {
            "user": "$unread",  # a value, never read as a field path
            "with": "alice",
            "isGroup": False,
            "since": document["_id"],
        },
    }
    assert sender["u"]["$inc"] == {"unread": 0}  # one's own message is read
    request.ok(n=2, nModified=0, upserted=[{"index": 0, "_id": "a"}, {"index": 1, "_id": "b"}])
    await within(pending)


@pytest_twisted.ensureDeferred
async def test_get_messages_direct(storage, mock):
    newer, older = ObjectId(), ObjectId()
    pending = storage.getMessages({"ids": ["bob", "alice"], "skip": 20, "limit": 2, "with": "x"})
    request = await receive(
        mock,
        OpMsg(
            {
                "find": "messages",
                "filter": {"conversation": '["d","alice","bob"]'},
                "sort": {"createdAt": -1, "_id": -1},
                "projection": HIDDEN,
                "skip": 20,
                "limit": 2,
            },
            namespace=DB,
        ),
    )
    # Newest first, with _id as the tie-breaker for equal timestamps.
    assert list(request["sort"]) == ["createdAt", "_id"]
    request.ok(cursor({"_id": newer, "text": "2"}, {"_id": older, "text": "1"}))
    assert await within(pending) == [
        {"_id": str(newer), "text": "2"},
        {"_id": str(older), "text": "1"},
    ]


@pytest_twisted.ensureDeferred
async def test_get_messages_group_and_empty_pages(storage, mock):
    # limit 0 means "all" to MongoDB: answered without asking it.
    assert await within(storage.getMessages({"ids": ["bob", "team"], "limit": 0})) == []
    pending = storage.getMessages({"ids": ["bob", "team"], "skip": 0, "limit": 10, "isGroup": True})
    request = await receive(
        mock,
        OpMsg(
            {
                "find": "messages",
                "filter": {"conversation": '["g","team"]'},
                "sort": {"createdAt": -1, "_id": -1},
                "skip": absent,  # 0 is not sent
                "limit": 10,
            },
            namespace=DB,
        ),
    )
    request.ok(cursor())
    assert await within(pending) == []


@pytest_twisted.ensureDeferred
async def test_read_direct_message_by_its_recipient(storage, mock):
    storage.conversation_writes.cancel()
    oid = ObjectId(MESSAGE_ID)
    pending = storage.read(MESSAGE_ID, "bob")
    request = await receive(
        mock,
        OpMsg(
            {
                "findAndModify": "messages",
                "query": {
                    "_id": oid,
                    "isGroup": {"$ne": True},
                    "to": "bob",
                    "from": {"$ne": "bob"},
                    "read": {"$ne": True},  # the first read only...
                },
                "new": True,
                "update": {"$set": {"read": True}},
                "fields": {"clientKey": 0},
            },
            namespace=DB,
        ),
    )
    key = '["d","alice","bob"]'
    request.ok(value={"_id": oid, "from": "alice", "to": "bob", "read": True, "conversation": key})
    # ...lowers bob's unread count, never below zero.
    request = await receive(mock, OpMsg({"update": "conversations"}, namespace=DB))
    (update,) = request["updates"]
    assert update["q"] == {"_id": conversation_entry_id("bob", key), "unread": {"$gt": 0}}
    assert update["u"] == {"$inc": {"unread": -1}}
    request.ok(n=1, nModified=1)
    assert await within(pending) == {"_id": MESSAGE_ID, "from": "alice", "to": "bob", "read": True}


@pytest_twisted.ensureDeferred
async def test_read_again_changes_nothing(storage, mock):
    oid = ObjectId(MESSAGE_ID)
    pending = storage.read(MESSAGE_ID, "bob")
    (await receive(mock, OpMsg({"findAndModify": "messages"}, namespace=DB))).ok(value=None)
    request = await receive(mock, OpMsg({"find": "messages"}, namespace=DB))
    assert request["filter"] == {
        "_id": oid,
        "isGroup": {"$ne": True},
        "to": "bob",
        "from": {"$ne": "bob"},
    }
    request.ok(cursor({"_id": oid, "from": "alice", "to": "bob", "read": True}))
    assert (await within(pending))["read"] is True


@pytest_twisted.ensureDeferred
async def test_read_group_message_by_a_member(storage, mock):
    storage.conversation_writes.cancel()
    oid = ObjectId(MESSAGE_ID)
    pending = storage.read(MESSAGE_ID, "carol")
    # Not a direct message to carol...
    (await receive(mock, OpMsg({"findAndModify": "messages"}, namespace=DB))).ok(value=None)
    (await receive(mock, OpMsg({"find": "messages"}, namespace=DB))).ok(cursor())
    # ...so is it a group message carol did not send?
    request = await receive(mock, OpMsg({"find": "messages"}, namespace=DB))
    assert request["filter"] == {"_id": oid, "isGroup": True, "from": {"$ne": "carol"}}
    request.ok(cursor({"_id": oid, "to": "team"}))
    # Is carol in that group?
    request = await receive(mock, OpMsg({"find": "groups"}, namespace=DB))
    assert request["filter"] == {"_id": "team", "users": "carol"}
    request.ok(cursor({"_id": "team"}, collection="groups"))
    # Then record her, once, in readBy.
    request = await receive(
        mock,
        OpMsg(
            {
                "findAndModify": "messages",
                "query": {
                    "_id": oid,
                    "isGroup": True,
                    "from": {"$ne": "carol"},
                    "readBy": {"$ne": "carol"},
                },
                "new": True,
                "update": {"$addToSet": {"readBy": "carol"}},
                "fields": {"clientKey": 0},
            },
            namespace=DB,
        ),
    )
    key = '["g","team"]'
    request.ok(
        value={"_id": oid, "to": "team", "isGroup": True, "readBy": ["carol"], "conversation": key}
    )
    # Her unread count drops, if she was in the group when it was sent.
    request = await receive(mock, OpMsg({"update": "conversations"}, namespace=DB))
    (update,) = request["updates"]
    assert update["q"] == {
        "_id": conversation_entry_id("carol", key),
        "unread": {"$gt": 0},
        "since": {"$lte": oid},
    }
    request.ok(n=1, nModified=1)
    assert await within(pending) == {
        "_id": MESSAGE_ID,
        "to": "team",
        "isGroup": True,
        "readBy": ["carol"],
    }


@pytest_twisted.ensureDeferred
async def test_read_refused_to_a_non_member(storage, mock):
    oid = ObjectId(MESSAGE_ID)
    pending = storage.read(MESSAGE_ID, "mallory")
    (await receive(mock, OpMsg({"findAndModify": "messages"}, namespace=DB))).ok(value=None)
    (await receive(mock, OpMsg({"find": "messages"}, namespace=DB))).ok(cursor())
    (await receive(mock, OpMsg({"find": "messages"}, namespace=DB))).ok(
        cursor({"_id": oid, "to": "team"})
    )
    (await receive(mock, OpMsg({"find": "groups"}, namespace=DB))).ok(cursor(collection="groups"))
    assert await within(pending) is None
    # Nothing was updated: the next request the mock sees is a new call's.
    follow_up = storage.getGroupUserIds({"groupId": "team"})
    (await receive(mock, OpMsg({"find": "groups"}, namespace=DB))).ok(cursor(collection="groups"))
    assert await within(follow_up) == []


@pytest_twisted.ensureDeferred
async def test_read_malformed_ids_without_asking(storage, mock):
    for bad in ("nope", "", "0123456789abcdef0123456z", 42, None):
        assert await within(storage.read(bad, "bob")) is None
    # None of them reached MongoDB: the next request it sees is this one.
    follow_up = storage.getGroupUserIds({"groupId": "team"})
    (await receive(mock, OpMsg({"find": "groups"}, namespace=DB))).ok(cursor(collection="groups"))
    assert await within(follow_up) == []


@pytest_twisted.ensureDeferred
async def test_authorize_looks_up_the_token_hash_only(storage, mock):
    pending = storage.authorize({"token": "s3cret-token"})
    request = await receive(
        mock,
        OpMsg(
            {
                "find": "users",
                "filter": {"tokenHash": hashlib.sha256(b"s3cret-token").hexdigest()},
                "projection": {"tokenHash": 0, "token": 0},
                "limit": 1,
            },
            namespace=DB,
        ),
    )
    assert "s3cret-token" not in repr(request.doc)
    request.ok(cursor({"_id": "alice", "name": "Alice"}, collection="users"))
    assert await within(pending) == {"_id": "alice", "name": "Alice"}

    # An int token is the same as its decimal string; an ObjectId _id
    # (a user the application made) comes back as a string.
    oid = ObjectId()
    pending = storage.authorize({"token": 1234})
    request = await receive(mock, OpMsg({"find": "users"}, namespace=DB))
    assert request["filter"] == {"tokenHash": hashlib.sha256(b"1234").hexdigest()}
    request.ok(cursor({"_id": oid}, collection="users"))
    assert await within(pending) == {"_id": str(oid)}

    pending = storage.authorize({"token": "unknown"})
    (await receive(mock, OpMsg({"find": "users"}, namespace=DB))).ok(cursor(collection="users"))
    assert await within(pending) is None

    # Nothing worth asking about.
    for credentials in ({}, {"token": None}, {"token": ""}, {"token": True}, {"token": [1]}, "x"):
        assert await within(storage.authorize(credentials)) is None


@pytest_twisted.ensureDeferred
async def test_provisioning(storage, mock):
    pending = storage.add_user("alice", name="Alice", token="t-1")
    request = await receive(mock, OpMsg({"insert": "users"}, namespace=DB))
    assert request["documents"] == [
        {"_id": "alice", "tokenHash": hashlib.sha256(b"t-1").hexdigest(), "name": "Alice"}
    ]
    assert "t-1" not in repr(request.doc)
    request.ok(n=1)
    assert await within(pending) == "t-1"

    pending = storage.add_user("bob")
    request = await receive(mock, OpMsg({"insert": "users"}, namespace=DB))
    request.ok(n=1)
    token = await within(pending)
    assert len(token) >= 32
    assert request["documents"] == [
        {"_id": "bob", "tokenHash": hashlib.sha256(token.encode()).hexdigest()}
    ]

    pending = storage.add_user("bob")
    request = await receive(mock, OpMsg({"insert": "users"}, namespace=DB))
    request.ok(
        n=0,
        writeErrors=[
            {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key", "keyPattern": {"_id": 1}}
        ],
    )
    with pytest.raises(ValueError, match="exists"):
        await within(pending)

    pending = storage.add_group("team", ["alice", "bob", "alice"], name="Team")
    request = await receive(mock, OpMsg({"update": "groups"}, namespace=DB))
    (update,) = request["updates"]
    assert (update["q"], update["u"]) == (
        {"_id": "team"},
        {"$set": {"users": ["alice", "bob"], "name": "Team"}},
    )
    request.ok(n=0, nModified=0)  # a new group...
    request = await receive(mock, OpMsg({"update": "groups"}, namespace=DB))
    (update,) = request["updates"]
    assert (update["q"], update["upsert"]) == ({"_id": "team"}, True)  # ...is made
    request.ok(n=1, nModified=0, upserted=[{"index": 0, "_id": "team"}])
    assert await within(pending) is None

    # Empty ids are refused before anything is sent.
    for call in (
        lambda: storage.add_user(""),
        lambda: storage.add_group("", ["a"]),
        lambda: storage.add_group("g", ["a", ""]),
        lambda: storage.set_token(""),
        lambda: storage.add_member("g", ""),
    ):
        with pytest.raises(ValueError):
            await within(call())


# -- replies that go wrong ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_error_fails_create_with_its_code(storage, mock):
    pending = storage.create({"from": "alice", "to": "bob", "createdAt": "x"})
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.command_err(code=13, errmsg="not authorized on chatdb to execute command")
    error = await failure_of(pending)
    assert error.mongo_code == 13

    # A write error (here: document validation) fails it too.
    pending = storage.create({"from": "alice", "to": "bob", "createdAt": "x"})
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.ok(n=0, writeErrors=[{"index": 0, "code": 121, "errmsg": "Document failed validation"}])
    assert (await failure_of(pending)).mongo_code == 121


@pytest_twisted.ensureDeferred
async def test_duplicate_client_message_id_returns_the_stored_message(storage, mock):
    first = ObjectId()
    pending = storage.create(
        {"from": "alice", "to": "bob", "createdAt": "y", "text": "again", "clientMessageId": "c-1"}
    )
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.ok(
        n=0,
        writeErrors=[
            {
                "index": 0,
                "code": 11000,
                "errmsg": "E11000 duplicate key error collection: chatdb.messages"
                " index: client_message_id",
                "keyPattern": {"from": 1, "clientKey": 1},
                "keyValue": {"from": "alice", "clientKey": "c-1"},
            }
        ],
    )
    request = await receive(
        mock,
        OpMsg(
            {
                "find": "messages",
                "filter": {"from": "alice", "clientKey": "c-1"},
                "projection": HIDDEN,
                "limit": 1,
            },
            namespace=DB,
        ),
    )
    stored = {"_id": first, "from": "alice", "to": "bob", "createdAt": "x", "text": "first"}
    stored["clientMessageId"] = "c-1"
    request.ok(cursor(stored))
    assert await within(pending) == {**stored, "_id": str(first)}


@pytest_twisted.ensureDeferred
async def test_duplicate_key_without_client_id_is_an_error(storage, mock):
    pending = storage.create({"from": "alice", "to": "bob", "createdAt": "x"})
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.ok(n=0, writeErrors=[{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}])
    assert (await failure_of(pending)).mongo_code == 11000


@pytest_twisted.ensureDeferred
async def test_hang_up_fails_the_pending_request(storage, mock):
    # Without a clientMessageId a create is not retried: it could be stored twice.
    pending = storage.create({"from": "alice", "to": "bob", "createdAt": "x"})
    request = await receive(mock, OpMsg({"insert": "messages"}, namespace=DB))
    request.hangup()
    error = await failure_of(pending)
    assert "unavailable" in error.message

    # txmongo reconnects by itself; the next request goes through.
    pending = storage.getGroupUserIds({"groupId": "team"})
    request = await receive(mock, OpMsg({"find": "groups"}, namespace=DB))
    request.ok(cursor({"_id": "team", "users": ["alice"]}, collection="groups"))
    assert await within(pending) == ["alice"]


@pytest_twisted.ensureDeferred
async def test_hang_up_retries_a_safe_request_once(storage, mock):
    pending = storage.getGroupUserIds({"groupId": "team"})
    (await receive(mock, OpMsg({"find": "groups"}, namespace=DB))).hangup()
    request = await receive(mock, OpMsg({"find": "groups"}, namespace=DB))
    request.ok(cursor({"_id": "team", "users": ["bob"]}, collection="groups"))
    assert await within(pending) == ["bob"]


@pytest_twisted.ensureDeferred
async def test_server_gone_then_back(storage, mock):
    pending = storage.getGroupUserIds({"groupId": "team"})
    await receive(mock, OpMsg({"find": "groups"}, namespace=DB))
    # The server goes away with the request unanswered: the call fails by
    # its deadline, whatever txmongo is doing to reconnect.
    await deferToThread(mock.stop)
    await failure_of(pending, STORAGE_TIMEOUT)

    replacement = start_mock(mock.port)
    try:
        pending = storage.getGroupUserIds({"groupId": "team"})
        request = await receive(replacement, OpMsg({"find": "groups"}, namespace=DB))
        request.ok(cursor({"_id": "team", "users": ["carol"]}, collection="groups"))
        assert await within(pending) == ["carol"]
    finally:
        await storage.stopService()
        discard_mock(replacement)


@pytest_twisted.ensureDeferred
async def test_unanswered_request_times_out(storage, mock):
    pending = storage.authorize({"token": "t"})
    await receive(mock, OpMsg({"find": "users"}, namespace=DB))
    # Never answered: the deadline fails it, and the client hears why.
    error = await failure_of(pending, STORAGE_TIMEOUT)
    assert error.message == f"MongoDB did not answer within {TIMEOUT:g}s"


@pytest_twisted.ensureDeferred
async def test_mongodb_running_out_of_time_is_a_timeout(storage, mock):
    pending = storage.authorize({"token": "t"})
    request = await receive(mock, OpMsg({"find": "users"}, namespace=DB))
    request.command_err(
        code=50, errmsg="operation exceeded time limit", codeName="MaxTimeMSExpired"
    )
    error = await failure_of(pending, STORAGE_TIMEOUT)
    assert error.mongo_code == 50


@pytest_twisted.ensureDeferred
async def test_a_cancelled_request_stays_cancelled(storage, mock):
    pending = storage.getMessages({"ids": ["alice", "bob"], "skip": 0, "limit": 10})
    await receive(mock, OpMsg({"find": "messages"}, namespace=DB))
    pending.cancel()
    with pytest.raises(CancelledError):
        await within(pending)


@pytest_twisted.ensureDeferred
async def test_stop_fails_waiting_requests(mock):
    store = make_storage(mock.port)
    store.startService()
    pending = store.getGroupUserIds({"groupId": "team"})  # waits for the indexes
    await receive(mock, OpMsg({"createIndexes": "messages"}, namespace=DB))
    await store.stopService()
    assert store.status() == "stopped"
    assert "stopped" in (await failure_of(pending)).message
