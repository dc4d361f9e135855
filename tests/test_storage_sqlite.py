"""SQLiteStorage: the conformance suite on a real file, plus what only SQLite has."""

import hashlib
import itertools
import sqlite3
import time

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.task import LoopingCall

from chatserver.storage.sqlite import (
    _HISTORY,
    SCHEMA_VERSION,
    SQLiteStorage,
    conversation_key,
    open_database,
)
from chatserver.testing import (
    AccountConformanceTests,
    ConversationConformanceTests,
    DirectoryConformanceTests,
    RevocationConformanceTests,
    StorageConformanceTests,
)
from chatserver.testing.conformance import timestamp

STALL_BOUND = 0.25  # seconds without a reactor tick that would count as blocking


class TestSQLiteStorage(
    DirectoryConformanceTests,
    ConversationConformanceTests,
    AccountConformanceTests,
    RevocationConformanceTests,
    StorageConformanceTests,
):
    @pytest.fixture(autouse=True)
    def _database_path(self, tmp_path):
        self.path = str(tmp_path / "chat.sqlite3")

    def make_storage(self):
        storage = SQLiteStorage(self.path)
        storage.startService()  # and no waiting: methods must queue behind the open
        return storage

    def close_storage(self, storage):
        return storage.stopService()

    def add_user(self, storage, user_id, token):
        return storage.add_user(user_id)  # SQLite makes its own tokens

    def add_group(self, storage, group_id, member_ids):
        return storage.add_group(group_id, member_ids)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "chat.sqlite3")


@pytest.fixture
def storage(path):
    storage = SQLiteStorage(path)
    storage.startService()
    yield storage
    pytest_twisted.blockon(storage.stopService())


def message(i, sender="alice", to="bob", **fields):
    return {"from": sender, "to": to, "createdAt": timestamp(i), "text": f"m{i}", **fields}


def read_file_bytes(path):
    """The database's bytes, including any write-ahead log not yet merged."""
    data = b""
    for suffix in ("", "-wal"):
        try:
            with open(path + suffix, "rb") as f:
                data += f.read()
        except FileNotFoundError:
            pass
    return data


def test_construction_touches_no_file(tmp_path):
    path = tmp_path / "chat.sqlite3"
    SQLiteStorage(str(path))
    assert list(tmp_path.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_methods_fail_clearly_before_start(path):
    storage = SQLiteStorage(path)
    with pytest.raises(RuntimeError, match="startService"):
        await storage.create(message(1))
    await storage.stopService()  # harmless when never started


@pytest_twisted.ensureDeferred
async def test_data_survives_reopening(path):
    first = SQLiteStorage(path)
    first.startService()
    token = await first.add_user("alice", "Alice")
    await first.add_group("team", ["alice", "bob"])
    direct = await first.create(message(1, clientMessageId="c1"))
    grouped = await first.create(message(2, to="team", isGroup=True))
    await first.read(direct["_id"], "bob")
    await first.read(grouped["_id"], "bob")
    await first.stopService()

    second = SQLiteStorage(path)
    second.startService()
    try:
        assert await second.authorize({"token": token}) == {"id": "alice", "name": "Alice"}
        assert await second.getGroupUserIds({"groupId": "team"}) == ["alice", "bob"]
        [fetched] = await second.getMessages({"ids": ["bob", "alice"], "skip": 0, "limit": 10})
        assert fetched == {**direct, "read": True}
        [fetched] = await second.getMessages(
            {"ids": ["bob", "team"], "skip": 0, "limit": 10, "isGroup": True}
        )
        assert fetched["readBy"] == ["bob"]
        resent = await second.create(message(3, clientMessageId="c1"))
        assert resent["_id"] == direct["_id"]
        later = await second.create(message(4))
        assert int(later["_id"]) > int(grouped["_id"])  # ids are never reused
    finally:
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_schema_version_and_pragmas_are_recorded(storage, path):
    await storage.list_all_users()  # the file exists once queued work has run
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"messages", "users", "groups", "group_members", "messages_history"} <= names
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused(path):
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 999")
    db.close()
    storage = SQLiteStorage(path)
    storage.startService()
    try:
        with pytest.raises(RuntimeError, match="newer"):
            await storage.list_all_users()
    finally:
        await storage.stopService()
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == []  # left untouched
    db.close()


