"""A complete :class:`IChatStorage` in one SQLite file, with users and groups.

Threading: every database operation, including opening the file, creating the
schema and closing it, runs on one dedicated worker thread that owns the only
connection; the reactor thread only queues work and receives results. SQLite
allows one writer at a time anyway, so a single connection costs no write
throughput, can never hit ``SQLITE_BUSY`` against itself, and runs queued work
in order (which is why a method called right after :meth:`startService` simply
queues up behind opening the file). :mod:`twisted.enterprise.adbapi` was not
used because it brings nothing for one connection, and it closes connections
from the reactor thread.

Schema (version recorded in ``PRAGMA user_version``, see :data:`SCHEMA_VERSION`):

- ``messages``: ``seq`` (the message's ``_id``, never reused), the indexed
  columns ``conversation``, ``sender``, ``created_at``, ``client_message_id``,
  and ``body``, the whole message as JSON. ``conversation`` is one key for
  both sides of a direct conversation and one per group, so a history page is
  a single range scan of the index ``(conversation, created_at, seq)``
  whatever else the file holds. A UNIQUE index on ``(sender,
  client_message_id)`` makes retried sends store one message.
- ``users``: ``id``, ``name`` and the SHA-256 of the user's token, never the
  token itself.
- ``groups`` and ``group_members``.

The file is opened in WAL mode with ``synchronous=NORMAL``: readers (such as
the admin command run against a live server's file) do not block the writer,
and a commit does not wait for fsync, at the risk of losing the last commits
(never of corrupting the file) on power loss.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from chatserver.interfaces import IChatStorage, IUserDirectory

T = TypeVar("T")

log = Logger()

# Each entry upgrades the schema by one version; append, never edit.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation TEXT NOT NULL,
            sender TEXT NOT NULL,
            created_at TEXT NOT NULL,
            client_message_id TEXT,
            body BLOB NOT NULL
        )""",
        # The rowid (seq) is the index's implicit last column: the tie-break.
        "CREATE INDEX messages_history ON messages (conversation, created_at)",
        # NULLs are distinct in a UNIQUE index: only messages with an id dedupe.
        "CREATE UNIQUE INDEX messages_client_id ON messages (sender, client_message_id)",
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash BLOB NOT NULL UNIQUE
        )""",
        "CREATE TABLE groups (id TEXT PRIMARY KEY)",
        # The rowid keeps members in the order they were given.
        """CREATE TABLE group_members (
            group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            UNIQUE (group_id, user_id)
        )""",
        "CREATE INDEX group_members_user ON group_members (user_id)",
    ),
)

#: The schema version this release writes; recorded in ``PRAGMA user_version``.
SCHEMA_VERSION = len(_MIGRATIONS)

_INSERT_MESSAGE = (
    "INSERT INTO messages (conversation, sender, created_at, client_message_id, body)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_HISTORY = (
    "SELECT seq, body FROM messages WHERE conversation = ?"
    " ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?"
)
_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_SEQ = 2**63 - 1


def open_database(path: str) -> sqlite3.Connection:
    """Open the chat database at ``path``, creating or upgrading its schema.

    This blocks: call it off the reactor thread. The connection is in
    autocommit mode; group statements with explicit transactions.

    @raise RuntimeError: if the file was written by a newer release.
    """
    # check_same_thread=False: the worker pool may hand the work to a new
    # thread; only one thread ever uses the connection at a time.
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    # Read the version inside the write transaction, so two processes opening
    # a new file at once do not both create the schema.
    with _transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database has schema version {version}, newer than this "
                f"release's {SCHEMA_VERSION}: upgrade chatserver"
            )
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Run the block as one write transaction, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # some errors have rolled it back already
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def conversation_key(ids: list[str], is_group: bool) -> str:
    """The ``conversation`` column of the conversation between ``ids``.

    Both orders of a direct conversation's ids give the same key; a group's
    key is its id, marked so that it never equals a direct conversation's.
    """
    me, other = str(ids[0]), str(ids[1])
    if is_group:
        return orjson.dumps(["g", other]).decode()
    return orjson.dumps(["d", *sorted((me, other))]).decode()


def message_row(message: dict) -> tuple[str, str, str, str | None, bytes]:
    """The values of :data:`_INSERT_MESSAGE` that store ``message``."""
    body = {k: v for k, v in message.items() if k != "_id"}  # the id is ours to give
    sender = str(message["from"])
    conversation = conversation_key([sender, message["to"]], bool(message.get("isGroup")))
    client_id = message.get("clientMessageId")
    if client_id is not None and not isinstance(client_id, str):
        client_id = orjson.dumps(client_id, option=orjson.OPT_SORT_KEYS).decode()
    return conversation, sender, str(message.get("createdAt", "")), client_id, orjson.dumps(body)


def _parse_id(message_id: object) -> int | None:
    """The ``seq`` that ``message_id`` names, if it is an id we could have made."""
    text = str(message_id)
    if not _CANONICAL_ID.fullmatch(text):
        return None
    seq = int(text)
    return seq if seq <= _MAX_SEQ else None


def _decode(seq: int, body: bytes) -> dict:
    return {"_id": str(seq), **orjson.loads(body)}


def _hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@implementer(IChatStorage, IUserDirectory)
class SQLiteStorage(Service):
    """Users, groups and messages in one SQLite file.

    Nothing touches the file until :meth:`startService`; :meth:`stopService`
    finishes the queued work and closes it. Run it as a child of the server's
    service (which the server does when given ``--storage sqlite:PATH``), or
    call both yourself. Every method returns a Deferred and may be called as
    soon as :meth:`startService` has been.
    """

    def __init__(self, path: str, reactor: IReactorCore | None = None) -> None:
        """
        @param path: the database file, created if missing (``:memory:`` for
            a throwaway database).
        @param reactor: the reactor to deliver results on; the global one by
            default.
        """
        self.path = path
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._db: sqlite3.Connection | None = None
        self._open_error: BaseException | None = None
        self._shutdown_trigger: Any = None

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    # Life cycle

    def startService(self) -> None:
        """Start the worker thread and queue opening the file."""
        if self._pool is not None:
            return
        super().startService()
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="chatserver-sqlite")
        self._pool.start()
        # Without this, a forgotten stopService would keep the process alive.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self.stopService
        )
        # Logged from here, the reactor thread, where log observers expect to run.
        self._run(self._open).addCallbacks(
            lambda _: log.info("Opened chat database {path}", path=os.path.abspath(self.path)),
            lambda f: log.failure("Could not open chat database {path}", f, path=self.path),
        )

    def stopService(self) -> Deferred[None]:
        """Finish the queued work, close the file and stop the worker thread."""
        super().stopService()
        pool, self._pool = self._pool, None
        if pool is None:
            return succeed(None)
        self._reactor.removeSystemEventTrigger(self._shutdown_trigger)

        def stop_pool(result: object) -> object:
            pool.stop()  # the thread is idle by now, so this does not wait
            return result

        # The pool runs work in order, so closing comes after all queued work.
        return deferToThreadPool(self._reactor, pool, self._close).addBoth(stop_pool)

    def _run(self, work: Callable[..., T], *args: object) -> Deferred[T]:
        """Run ``work(*args)`` on the database thread: the one place where
        work leaves the reactor thread."""
        if self._pool is None:
            return fail(RuntimeError(f"{self!r} is not running: call startService() first"))
        return deferToThreadPool(self._reactor, self._pool, work, *args)

    def _open(self) -> None:
        try:
            self._db = open_database(self.path)
        except BaseException as e:
            self._open_error = e
            raise

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.execute("PRAGMA optimize")
            db.close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            reason = f": {self._open_error}" if self._open_error else ""
            raise RuntimeError(f"database {self.path!r} is not open{reason}") from self._open_error
        return self._db

    # IAuthorizer

    def authorize(self, credentials: dict) -> Deferred[dict | None]:
        """Fire with ``{"id": ..., "name": ...}`` for the user whose token is
        ``credentials["token"]``, or with None."""
        token = credentials.get("token") if isinstance(credentials, dict) else None
        if not isinstance(token, str) or not token:
            return succeed(None)
        return self._run(self._authorize, _hash_token(token))

    def _authorize(self, token_hash: bytes) -> dict | None:
        row = (
            self._connection()
            .execute("SELECT id, name FROM users WHERE token_hash = ?", (token_hash,))
            .fetchone()
        )
        return {"id": row[0], "name": row[1]} if row else None

    # IMessageStore

    def create(self, message: dict) -> Deferred[dict]:
        """Store ``message``; fire with it and its new ``_id``, or with the
        message stored earlier under the same sender and ``clientMessageId``."""
        return self._run(self._create, message)

    def _create(self, message: dict) -> dict:
        db = self._connection()
        row = message_row(message)
        cursor = db.execute(_INSERT_MESSAGE, row)
        if cursor.rowcount == 1:
            return _decode(cursor.lastrowid, row[-1])
        # A duplicate (sender, clientMessageId): answer with the first copy.
        seq, body = db.execute(
            "SELECT seq, body FROM messages WHERE sender = ? AND client_message_id = ?",
            (row[1], row[3]),
        ).fetchone()
        return _decode(seq, body)

    def getMessages(self, query: dict) -> Deferred[list[dict]]:
        """Fire with one page of a conversation's messages, newest first."""
        key = conversation_key(list(query["ids"]), bool(query.get("isGroup")))
        limit = max(0, int(query.get("limit", 10)))
        skip = max(0, int(query.get("skip", 0)))
        return self._run(self._get_messages, key, limit, skip)

    def _get_messages(self, key: str, limit: int, skip: int) -> list[dict]:
        rows = self._connection().execute(_HISTORY, (key, limit, skip)).fetchall()
        return [_decode(seq, body) for seq, body in rows]

    def read(self, messageId: str, userId: str) -> Deferred[dict | None]:
        """Record that ``userId`` read the message; fire with the updated
        message, or with None if there is none or ``userId`` is not one of its
        recipients. Direct messages get ``read: true``, group messages add the
        reader to ``readBy`` once."""
        seq = _parse_id(messageId)
        if seq is None:
            return succeed(None)
        return self._run(self._read, seq, str(userId))

    def _read(self, seq: int, reader: str) -> dict | None:
        db = self._connection()
        with _transaction(db):
            row = db.execute("SELECT body FROM messages WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return None
            message = orjson.loads(row[0])
            if message.get("from") == reader:
                return None
            if message.get("isGroup"):
                member = db.execute(
                    "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?",
                    (str(message.get("to")), reader),
                ).fetchone()
                if member is None:
                    return None
                readers = message.setdefault("readBy", [])
                if reader in readers:
                    return {"_id": str(seq), **message}
                readers.append(reader)
            elif message.get("to") != reader:
                return None
            elif message.get("read") is True:
                return {"_id": str(seq), **message}
            else:
                message["read"] = True
            db.execute("UPDATE messages SET body = ? WHERE seq = ?", (orjson.dumps(message), seq))
        return {"_id": str(seq), **message}

    # IGroupDirectory

    def getGroupUserIds(self, data: dict) -> Deferred[list[str]]:
        """Fire with the ids of group ``data["groupId"]``'s members (none if
        there is no such group)."""
        return self._run(self._members, str(data["groupId"]))

    def _members(self, group_id: str) -> list[str]:
        rows = self._connection().execute(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY rowid", (group_id,)
        )
        return [user_id for (user_id,) in rows]

    # Provisioning, for applications and ``python -m chatserver users|groups``

    def add_user(self, user_id: str, name: str | None = None) -> Deferred[str]:
        """Create a user with a new random token; fire with the token.

        Only the token's hash is kept, so this is the one chance to read it.
        Fails with ValueError if ``user_id`` is empty or already taken.
        """
        if not isinstance(user_id, str) or not user_id:
            return fail(ValueError("a user id must be a non-empty string"))
        token = secrets.token_urlsafe(32)
        return self._run(self._add_user, user_id, name or user_id, _hash_token(token)).addCallback(
            lambda _: token
        )

    def _add_user(self, user_id: str, name: str, token_hash: bytes) -> None:
        try:
            self._connection().execute(
                "INSERT INTO users (id, name, token_hash) VALUES (?, ?, ?)",
                (user_id, name, token_hash),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"user {user_id!r} already exists") from None

    def remove_user(self, user_id: str) -> Deferred[bool]:
        """Delete a user (their token stops working) and their group
        memberships; their messages stay. Fire with whether they existed."""
        return self._run(self._remove_user, str(user_id))

    def _remove_user(self, user_id: str) -> bool:
        db = self._connection()
        with _transaction(db):
            db.execute("DELETE FROM group_members WHERE user_id = ?", (user_id,))
            return db.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0

    def list_users(self) -> Deferred[list[dict]]:
        """Fire with every user as ``{"id": ..., "name": ...}``, by id."""
        return self._run(self._list_users)

    def _list_users(self) -> list[dict]:
        rows = self._connection().execute("SELECT id, name FROM users ORDER BY id")
        return [{"id": user_id, "name": name} for user_id, name in rows]

    def add_group(self, group_id: str, member_ids: Iterable[str]) -> Deferred[None]:
        """Create group ``group_id``, or replace its members, with
        ``member_ids`` (in this order, duplicates dropped)."""
        if not isinstance(group_id, str) or not group_id:
            return fail(ValueError("a group id must be a non-empty string"))
        members = list(dict.fromkeys(str(m) for m in member_ids))
        return self._run(self._add_group, group_id, members)

    def _add_group(self, group_id: str, members: list[str]) -> None:
        db = self._connection()
        with _transaction(db):
            db.execute("INSERT INTO groups (id) VALUES (?) ON CONFLICT DO NOTHING", (group_id,))
            db.execute("DELETE FROM group_members WHERE group_id = ?", (group_id,))
            db.executemany(
                "INSERT INTO group_members (group_id, user_id) VALUES (?, ?)",
                [(group_id, m) for m in members],
            )

    def remove_group(self, group_id: str) -> Deferred[bool]:
        """Delete a group and its memberships; its messages stay. Fire with
        whether it existed."""
        return self._run(self._remove_group, str(group_id))

    def _remove_group(self, group_id: str) -> bool:
        cursor = self._connection().execute("DELETE FROM groups WHERE id = ?", (group_id,))
        return cursor.rowcount > 0

    def list_groups(self) -> Deferred[list[dict]]:
        """Fire with every group as ``{"id": ..., "members": [...]}``, by id."""
        return self._run(self._list_groups)

    def _list_groups(self) -> list[dict]:
        groups: dict[str, list[str]] = {}
        rows = self._connection().execute(
            "SELECT g.id, m.user_id FROM groups g LEFT JOIN group_members m ON m.group_id = g.id"
            " ORDER BY g.id, m.rowid"
        )
        for group_id, user_id in rows:
            members = groups.setdefault(group_id, [])
            if user_id is not None:
                members.append(user_id)
        return [{"id": group_id, "members": members} for group_id, members in groups.items()]
