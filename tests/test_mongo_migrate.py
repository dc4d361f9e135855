"""``python -m chatserver migrate-seed``: a database laid out as
node-chat-server's README example, migrated (twice), then chatted on with the
old tokens, against a real MongoDB-compatible server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pymongo
import pytest
import pytest_twisted
from bson import ObjectId

from chatserver.client import RequestFailed, connect
from chatserver.storage.mongo import MongoStorage
from chatserver.storage.mongo_indexes import INDEXES
from chatserver.storage.mongo_migrate import convert_message, iso_timestamp
from tests.processes import ROOT, ServerProcess


@contextmanager
def database(uri: str) -> Iterator[pymongo.database.Database]:
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        yield client.get_default_database()


def migrate(uri: str, *options: str, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "chatserver", "migrate-seed", uri, *options],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == expect, done.stdout + done.stderr
    return done


class Seed:
    """A database as node-chat-server's README example leaves it: ``users``
    with ObjectId ids and plaintext tokens, ``groups`` with ObjectId ids and
    ``users`` arrays of id strings, messages in ``chats`` with ``from`` (the
    sender's id as a string) and ``createdAt`` set by the server."""

    def __init__(self, db: pymongo.database.Database) -> None:
        self.ids = {name: ObjectId() for name in ("alice", "bob", "carol")}
        self.team = ObjectId()
        db.users.insert_many(
            [
                {"_id": oid, "token": f"{name}-old-token", "name": name.title(), "age": 30}
                for name, oid in self.ids.items()
            ]
        )
        db.users.create_index("token")  # the seed looks users up by token
        db.groups.insert_one(
            {"_id": self.team, "name": "Team", "users": [self.id("alice"), self.id("bob")]}
        )
        self.chats = []
        for i in range(30):
            sender, to = ("alice", "bob") if i % 2 else ("bob", "alice")
            self.chats.append(
                {
                    "_id": ObjectId(),
                    "to": self.id(to),
                    "from": self.id(sender),
                    "text": f"direct {i}",
                    "createdAt": f"2020-01-01T00:00:{i:02d}.000Z",
                    **({"read": True} if i < 20 else {}),
                }
            )
        for i in range(5):
            self.chats.append(
                {
                    "_id": ObjectId(),
                    "to": str(self.team),
                    "isGroup": True,
                    "from": self.id("alice"),
                    "text": f"group {i}",
                    "createdAt": f"2020-01-02T00:00:0{i}.000Z",
                }
            )
        # Written by an application of its own: a Date, and an ObjectId sender.
        self.chats.append(
            {
                "_id": ObjectId(),
                "to": self.id("carol"),
                "from": self.ids["bob"],
                "text": "with a Date",
                "createdAt": datetime(2020, 1, 3, 12, 0, 0, 123000),
            }
        )
        self.chats.append({"_id": ObjectId(), "text": "no recipient", "createdAt": "2020"})
        db.chats.insert_many(self.chats)

    def id(self, name: str) -> str:
        return str(self.ids[name])


def snapshot(db: pymongo.database.Database) -> dict:
    return {name: sorted(db[name].find({}), key=str) for name in sorted(db.list_collection_names())}


def test_conversions():
    assert iso_timestamp(datetime(2026, 11, 24, 23, 27, 50, 298000)) == "2026-11-24T23:27:50.298Z"
    assert iso_timestamp(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"
    oid = ObjectId()
    message = convert_message({"_id": oid, "from": oid, "to": "x", "isGroup": True, "n": 1})
    assert message == {
        "_id": oid,
        "from": str(oid),
        "to": "x",
        "isGroup": True,
        "n": 1,
        "conversation": '["g","x"]',
    }
    assert convert_message({"_id": oid, "to": "x"}) is None


def test_dry_run_changes_nothing(mongodb_uri):
    with database(mongodb_uri) as db:
        Seed(db)
        before = snapshot(db)
        done = migrate(mongodb_uri, "--dry-run")
        assert snapshot(db) == before
    out = done.stdout
    assert "dry run" in out
    assert "3 plaintext tokens would be hashed and removed, 3 ObjectId ids would be made" in out
    assert "1 ObjectId ids would be made strings" in out  # the group
    assert "36 of the 37 in chats would be copied, 1 skipped (no from or to)" in out
    assert "conversation_history would be made" in out
    assert "old-token" not in done.stdout + done.stderr


@pytest_twisted.ensureDeferred
async def test_migrate_twice_then_chat_with_the_old_tokens(mongodb_uri, tmp_path):
    with database(mongodb_uri) as db:
        seed = Seed(db)
    first = migrate(mongodb_uri).stdout
    assert "users: 3 plaintext tokens hashed and removed, 3 ObjectId ids made strings" in first
    assert "groups: 1 ObjectId ids made strings" in first
    assert "messages: 36 copied from chats, 0 there already, 1 skipped (no from or to)" in first
    assert "conversations: 6 entries for 3 conversations, from 36 messages" in first
    assert f"indexes: {len(INDEXES)} in place" in first
    assert "chats is left as it was" in first

    # Again: nothing left to do, nothing done twice.
    second = migrate(mongodb_uri).stdout
    assert "users: 0 plaintext tokens hashed and removed, 0 ObjectId ids made strings" in second
    assert "groups: 0 ObjectId ids made strings" in second
    assert "messages: 0 copied from chats, 0 there already, 0 skipped" in second
    assert "conversations: 6 entries for 3 conversations, from 36 messages" in second

    with database(mongodb_uri) as db:
        users = {u["_id"]: u for u in db.users.find({})}
        assert set(users) == {seed.id(n) for n in seed.ids}
        alice = users[seed.id("alice")]
        assert "token" not in alice
        assert alice["tokenHash"] == hashlib.sha256(b"alice-old-token").hexdigest()
        assert (alice["name"], alice["age"]) == ("Alice", 30)  # the rest is kept
        [team] = db.groups.find({})
        assert team == {
            "_id": str(seed.team),
            "name": "Team",
            "users": [seed.id("alice"), seed.id("bob")],
        }
        assert db.messages.count_documents({}) == 36
        assert db.chats.count_documents({}) == 37  # left as it was
        dated = db.messages.find_one({"text": "with a Date"})
        assert dated["createdAt"] == "2020-01-03T12:00:00.123Z"
        assert dated["from"] == seed.id("bob")

    server = ServerProcess.twistd("--storage", mongodb_uri, cwd=tmp_path)
    try:
        alice = await connect(server.url)
        me = await alice.authorize(token="alice-old-token")
        assert me["_id"] == seed.id("alice") and me["name"] == "Alice"
        assert "tokenHash" not in me and "token" not in me
        bob = await connect(server.url)
        await bob.authorize(token="bob-old-token")

        history = await alice.get_messages(**{"with": seed.id("bob"), "limit": 5})
        assert [m["text"] for m in history] == [f"direct {i}" for i in (29, 28, 27, 26, 25)]
        group = await bob.get_messages(**{"with": str(seed.team), "isGroup": True})
        assert [m["text"] for m in group] == [f"group {i}" for i in (4, 3, 2, 1, 0)]

        # Old messages can be read, by their recipient only.
        unread = history[0]  # direct 29: alice to bob
        with pytest.raises(RequestFailed):
            await alice.read(unread["_id"])
        assert (await bob.read(unread["_id"]))["read"] is True

        # New messages join the old conversations, for both sides.
        sent = await alice.send({"to": seed.id("bob"), "text": "after the migration"})
        assert (await bob.next_push("chatMessage"))["_id"] == sent["_id"]
        sent = await bob.send({"to": str(seed.team), "isGroup": True, "text": "team, still"})
        history = await alice.get_messages(**{"with": str(seed.team), "isGroup": True, "limit": 1})
        assert history[0]["_id"] == sent["_id"]

        carol = await connect(server.url)
        with pytest.raises(RequestFailed):  # a token that never existed
            await carol.authorize(token="carol-token")
        for client in (alice, bob, carol):
            client.sendClose()
            await client.closed
    finally:
        server.stop()

    # The conversation index, built from the old messages and kept up since.
    storage = MongoStorage(mongodb_uri, timeout=30)
    storage.startService()
    try:
        await storage.whenReady()
        listed = await storage.getConversations({"userId": seed.id("bob"), "limit": 10})
        summary = [(c["with"], c["isGroup"], c["unread"]) for c in listed["conversations"]]
        # The group: 5 old messages from alice, never marked read. Alice: of
        # her 15 old messages to bob, 5 not marked read, minus the one he read,
        # plus the new one. Carol: only his own message.
        assert summary == [
            (str(seed.team), True, 5),
            (seed.id("alice"), False, 5),
            (seed.id("carol"), False, 0),
        ]
        contacts = await storage.listContacts({"userId": seed.id("carol"), "limit": 5})
        assert contacts == [{"id": seed.id("bob"), "name": "Bob"}]
    finally:
        await storage.stopService()


def test_an_interrupted_migration_finishes_when_run_again(mongodb_uri):
    with database(mongodb_uri) as db:
        seed = Seed(db)
        # As an earlier run left it: half the messages copied and recorded...
        chats = sorted(seed.chats, key=lambda m: m["_id"])
        done = [m for m in map(convert_message, chats[:18]) if m is not None]
        db.messages.insert_many(done)
        db.chatserver_migrations.insert_one(
            {"_id": "migrate-seed", "chatsThrough": chats[17]["_id"]}
        )
        # ...a few more copied but not yet recorded...
        db.messages.insert_many([convert_message(m) for m in chats[18:20]])
        # ...and alice copied under her string id, the original not yet removed.
        original = db.users.find_one({"_id": seed.ids["alice"]})
        db.users.insert_one({**original, "_id": seed.id("alice")})

    out = migrate(mongodb_uri).stdout
    # 19 left after the mark: 2 copied already, 1 without a recipient.
    assert "messages: 16 copied from chats, 2 there already, 1 skipped" in out

    with database(mongodb_uri) as db:
        assert db.messages.count_documents({}) == 36
        assert sorted(u["_id"] for u in db.users.find({})) == sorted(seed.id(n) for n in seed.ids)
        assert db.users.count_documents({"token": {"$exists": True}}) == 0


def test_users_sharing_a_token_stop_it_before_anything_changes(mongodb_uri):
    with database(mongodb_uri) as db:
        seed = Seed(db)
        db.users.update_one({"_id": seed.ids["bob"]}, {"$set": {"token": "alice-old-token"}})
        before = snapshot(db)
        done = migrate(mongodb_uri, expect=1)
        after = snapshot(db)
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("python -m chatserver migrate-seed: users ")
    assert seed.id("alice") in line and seed.id("bob") in line
    assert "share one token" in line and "run again" in line
    assert "alice-old-token" not in line
    # Only the indexes were made; no document changed.
    assert {k: v for k, v in after.items() if k in before} == before


def test_an_unreachable_database_is_one_line(tmp_path):
    from chatserver.bench.processes import free_port

    done = migrate(f"mongodb://127.0.0.1:{free_port()}/chat?timeoutMS=500", "-n", expect=1)
    [line] = done.stderr.strip().splitlines()
    assert "did not answer" in line and "check the URI" in line