def test_history_queries_use_the_index(path):
    db = open_database(path)
    try:
        for key in (conversation_key(["a", "b"], False), conversation_key(["a", "g"], True)):
            plan = " ".join(
                row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + _HISTORY, (key, 10, 0))
            )
            assert "USING INDEX messages_history (conversation=?)" in plan
            assert "TEMP B-TREE" not in plan  # no sort: the index is already in order
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_tokens_are_stored_only_as_hashes(path):
    storage = SQLiteStorage(path)
    storage.startService()
    tokens = [await storage.add_user(name) for name in ("alice", "bob")]
    assert len(set(tokens)) == 2 and all(len(t) >= 43 for t in tokens)
    user = await storage.authorize({"token": tokens[0]})
    assert user == {"id": "alice", "name": "alice"}
    assert await storage.list_all_users() == [
        {"id": "alice", "name": "alice"},
        {"id": "bob", "name": "bob"},
    ]
    data_while_open = read_file_bytes(path)
    await storage.stopService()
    for data in (data_while_open, read_file_bytes(path)):
        for token in tokens:
            assert token.encode() not in data
            assert hashlib.sha256(token.encode()).digest() in data  # we did look at the right file


@pytest_twisted.ensureDeferred
async def test_provisioning(storage):
    token = await storage.add_user("alice")
    await storage.add_user("bob", "Bob")
    with pytest.raises(ValueError, match="already exists"):
        await storage.add_user("alice")
    with pytest.raises(ValueError):
        await storage.add_user("")
    assert await storage.authorize({"token": token}) == {"id": "alice", "name": "alice"}

    await storage.add_group("team", ["alice", "bob", "alice", "carol"])
    await storage.add_group("empty", [])
    assert await storage.list_all_groups() == [
        {"id": "empty", "name": "empty", "members": []},
        {"id": "team", "name": "team", "members": ["alice", "bob", "carol"]},
    ]
    await storage.add_group("team", ["carol", "bob"])  # replaces the members
    assert await storage.getGroupUserIds({"groupId": "team"}) == ["carol", "bob"]

    assert await storage.remove_user("bob") is True
    assert await storage.remove_user("bob") is False
    assert await storage.getGroupUserIds({"groupId": "team"}) == ["carol"]
    assert await storage.list_all_users() == [{"id": "alice", "name": "alice"}]
    assert await storage.remove_user("alice") is True
    assert await storage.authorize({"token": token}) is None

    assert await storage.remove_group("team") is True
    assert await storage.remove_group("team") is False
    assert await storage.getGroupUserIds({"groupId": "team"}) == []
    assert await storage.list_all_groups() == [{"id": "empty", "name": "empty", "members": []}]


@pytest_twisted.ensureDeferred
async def test_stopping_finishes_queued_work(path):
    storage = SQLiteStorage(path)
    storage.startService()
    creates = [storage.create(message(i)) for i in range(200)]
    await storage.stopService()
    assert len({m["_id"] for m in await gatherResults(creates)}) == 200
    reopened = SQLiteStorage(path)
    reopened.startService()
    try:
        history = await reopened.getMessages({"ids": ["alice", "bob"], "skip": 0, "limit": 100})
        assert [m["text"] for m in history[:2]] == ["m199", "m198"]
    finally:
        await reopened.stopService()


@pytest_twisted.ensureDeferred
async def test_another_process_can_provision_while_the_server_runs(storage, path):
    await storage.create(message(1))
    admin = SQLiteStorage(path)  # as `python -m chatserver users add` would
    admin.startService()
    token = await admin.add_user("carol")
    await admin.stopService()
    assert await storage.authorize({"token": token}) == {"id": "carol", "name": "carol"}


class BlockingSQLiteStorage(SQLiteStorage):
    """The same store with its database work run on the reactor thread."""

    def _run(self, work, *args):
        return maybeDeferred(work, *args)


async def worst_stall(storage):
    """Fire thousands of creates and history queries at once, as a busy
    server would, and return the longest the reactor went without a tick."""
    ticks = [time.perf_counter()]
    loop = LoopingCall(lambda: ticks.append(time.perf_counter()))
    loop.start(0.01)
    text = "x" * 8000
    work = [storage.create(message(i, text=text)) for i in range(2000)]
    work += [
        storage.getMessages({"ids": ["alice", "bob"], "skip": i, "limit": 100}).addCallback(len)
        for i in range(600)
    ]
    await gatherResults(work)
    loop.stop()
    ticks.append(time.perf_counter())
    return max(b - a for a, b in itertools.pairwise(ticks))


@pytest_twisted.ensureDeferred
async def test_database_work_never_blocks_the_reactor(path):
    storage = SQLiteStorage(path)
    storage.startService()
    try:
        assert await worst_stall(storage) < STALL_BOUND
    finally:
        await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_the_stall_check_catches_a_blocking_store(path):
    storage = BlockingSQLiteStorage(path)
    storage.startService()
    try:
        assert await worst_stall(storage) > STALL_BOUND
    finally:
        await storage.stopService()
