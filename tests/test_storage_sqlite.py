"""SQLiteStorage: the conformance suite on a real file, plus what only SQLite has."""

import hashlib
import itertools
import os
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from chatserver.storage.sqlite import (
    _CONVERSATIONS,
    _HISTORY,
    _HISTORY_AFTER,
    _HISTORY_BEFORE,
    _INSERT_MESSAGE,
    _LIST_GROUP_MEMBERS,
    _LIST_GROUPS,
    _LIST_PARTNERS,
    _MIGRATIONS,
    SCHEMA_VERSION,
    SQLiteStorage,
    conversation_key,
    index_conversations,
    message_row,
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


def test_the_first_schema_is_never_edited():
    # Files written by release 1 were made by exactly these statements; an
    # upgrade must be a new _MIGRATIONS entry.
    digest = hashlib.sha256("\n".join(_MIGRATIONS[0]).encode()).hexdigest()
    assert digest == "9512cb390227b6ea9562ce783052d85788c79d84d461bbca3e7adbe9a884101b"


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


async def stall_of(storage):
    storage.startService()
    try:
        return await worst_stall(storage)
    finally:
        await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_database_work_never_blocks_the_reactor(tmp_path):
    # A ratio, not a time: the same work, on the worker thread and on the
    # reactor's, measured one after the other on this (possibly busy) machine.
    # The threaded store's best of three: one run can lose the GIL to the
    # worker thread at the wrong moment; a store that blocked would stall in
    # every run.
    threaded = min(
        [await stall_of(SQLiteStorage(str(tmp_path / f"threaded{i}.sqlite3"))) for i in range(3)]
    )
    blocking = await stall_of(BlockingSQLiteStorage(str(tmp_path / "blocking.sqlite3")))
    assert threaded < blocking / 4, (threaded, blocking)


# Schema version 2: the conversation index, and upgrading a version 1 file


def write_version_1_file(path):
    """A database as release 1 wrote it: its schema, users, groups and
    messages (some read), and no conversation index."""
    db = sqlite3.connect(path, isolation_level=None)
    for statement in _MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO users (id, name, token_hash) VALUES ('alice', 'Alice', x'01')")
    db.execute("INSERT INTO groups (id) VALUES ('team')")
    for member in ("alice", "bob", "carol"):
        db.execute("INSERT INTO group_members (group_id, user_id) VALUES ('team', ?)", (member,))
    messages = [
        message(1, "alice", "bob", read=True),
        message(2, "alice", "bob"),
        message(3, "bob", "alice"),
        message(4, "alice", "team", isGroup=True, readBy=["bob"]),
        message(5, "bob", "team", isGroup=True, readBy=["alice", "carol"]),
        message(6, "carol", "dave"),
        message(7, "carol", "carol"),
        message(8, "dave", "bob", createdAt=timestamp(0)),  # inserted late, oldest
    ]
    db.executemany(_INSERT_MESSAGE, [message_row(m) for m in messages])
    db.close()


@pytest_twisted.ensureDeferred
async def test_a_version_1_file_is_upgraded_in_place(path):
    write_version_1_file(path)
    storage = SQLiteStorage(path)
    storage.startService()
    try:

        async def summary(user_id):
            page = await storage.getConversations({"userId": user_id, "limit": 10})
            assert page["next"] is None
            return [
                (c["with"], c["isGroup"], c["last"]["text"], c["unread"])
                for c in page["conversations"]
            ]

        assert await summary("alice") == [
            ("team", True, "m5", 0),  # m4 is hers, m5 she read
            ("bob", False, "m3", 1),
        ]
        assert await summary("bob") == [
            ("team", True, "m5", 0),  # m5 is his, m4 he read
            ("alice", False, "m3", 1),  # m1 read, m3 his
            ("dave", False, "m8", 1),
        ]
        assert await summary("carol") == [
            ("carol", False, "m7", 0),
            ("dave", False, "m6", 0),
            ("team", True, "m5", 1),  # m4 unread, m5 she read
        ]
        assert await summary("dave") == [("carol", False, "m6", 1), ("bob", False, "m8", 0)]
        # The index keeps working from there.
        new = await storage.create(message(9, "bob", "team", isGroup=True))
        await storage.read(new["_id"], "carol")
        assert (await summary("carol"))[0] == ("team", True, "m9", 1)
        assert (await summary("alice"))[0] == ("team", True, "m9", 1)
        assert await storage.listGroups({"userId": "bob", "after": None, "limit": 10}) == [
            {"id": "team", "name": "team"}
        ]
        assert await storage.get_user("alice") == {"id": "alice", "name": "Alice"}
    finally:
        await storage.stopService()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_upgrading_an_empty_version_1_file(path):
    db = sqlite3.connect(path, isolation_level=None)
    for statement in _MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.close()
    storage = SQLiteStorage(path)
    storage.startService()
    try:
        assert await storage.getConversations({"userId": "alice", "limit": 10}) == {
            "conversations": [],
            "next": None,
        }
    finally:
        await storage.stopService()


def test_the_conversation_index_rebuilds_to_what_creates_made(path):
    """index_conversations (the upgrade) and create's own updates agree."""
    storage = SQLiteStorage(path)
    storage._db = open_database(path)
    try:
        storage._add_group("team", ["alice", "bob", "carol"], None)
        for i in range(60):
            sender = ("alice", "bob", "carol", "dave")[i % 4]
            to = ("team", "bob", "alice", "carol", "dave")[i % 5]
            sent = storage._create(
                message(i, sender, to, isGroup=to == "team" and sender != "dave")
            )
            if i % 3 == 0:
                storage._read(int(sent["_id"]), ("alice", "bob", "carol", "dave")[i % 7 % 4])
        statement = "SELECT * FROM conversations ORDER BY user_id, is_group, other"
        made = storage._db.execute(statement).fetchall()
        index_conversations(storage._db)
        rebuilt = storage._db.execute(statement).fetchall()
        # since_seq may differ: the rebuild cannot know when a member joined.
        assert [row[:6] for row in rebuilt] == [row[:6] for row in made]
        assert len(made) > 8
    finally:
        storage._db.close()


def plan(db, statement, args):
    return " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + statement, args))


def test_conversation_and_directory_queries_use_indexes(path):
    db = open_database(path)
    try:
        queries = {
            _HISTORY_BEFORE: (("k", "t", 1, 10, 0), "messages_history (conversation=?"),
            _HISTORY_AFTER: (("k", "t", 1, 10, 0), "messages_history (conversation=?"),
            _CONVERSATIONS.format(where=""): (("u", 10), "conversations_recent (user_id=?)"),
            _CONVERSATIONS.format(where="AND (c.last_created_at, c.last_seq) < (?, ?)"): (
                ("u", "t", 1, 10),
                "conversations_recent (user_id=? AND (last_created_at,last_seq)<(?,?))",
            ),
            _LIST_GROUP_MEMBERS: (("g", "a", 10), "(group_id=? AND user_id>?)"),
            _LIST_PARTNERS: (("u", "a", 10), "PRIMARY KEY (user_id=? AND is_group=? AND other>?)"),
            _LIST_GROUPS: (("u", "a", 10), "group_members_by_user (user_id=? AND group_id>?)"),
        }
        for statement, (args, index) in queries.items():
            found = plan(db, statement, args)
            assert index in found, (statement, found)
            assert "TEMP B-TREE" not in found and "SCAN" not in found, (statement, found)
    finally:
        db.close()


# Files readable by their owner only


@pytest_twisted.ensureDeferred
async def test_the_database_files_are_private(path):
    old = os.umask(0o022)  # the usual umask, under which SQLite makes 0644 files
    try:
        storage = SQLiteStorage(path)
        storage.startService()
        try:
            await storage.create(message(1))
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
                assert mode == 0o600, f"{path + suffix} has mode {oct(mode)}"
        finally:
            await storage.stopService()
    finally:
        os.umask(old)


@pytest_twisted.ensureDeferred
async def test_an_existing_file_readable_by_others_is_reported(path):
    open(path, "wb").close()
    os.chmod(path, 0o644)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    storage = SQLiteStorage(path)
    storage.startService()
    try:
        await storage.list_all_users()
    finally:
        await storage.stopService()
        globalLogPublisher.removeObserver(seen.append)
    warnings = [formatEvent(e) for e in seen if e.get("log_level") == LogLevel.warn]
    assert warnings == [
        f"chat database {path} can be read by other users (mode -rw-r--r--): chmod 600 {path}"
    ]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # the operator's choice stays


# Revocations across processes


def run_admin(*args):
    return subprocess.run(
        [sys.executable, "-m", "chatserver", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest_twisted.ensureDeferred
async def test_a_revocation_by_another_process_reaches_a_running_server(storage, path):
    await storage.add_user("alice")
    _, cursor = await storage.revocationsAfter(None)
    result = await deferToThread(
        run_admin, "users", "remove", "alice", "--storage", f"sqlite:{path}"
    )
    assert result.returncode == 0, result.stderr
    user_ids, cursor = await storage.revocationsAfter(cursor)
    assert user_ids == ["alice"]
    assert await storage.revocationsAfter(cursor) == ([], cursor)


@pytest_twisted.ensureDeferred
async def test_revocations_come_a_thousand_at_a_time(storage):
    _, cursor = await storage.revocationsAfter(None)
    await gatherResults([storage.revoke_sessions(f"u{i}") for i in range(2500)])
    seen = []
    for expected in (1000, 1000, 500, 0):
        user_ids, cursor = await storage.revocationsAfter(cursor)
        assert len(user_ids) == expected
        seen.extend(user_ids)
    assert seen == [f"u{i}" for i in range(2500)]
