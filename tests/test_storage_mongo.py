"""MongoStorage against a real MongoDB-compatible server: the storage
conformance suite, its indexes, and what only MongoDB has.

The server is the SecantusDB the tests start themselves (see tests/mongo.py),
or a real ``mongod`` if ``MONGODB_URI`` names one, e.g.::

    MONGODB_URI=mongodb://127.0.0.1:27017/ .venv/bin/pytest tests/test_storage_mongo.py

Every test gets a database of its own (``chatserver_test_<random>``), dropped
afterwards; the URI's own database name, if any, is not used, so a URI with
credentials needs ``?authSource=admin`` (or wherever the user is defined).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pymongo
import pytest
import pytest_twisted
from bson import ObjectId
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from chatserver.errors import STORAGE_ERROR
from chatserver.storage.mongo import (
    READY,
    STOPPED,
    UNREACHABLE,
    MongoStartupError,
    MongoStorage,
    MongoStorageError,
)
from chatserver.storage.mongo_indexes import INDEXES
from chatserver.testing import StorageConformanceTests
from tests.mongo import REAL_MONGOD, new_database_name, with_database


async def open_storage(uri: str, **options: object) -> MongoStorage:
    # Generous timeout: the suite fires a thousand creates at once.
    options.setdefault("timeout", 30)
    storage = MongoStorage(uri, **options)
    storage.startService()
    await storage.whenReady()
    return storage


async def close_storage(storage: MongoStorage) -> None:
    try:
        await storage.run(lambda db: db.command("dropDatabase"), name="dropDatabase")
    finally:
        await storage.stopService()


class TestMongoStorageConformance(StorageConformanceTests):
    @pytest.fixture(autouse=True)
    def _server(self, mongodb_server):
        self.server = mongodb_server

    async def make_storage(self) -> MongoStorage:
        return await open_storage(with_database(self.server, new_database_name()))

    async def close_storage(self, storage: MongoStorage) -> None:
        await close_storage(storage)

    def add_user(self, storage: MongoStorage, user_id: str, token: str) -> object:
        return storage.add_user(user_id, token=token)

    def add_group(self, storage: MongoStorage, group_id: str, member_ids: list[str]) -> object:
        return storage.add_group(group_id, member_ids)


@pytest_twisted.async_yield_fixture
async def storage(mongodb_uri):
    store = await open_storage(mongodb_uri)
    yield store
    await store.stopService()


@contextmanager
def blocking_client(uri: str) -> Iterator[pymongo.database.Database]:
    """A plain pymongo handle on ``uri``'s database, to arrange what the store
    meets (another application's indexes, ...) before it starts."""
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        yield client.get_default_database()


@pytest_twisted.ensureDeferred
async def test_only_the_token_hash_is_stored(storage):
    token = await storage.add_user("alice", name="Alice")
    [user] = await storage.database.users.find({})
    assert user == {
        "_id": "alice",
        "name": "Alice",
        "tokenHash": hashlib.sha256(token.encode()).hexdigest(),
    }
    assert await storage.authorize({"token": token}) == {"_id": "alice", "name": "Alice"}

    # A new token replaces the old one.
    new_token = await storage.set_token("alice")
    assert await storage.authorize({"token": token}) is None
    assert (await storage.authorize({"token": new_token}))["_id"] == "alice"


@pytest_twisted.ensureDeferred
async def test_a_token_belongs_to_one_user(storage):
    await storage.add_user("alice", token="shared")
    with pytest.raises(ValueError, match="another user"):
        await storage.add_user("bob", token="shared")
    await storage.add_user("bob", token="bobs")
    with pytest.raises(ValueError, match="another user"):
        await storage.set_token("bob", "shared")
    assert (await storage.authorize({"token": "shared"}))["_id"] == "alice"
    assert (await storage.authorize({"token": "bobs"}))["_id"] == "bob"


@pytest_twisted.ensureDeferred
async def test_int_tokens_work_as_strings(storage):
    await storage.add_user("alice", token="1234")
    assert (await storage.authorize({"token": 1234}))["_id"] == "alice"


@pytest_twisted.ensureDeferred
async def test_an_applications_own_users_and_groups_with_object_ids(storage):
    # Users and groups an application made itself, node-chat-server style.
    alice, team = ObjectId(), ObjectId()
    await storage.database.users.insert_one(
        {
            "_id": alice,
            "tokenHash": hashlib.sha256(b"t").hexdigest(),
            "name": "Alice",
            "token": "t",  # kept by the application too: never handed back
        }
    )
    await storage.database.groups.insert_one({"_id": team, "users": [str(alice), "bob"]})
    user = await storage.authorize({"token": "t"})
    assert user == {"_id": str(alice), "name": "Alice"}
    assert await storage.getGroupUserIds({"groupId": str(team)}) == [str(alice), "bob"]
    assert await storage.get_user(str(alice)) == {"id": str(alice), "name": "Alice"}
    assert await storage.getUsers([str(alice), "nobody"]) == {
        str(alice): {"id": str(alice), "name": "Alice"}
    }
    message = await storage.create(
        {"from": "bob", "to": str(team), "isGroup": True, "createdAt": "2026-01-01T00:00:00.000Z"}
    )
    read = await storage.read(message["_id"], str(alice))
    assert read["readBy"] == [str(alice)]


@pytest_twisted.ensureDeferred
async def test_messages_get_object_ids_and_hidden_keys(storage):
    stored = await storage.create(
        {
            "from": "alice",
            "to": "bob",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "clientMessageId": 1,
        }
    )
    [document] = await storage.database.messages.find({})
    assert document["_id"] == ObjectId(stored["_id"])
    assert document["conversation"] == '["d","alice","bob"]'
    assert document["clientKey"] == "1"
    assert "conversation" not in stored and "clientKey" not in stored
    # clientMessageId 1 and "1" are the same key, as in MemoryStorage.
    again = await storage.create(
        {
            "from": "alice",
            "to": "bob",
            "createdAt": "2026-01-01T00:00:01.000Z",
            "clientMessageId": "1",
        }
    )
    assert again["_id"] == stored["_id"]


@pytest_twisted.ensureDeferred
async def test_the_indexes_exist(storage):
    wanted: dict[str, set[str]] = {}
    for spec in INDEXES:
        wanted.setdefault(spec.collection, set()).add(spec.name)
    for collection, names in wanted.items():
        info = await storage.database[collection].index_information()
        assert names <= set(info), (collection, sorted(info))
    assert storage.status() == READY
    assert storage.index_names == {spec.name: spec.name for spec in INDEXES}


async def winning_plan(storage: MongoStorage, collection: str, **find: object) -> str:
    plan = await storage.database.command({"explain": {"find": collection, **find}})
    return repr(plan["queryPlanner"]["winningPlan"])


@pytest_twisted.ensureDeferred
async def test_history_query_uses_the_conversation_index(storage):
    await storage.create({"from": "alice", "to": "bob", "createdAt": "2026-01-01T00:00:00.000Z"})
    plan = await winning_plan(
        storage,
        "messages",
        filter={"conversation": '["d","alice","bob"]'},
        sort={"createdAt": -1, "_id": -1},
        limit=10,
    )
    assert "'conversation_history'" in plan


@pytest.mark.skipif(
    not REAL_MONGOD,
    reason="mongod only: SecantusDB's planner adds a SORT stage over the right index",
)
@pytest_twisted.ensureDeferred
async def test_history_needs_no_in_memory_sort_on_mongod(storage):
    await storage.create({"from": "alice", "to": "bob", "createdAt": "2026-01-01T00:00:00.000Z"})
    plan = await winning_plan(
        storage,
        "messages",
        filter={"conversation": '["d","alice","bob"]'},
        sort={"createdAt": -1, "_id": -1},
        limit=10,
    )
    assert "'conversation_history'" in plan
    assert "'SORT'" not in plan  # the index gives the order


# -- start-up and indexes -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_conflicting_index_stops_start_up_with_one_line(mongodb_uri):
    # Another application's index under the name of ours, on other keys.
    with blocking_client(mongodb_uri) as db:
        db.messages.create_index([("to", 1)], name="conversation_history")
    storage = MongoStorage(mongodb_uri, timeout=10)
    assert storage.status() == STOPPED
    storage.startService()
    try:
        with pytest.raises(MongoStartupError) as stopped:
            await storage.whenReady()
        line = stopped.value.line
        database = mongodb_uri.rsplit("/", 1)[1]
        assert "\n" not in line
        assert line.startswith("index conflict: ")
        assert f"{database}.messages" in line
        assert "conversation_history" in line  # which index
        assert "{to: 1}" in line and "{conversation: 1, createdAt: -1, _id: -1}" in line
        assert 'dropIndex("conversation_history")' in line  # the fix
        assert storage.status() == line
        # Requests are refused, saying why.
        with pytest.raises(MongoStorageError) as refused:
            await storage.authorize({"token": "t"})
        assert refused.value.code == STORAGE_ERROR
        assert line in refused.value.message
        # Every other index was made all the same: uniqueness holds meanwhile.
        info = await storage.database.users.index_information()
        assert "token_hash" in info
        info = await storage.database.messages.index_information()
        assert "client_message_id" in info
        assert info["conversation_history"]["key"] == {"to": 1}
    finally:
        await storage.stopService()

    # The operator follows the line; the next start succeeds.
    with blocking_client(mongodb_uri) as db:
        db.messages.drop_index("conversation_history")
    storage = await open_storage(mongodb_uri)
    try:
        assert storage.status() == READY
        first = await storage.create(
            {"from": "alice", "to": "bob", "createdAt": "x", "clientMessageId": "c1"}
        )
        again = await storage.create(
            {"from": "alice", "to": "bob", "createdAt": "y", "clientMessageId": "c1"}
        )
        assert again["_id"] == first["_id"]
        assert len(await storage.getMessages({"ids": ["bob", "alice"], "limit": 10})) == 1
        await storage.add_user("alice", token="same")
        with pytest.raises(ValueError):
            await storage.add_user("bob", token="same")
    finally:
        await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_the_same_index_under_another_name_is_used(mongodb_uri):
    with blocking_client(mongodb_uri) as db:
        db.groups.create_index([("users", 1), ("_id", 1)], name="by_member")
    storage = await open_storage(mongodb_uri)
    try:
        assert storage.index_names["member_groups"] == "by_member"
        await storage.add_group("team", ["alice"])
        assert await storage.listGroups({"userId": "alice", "after": None, "limit": 5}) == [
            {"id": "team", "name": "team"}
        ]
    finally:
        await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_shared_tokens_stop_start_up(mongodb_uri):
    with blocking_client(mongodb_uri) as db:
        db.users.insert_many(
            [{"_id": "alice", "tokenHash": "same"}, {"_id": "bob", "tokenHash": "same"}]
        )
    storage = MongoStorage(mongodb_uri, timeout=10)
    storage.startService()
    try:
        with pytest.raises(MongoStartupError) as stopped:
            await storage.whenReady()
        line = stopped.value.line
        assert line.startswith("index conflict: the unique index token_hash")
        assert "share a token" in line and "aggregate(" in line
        assert "\n" not in line
    finally:
        await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_start_twice_on_the_same_database(mongodb_uri):
    # Indexes already there (a restart, or a second node) are no conflict.
    first = await open_storage(mongodb_uri)
    second = await open_storage(mongodb_uri)
    try:
        assert first.status() == second.status() == READY
    finally:
        await gatherResults([first.stopService(), second.stopService()])


@pytest_twisted.ensureDeferred
async def test_timeout_ms_zero_means_no_limit_of_its_own(mongodb_uri):
    storage = await open_storage(mongodb_uri + "?timeoutMS=0", timeout=None)
    try:
        assert storage.timeout is None
        await storage.add_user("alice", token="t")
        assert (await storage.authorize({"token": "t"}))["_id"] == "alice"
    finally:
        await storage.stopService()


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds, checking every 50 ms up to ``timeout``
    (the store's status changes on events the test cannot subscribe to)."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition never held"
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_status_follows_the_connection(secantus):
    storage = await open_storage(secantus.uri("chat"), timeout=2, retry_delay=0.2, max_delay=0.5)
    try:
        assert storage.status() == READY
        secantus.kill()
        with pytest.raises(MongoStorageError):
            await storage.authorize({"token": "t"})
        await eventually(lambda: storage.status() == UNREACHABLE)
        secantus.start()
        await eventually(lambda: storage.status() == READY)
        await storage.add_user("alice", token="t")
        assert (await storage.authorize({"token": "t"}))["_id"] == "alice"
    finally:
        await storage.stopService()
