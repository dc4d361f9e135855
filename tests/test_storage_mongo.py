"""MongoStorage against a real MongoDB: the storage conformance suite and more.

Runs only when ``MONGODB_URI`` names a server, e.g.::

    MONGODB_URI=mongodb://127.0.0.1:27017/ .venv/bin/pytest tests/test_storage_mongo.py

Every test gets a database of its own (``chatserver_test_<random>``), dropped
afterwards; the URI's own database name, if any, is not used, so a URI with
credentials needs ``?authSource=admin`` (or wherever the user is defined).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_twisted
from bson import ObjectId

from chatserver.storage.mongo import MongoStorage, MongoStorageError
from chatserver.testing import StorageConformanceTests

MONGODB_URI = os.environ.get("MONGODB_URI", "")

pytestmark = pytest.mark.skipif(
    not MONGODB_URI,
    reason="needs a MongoDB server: set MONGODB_URI=mongodb://host:port/ to run",
)


def uri_for(database: str) -> str:
    """``MONGODB_URI`` with its path replaced by ``database``."""
    parts = urlsplit(MONGODB_URI)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def open_storage() -> MongoStorage:
    # Generous timeout: the suite fires a thousand creates at once.
    storage = MongoStorage(uri_for(f"chatserver_test_{secrets.token_hex(6)}"), timeout=30)
    storage.startService()
    await storage.whenReady()
    return storage


async def close_storage(storage: MongoStorage) -> None:
    try:
        await storage.run(lambda db: db.command("dropDatabase"), name="dropDatabase")
    finally:
        await storage.stopService()


class TestMongoStorageConformance(StorageConformanceTests):
    async def make_storage(self) -> MongoStorage:
        return await open_storage()

    async def close_storage(self, storage: MongoStorage) -> None:
        await close_storage(storage)

    def add_user(self, storage: MongoStorage, user_id: str, token: str) -> object:
        return storage.add_user(user_id, token=token)

    def add_group(self, storage: MongoStorage, group_id: str, member_ids: list[str]) -> object:
        return storage.add_group(group_id, member_ids)


@pytest_twisted.async_yield_fixture
async def storage():
    store = await open_storage()
    yield store
    await close_storage(store)


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
    new_token = await storage.add_user("alice")
    assert await storage.authorize({"token": token}) is None
    assert (await storage.authorize({"token": new_token}))["_id"] == "alice"


@pytest_twisted.ensureDeferred
async def test_a_token_belongs_to_one_user(storage):
    await storage.add_user("alice", token="shared")
    with pytest.raises(MongoStorageError) as refused:
        await storage.add_user("bob", token="shared")
    assert refused.value.mongo_code == 11000  # the unique index said no
    assert (await storage.authorize({"token": "shared"}))["_id"] == "alice"


@pytest_twisted.ensureDeferred
async def test_int_tokens_work_as_strings(storage):
    await storage.add_user("alice", token="1234")
    assert (await storage.authorize({"token": 1234}))["_id"] == "alice"


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
async def test_indexes_exist(storage):
    for collection, names in (
        ("messages", {"conversation_history", "client_message_id"}),
        ("users", {"token_hash"}),
        ("groups", {"members"}),
    ):
        info = await storage.database[collection].index_information()
        assert names <= set(info), (collection, sorted(info))


@pytest_twisted.ensureDeferred
async def test_history_query_uses_the_conversation_index(storage):
    await storage.create({"from": "alice", "to": "bob", "createdAt": "2026-01-01T00:00:00.000Z"})
    plan = await storage.database.command(
        {
            "explain": {
                "find": "messages",
                "filter": {"conversation": '["d","alice","bob"]'},
                "sort": {"createdAt": -1, "_id": -1},
                "limit": 10,
            }
        }
    )
    winning_plan = repr(plan["queryPlanner"]["winningPlan"])
    assert "conversation_history" in winning_plan
    assert "'SORT'" not in winning_plan  # the index gives the order: no in-memory sort
