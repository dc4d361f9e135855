"""A complete :class:`IChatStorage` in one SQLite file, with users and groups.

:class:`SQLiteStorage` also provides every optional interface:
:class:`~chatserver.interfaces.IUserDirectory`,
:class:`~chatserver.interfaces.IConversationStore`,
:class:`~chatserver.interfaces.ISessionRevocations` and
:class:`~chatserver.interfaces.IAccountStore`.

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
  whatever else the file holds, and so is a page from a cursor. A UNIQUE
  index on ``(sender, client_message_id)`` makes retried sends store one
  message.
- ``conversations`` (version 2): one row per user and conversation, with the
  position (``last_created_at``, ``last_seq``) of its last message and the
  user's ``unread`` count, updated in the transaction that stores or reads a
  message; an index on ``(user_id, last_created_at, last_seq)`` serves the
  conversation list, the primary key ``(user_id, is_group, other)`` the
  contacts a user has written to. ``since_seq`` is where the messages of a
  group start counting for the user (NULL: they left it).
- ``users``: ``id``, ``name`` and the SHA-256 of the user's token, never the
  token itself.
- ``groups`` (with a ``name`` since version 2) and ``group_members``, indexed
  both ways: ``(group_id, user_id)`` and ``(user_id, group_id)``.
- ``revocations`` (version 2): users whose sessions an operator ended, in the
  order they were recorded; any process using the file may add one, and
  servers poll for them.

The file is opened in WAL mode with ``synchronous=NORMAL``: readers (such as
the admin command run against a live server's file) do not block the writer,
and a commit does not wait for fsync, at the risk of losing the last commits
(never of corrupting the file) on power loss. A new file is created readable
and writable by its owner only (SQLite gives its ``-wal`` and ``-shm`` files
the same permissions).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from chatserver.errors import NOT_FOUND, ChatError
from chatserver.interfaces import (
    IAccountStore,
    IChatStorage,
    IConversationStore,
    ISessionRevocations,
    IUserDirectory,
)
from chatserver.storage.pages import (
    Position,
    conversation_page,
    decode_position,
    merge_ids,
    page_after,
    page_limit,
)

T = TypeVar("T")

log = Logger()

#: A migration step: an SQL statement, or a function run on the connection.
Step = str | Callable[[sqlite3.Connection], None]


def index_conversations(db: sqlite3.Connection) -> None:
    """(Re)build the ``conversations`` table from the stored messages.

    The schema version 2 migration runs it on a file written by version 1,
    whose messages have no conversation index yet; it reads every message
    once, in index order (no sort). A group's conversation goes to its
    current members, its messages counting for them as if they had always
    been members: the file does not say when they joined.
    """
    db.execute("DELETE FROM conversations")
    members: dict[str, list[str]] = {}
    for group_id, user_id in db.execute("SELECT group_id, user_id FROM group_members"):
        members.setdefault(group_id, []).append(user_id)
    rows = db.execute(
        "SELECT conversation, seq, sender, created_at, body FROM messages"
        " ORDER BY conversation, created_at, seq"
    )
    entries: list[tuple[Any, ...]] = []
    for conversation, messages in itertools.groupby(rows, key=lambda row: row[0]):
        kind, *ids = orjson.loads(conversation)
        total = first = 0
        sent: dict[str, int] = {}  # messages by each sender
        read: dict[str, int] = {}  # messages read by each reader, not their own
        for row in messages:
            _, seq, sender, _, body = row
            first = first or seq
            total += 1
            sent[sender] = sent.get(sender, 0) + 1
            # Decoding is the slow part: skip it for messages nobody read.
            if b'"read' not in body:
                continue
            message = orjson.loads(body)
            if kind == "g":
                readers = message.get("readBy") or ()
            else:
                readers = (message.get("to"),) if message.get("read") is True else ()
            for reader in readers:
                if reader != sender:
                    read[reader] = read.get(reader, 0) + 1
        created_at = row[3]  # of the last message, as is seq
        if kind == "g":
            group_id = ids[0]
            for user_id in members.get(group_id, ()):
                unread = total - sent.get(user_id, 0) - read.get(user_id, 0)
                entries.append((user_id, 1, group_id, created_at, seq, unread, first))
        else:
            for user_id, other in dict(((ids[0], ids[1]), (ids[1], ids[0]))).items():
                unread = total - sent.get(user_id, 0) - read.get(user_id, 0)
                entries.append((user_id, 0, other, created_at, seq, unread, 0))
        if len(entries) >= 10_000:
            db.executemany(_INSERT_CONVERSATION, entries)
            entries.clear()
    db.executemany(_INSERT_CONVERSATION, entries)


# Each entry upgrades the schema by one version; append, never edit.
_MIGRATIONS: tuple[tuple[Step, ...], ...] = (
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
    (
        "ALTER TABLE groups ADD COLUMN name TEXT",  # NULL: the id
        # A user's groups in id order, for directory pages.
        "CREATE INDEX group_members_by_user ON group_members (user_id, group_id)",
        "DROP INDEX group_members_user",
        """CREATE TABLE conversations (
            user_id TEXT NOT NULL,
            is_group INTEGER NOT NULL,
            other TEXT NOT NULL,
            last_created_at TEXT NOT NULL,
            last_seq INTEGER NOT NULL,
            unread INTEGER NOT NULL,
            since_seq INTEGER,
            PRIMARY KEY (user_id, is_group, other)
        ) WITHOUT ROWID""",
        "CREATE INDEX conversations_recent ON conversations (user_id, last_created_at, last_seq)",
        # AUTOINCREMENT: a cursor never sees a number again, even after a purge.
        """CREATE TABLE revocations (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL
        )""",
        index_conversations,
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
_HISTORY_BEFORE = (
    "SELECT seq, body FROM messages WHERE conversation = ? AND (created_at, seq) < (?, ?)"
    " ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?"
)
_HISTORY_AFTER = (
    "SELECT seq, body FROM messages WHERE conversation = ? AND (created_at, seq) > (?, ?)"
    " ORDER BY created_at, seq LIMIT ? OFFSET ?"
)
_COLUMNS = "(user_id, is_group, other, last_created_at, last_seq, unread, since_seq)"
_INSERT_CONVERSATION = f"INSERT INTO conversations {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?)"
# A new message of a conversation: it becomes the last unless its createdAt
# is older (a later insertion wins a tie), and it counts as unread for the
# recipients; since_seq restarts the count of a member who had left.
_FILE = (
    " ON CONFLICT (user_id, is_group, other) DO UPDATE SET"
    " last_seq = iif(excluded.last_created_at >= last_created_at, excluded.last_seq, last_seq),"
    " last_created_at = max(excluded.last_created_at, last_created_at),"
    " unread = unread + excluded.unread,"
    " since_seq = coalesce(since_seq, excluded.since_seq)"
)
# Both sides of a direct message, the recipient with one more unread.
_FILE_DIRECT = (
    f"INSERT INTO conversations {_COLUMNS} VALUES (?, 0, ?, ?, ?, 0, 0), (?, 0, ?, ?, ?, 1, 0)"
    + _FILE
)
_FILE_TO_SELF = f"INSERT INTO conversations {_COLUMNS} VALUES (?, 0, ?, ?, ?, 0, 0)" + _FILE
# Every member at once; a sender who is not a member gets nothing.
_FILE_GROUP = (
    f"INSERT INTO conversations {_COLUMNS}"
    " SELECT user_id, 1, group_id, ?, ?, user_id != ?, ? FROM group_members WHERE group_id = ?"
    + _FILE
)
_CONVERSATIONS = (
    "SELECT c.is_group, c.other, c.unread, c.last_created_at, c.last_seq, m.body"
    " FROM conversations c CROSS JOIN messages m ON m.seq = c.last_seq"
    " WHERE c.user_id = ? {where}"
    " ORDER BY c.last_created_at DESC, c.last_seq DESC LIMIT ?"
)
# Directory pages: one range scan each, already in id order.
_LIST_GROUPS = (
    "SELECT m.group_id, coalesce(g.name, m.group_id)"
    " FROM group_members m CROSS JOIN groups g ON g.id = m.group_id"
    " WHERE m.user_id = ? AND m.group_id > ? ORDER BY m.group_id LIMIT ?"
)
_LIST_GROUP_MEMBERS = (
    "SELECT user_id FROM group_members WHERE group_id = ? AND user_id > ? ORDER BY user_id LIMIT ?"
)
_LIST_PARTNERS = (
    "SELECT other FROM conversations WHERE user_id = ? AND is_group = 0"
    " AND other > ? ORDER BY other LIMIT ?"
)
_LEAVE = (
    "UPDATE conversations SET unread = 0, since_seq = NULL"
    " WHERE user_id = ? AND is_group = 1 AND other = ?"
)
_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,18}")
_MAX_SEQ = 2**63 - 1
# Rows a revocationsAfter answer carries at most; the next poll gets the rest.
_REVOCATIONS_PER_POLL = 1000
# Host parameters per IN (...) query, well under SQLite's limit.
_IDS_PER_QUERY = 500


def open_database(path: str) -> sqlite3.Connection:
    """Open the chat database at ``path``, creating or upgrading its schema.

    A new file is created readable by its owner only. This blocks: call it
    off the reactor thread. The connection is in autocommit mode; group
    statements with explicit transactions.

    :raise RuntimeError: if the file was written by a newer release.
    """
    if path != ":memory:" and not path.startswith("file:"):
        _create_private(path)
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


def _create_private(path: str) -> None:
    """Create ``path``, empty and mode 0600, unless it exists: SQLite would
    create it with the process's umask, usually readable by everyone."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # it exists, or SQLite will say why it cannot be opened


def exposure(path: str) -> str | None:
    """A warning if the database file at ``path`` is readable by other users."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"chat database {path} can be read by other users (mode {stat.filemode(mode)}):"
            f" chmod 600 {path}"
        )
    return None


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
        for steps in _MIGRATIONS[version:]:
            for step in steps:
                if callable(step):
                    step(db)
                else:
                    db.execute(step)
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


def message_row(message: dict[str, Any]) -> tuple[str, str, str, str | None, bytes]:
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


def _decode(seq: int, body: bytes) -> dict[str, Any]:
    return {"_id": str(seq), **orjson.loads(body)}


def _from_threads(reactor: IReactorCore) -> IReactorFromThreads:
    # Every reactor provides IReactorFromThreads too; the parameter names
    # only IReactorCore, as Twisted's own type of its global reactor does.
    return cast(IReactorFromThreads, reactor)


def _hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


@implementer(IChatStorage, IUserDirectory, IConversationStore, ISessionRevocations, IAccountStore)
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
        :param path: the database file, created if missing (``:memory:`` for
            a throwaway database).
        :param reactor: the reactor to deliver results on; the global one by
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

    def check(self) -> None:
        """Open the file once, creating or upgrading its schema, and close it.

        This blocks: it is for start-up, before anything is served, so that a
        file that cannot be used stops the server at once instead of failing
        every request. :meth:`startService` does not need it.

        :raise ValueError: one line saying why the file cannot be used.
        """
        if self.path == ":memory:" or self.path.startswith("file:"):
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ValueError(
                f"cannot open the chat database {self.path}: the directory {folder} does not "
                "exist (create it, or give another sqlite:PATH)"
            )
        try:
            open_database(self.path).close()
        except (sqlite3.Error, OSError, RuntimeError) as e:
            raise ValueError(f"cannot open the chat database {self.path}: {e}") from e

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
        self._run(self._open).addCallbacks(self._opened, self._not_opened)

    def _opened(self, warning: str | None) -> None:
        log.info("Opened chat database {path}", path=os.path.abspath(self.path))
        if warning:
            log.warn("{warning}", warning=warning)

    def _not_opened(self, failure: Any) -> None:
        log.failure("Could not open chat database {path}", failure, path=self.path)

    def stopService(self) -> Deferred[None]:
        """Finish the queued work, close the file and stop the worker thread."""
        super().stopService()
        pool, self._pool = self._pool, None
        if pool is None or self._reactor is None:  # never started
            return succeed(None)
        self._reactor.removeSystemEventTrigger(self._shutdown_trigger)

        def stop_pool(result: object) -> object:
            pool.stop()  # the thread is idle by now, so this does not wait
            return result

        # The pool runs work in order, so closing comes after all queued work.
        return deferToThreadPool(_from_threads(self._reactor), pool, self._close).addBoth(stop_pool)

    def _run(self, work: Callable[..., T], *args: object) -> Deferred[T]:
        """Run ``work(*args)`` on the database thread: the one place where
        work leaves the reactor thread."""
        if self._pool is None or self._reactor is None:
            return fail(RuntimeError(f"{self!r} is not running: call startService() first"))
        return deferToThreadPool(_from_threads(self._reactor), self._pool, work, *args)

    def _open(self) -> str | None:
        try:
            self._db = open_database(self.path)
        except BaseException as e:
            self._open_error = e
            raise
        return exposure(self.path) if self.path != ":memory:" else None

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

    def authorize(self, credentials: dict[str, Any]) -> Deferred[dict[str, Any] | None]:
        """Fire with ``{"id": ..., "name": ...}`` for the user whose token is
        ``credentials["token"]``, or with None."""
        token = credentials.get("token") if isinstance(credentials, dict) else None
        if not isinstance(token, str) or not token:
            return succeed(None)
        return self._run(self._authorize, _hash_token(token))

    def _authorize(self, token_hash: bytes) -> dict[str, Any] | None:
        row = (
            self._connection()
            .execute("SELECT id, name FROM users WHERE token_hash = ?", (token_hash,))
            .fetchone()
        )
        return {"id": row[0], "name": row[1]} if row else None

    # IMessageStore

    def create(self, message: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Store ``message`` and file it in its recipients' conversation
        index, in one transaction; fire with it and its new ``_id``, or with
        the message stored earlier under the same sender and
        ``clientMessageId``."""
        return self._run(self._create, message)

    def _create(self, message: dict[str, Any]) -> dict[str, Any]:
        db = self._connection()
        row = message_row(message)
        _, sender, created_at, client_id, body = row
        with _transaction(db):
            cursor = db.execute(_INSERT_MESSAGE, row)
            if cursor.rowcount == 1:
                seq = cursor.lastrowid
                assert seq is not None  # set by every INSERT that adds a row
                to = str(message["to"])
                if message.get("isGroup"):
                    db.execute(_FILE_GROUP, (created_at, seq, sender, seq, to))
                elif to == sender:
                    db.execute(_FILE_TO_SELF, (sender, to, created_at, seq))
                else:
                    db.execute(
                        _FILE_DIRECT,
                        (sender, to, created_at, seq, to, sender, created_at, seq),
                    )
                return _decode(seq, body)
            # A duplicate (sender, clientMessageId): answer with the first copy.
            seq, body = db.execute(
                "SELECT seq, body FROM messages WHERE sender = ? AND client_message_id = ?",
                (sender, client_id),
            ).fetchone()
        return _decode(seq, body)

    def getMessages(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """Fire with one page of a conversation's messages: newest first, or
        oldest first after the cursor ``after``."""
        key = conversation_key(list(query["ids"]), bool(query.get("isGroup")))
        limit = max(0, int(query.get("limit", 10)))
        skip = max(0, int(query.get("skip", 0)))
        before, after = query.get("before"), query.get("after")
        if before is None and after is None:
            return self._run(self._get_messages, key, limit, skip)
        cursor = before if before is not None else after
        seq = _parse_id(cursor) if isinstance(cursor, str) else None
        if seq is None:
            return fail(ChatError(NOT_FOUND, f"no message {cursor!r} in this conversation"))
        statement = _HISTORY_BEFORE if before is not None else _HISTORY_AFTER
        return self._run(self._get_messages_from, key, statement, seq, limit, skip)

    def _get_messages(self, key: str, limit: int, skip: int) -> list[dict[str, Any]]:
        rows = self._connection().execute(_HISTORY, (key, limit, skip)).fetchall()
        return [_decode(seq, body) for seq, body in rows]

    def _get_messages_from(
        self, key: str, statement: str, seq: int, limit: int, skip: int
    ) -> list[dict[str, Any]]:
        db = self._connection()
        anchor = db.execute(
            "SELECT created_at FROM messages WHERE seq = ? AND conversation = ?", (seq, key)
        ).fetchone()
        if anchor is None:
            raise ChatError(NOT_FOUND, f"no message {str(seq)!r} in this conversation")
        rows = db.execute(statement, (key, anchor[0], seq, limit, skip)).fetchall()
        return [_decode(seq, body) for seq, body in rows]

    def read(self, messageId: str, userId: str) -> Deferred[dict[str, Any] | None]:
        """Record that ``userId`` read the message; fire with the updated
        message, or with None if there is none or ``userId`` is not one of its
        recipients. Direct messages get ``read: true``, group messages add the
        reader to ``readBy`` once; either way the reader's unread count goes
        down the first time."""
        seq = _parse_id(messageId)
        if seq is None:
            return succeed(None)
        return self._run(self._read, seq, str(userId))

    def _read(self, seq: int, reader: str) -> dict[str, Any] | None:
        db = self._connection()
        with _transaction(db):
            row = db.execute("SELECT body FROM messages WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return None
            message = orjson.loads(row[0])
            if message.get("from") == reader:
                return None
            if message.get("isGroup"):
                group_id = str(message.get("to"))
                member = db.execute(
                    "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?",
                    (group_id, reader),
                ).fetchone()
                if member is None:
                    return None
                readers = message.setdefault("readBy", [])
                if reader in readers:
                    return {"_id": str(seq), **message}
                readers.append(reader)
                # Only a message sent while they were a member counted.
                db.execute(
                    "UPDATE conversations SET unread = unread - 1 WHERE user_id = ?"
                    " AND is_group = 1 AND other = ? AND unread > 0 AND since_seq <= ?",
                    (reader, group_id, seq),
                )
            elif message.get("to") != reader:
                return None
            elif message.get("read") is True:
                return {"_id": str(seq), **message}
            else:
                message["read"] = True
                db.execute(
                    "UPDATE conversations SET unread = unread - 1 WHERE user_id = ?"
                    " AND is_group = 0 AND other = ? AND unread > 0",
                    (reader, str(message.get("from"))),
                )
            db.execute("UPDATE messages SET body = ? WHERE seq = ?", (orjson.dumps(message), seq))
        return {"_id": str(seq), **message}

    # IGroupDirectory

    def getGroupUserIds(self, data: dict[str, Any]) -> Deferred[list[str]]:
        """Fire with the ids of group ``data["groupId"]``'s members (none if
        there is no such group)."""
        return self._run(self._members, str(data["groupId"]))

    def _members(self, group_id: str) -> list[str]:
        rows = self._connection().execute(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY rowid", (group_id,)
        )
        return [user_id for (user_id,) in rows]

    # IConversationStore

    def getConversations(self, query: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Fire with a page of ``query["userId"]``'s conversations, by last
        message, newest first: one range scan of ``conversations_recent``."""
        limit = page_limit(query, 20)
        before = query.get("before")
        try:
            start = decode_position(before) if before is not None else None
        except ChatError as e:
            return fail(e)
        return self._run(self._conversations, str(query["userId"]), start, limit)

    def _conversations(self, user_id: str, start: Position | None, limit: int) -> dict[str, Any]:
        if start is None:
            statement = _CONVERSATIONS.format(where="")
            args: tuple[Any, ...] = (user_id, limit + 1)
        else:
            statement = _CONVERSATIONS.format(where="AND (c.last_created_at, c.last_seq) < (?, ?)")
            args = (user_id, *start, limit + 1)
        page = [
            (
                (created_at, seq),
                {
                    "with": other,
                    "isGroup": bool(is_group),
                    "last": _decode(seq, body),
                    "unread": unread,
                },
            )
            for is_group, other, unread, created_at, seq, body in self._connection().execute(
                statement, args
            )
        ]
        return conversation_page(page, limit)

    # IUserDirectory

    def listUsers(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """Fire with a page of every user, by id."""
        return self._run(self._list_users, page_after(query) or "", page_limit(query))

    def _list_users(self, after: str, limit: int) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT id, name FROM users WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
        return [{"id": user_id, "name": name} for user_id, name in rows]

    def listGroups(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """Fire with a page of the user's groups, by id."""
        args = (str(query["userId"]), page_after(query) or "", page_limit(query))
        return self._run(self._list_groups, *args)

    def _list_groups(self, user_id: str, after: str, limit: int) -> list[dict[str, Any]]:
        rows = self._connection().execute(_LIST_GROUPS, (user_id, after, limit))
        return [{"id": group_id, "name": name} for group_id, name in rows]

    def listContacts(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """Fire with a page of the user's contacts, by id: one range scan per
        group of the user and one of the people they wrote to, merged."""
        args = (str(query["userId"]), page_after(query) or "", page_limit(query))
        return self._run(self._list_contacts, *args)

    def _list_contacts(self, user_id: str, after: str, limit: int) -> list[dict[str, Any]]:
        db = self._connection()
        groups = db.execute("SELECT group_id FROM group_members WHERE user_id = ?", (user_id,))
        sources = [
            db.execute(_LIST_GROUP_MEMBERS, (group_id, after, limit + 1)).fetchall()
            for (group_id,) in groups.fetchall()
        ]
        sources.append(db.execute(_LIST_PARTNERS, (user_id, after, limit + 1)).fetchall())
        ids = merge_ids(([i for (i,) in rows] for rows in sources), user_id, limit)
        names = self._names(ids)
        return [{"id": i, "name": names.get(i, i)} for i in ids]

    def getUsers(self, userIds: list[Any]) -> Deferred[dict[str, dict[str, Any]]]:
        """Fire with ``{id: {"id", "name"}}`` for the known users among ``userIds``."""
        return self._run(self._get_users, list(dict.fromkeys(str(u) for u in userIds)))

    def _get_users(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {i: {"id": i, "name": name} for i, name in self._names(user_ids).items()}

    def _names(self, user_ids: list[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        db = self._connection()
        for start in range(0, len(user_ids), _IDS_PER_QUERY):
            chunk = user_ids[start : start + _IDS_PER_QUERY]
            names.update(
                db.execute(
                    f"SELECT id, name FROM users WHERE id IN ({_placeholders(len(chunk))})", chunk
                ).fetchall()
            )
        return names

    # ISessionRevocations

    def revocationsAfter(self, cursor: object) -> Deferred[tuple[list[str], int]]:
        """Fire with the users revoked after ``cursor`` (by any process using
        the file), at most 1,000 at a time, and the cursor to pass next.
        The cursor is an int; one this store did not make counts as None."""
        if type(cursor) is not int or not 0 <= cursor <= _MAX_SEQ:
            cursor = None
        return self._run(self._revocations_after, cursor)

    def _revocations_after(self, cursor: int | None) -> tuple[list[str], int]:
        db = self._connection()
        if cursor is None:
            (now,) = db.execute("SELECT coalesce(max(seq), 0) FROM revocations").fetchone()
            return [], now
        rows = db.execute(
            "SELECT seq, user_id FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, _REVOCATIONS_PER_POLL),
        ).fetchall()
        return [user_id for _, user_id in rows], rows[-1][0] if rows else cursor

    @staticmethod
    def _revoke(db: sqlite3.Connection, user_id: str) -> None:
        db.execute("INSERT INTO revocations (user_id) VALUES (?)", (user_id,))

    # IAccountStore: for applications and ``python -m chatserver users|groups``

    def add_user(
        self, user_id: str, name: str | None = None, token: str | None = None
    ) -> Deferred[str]:
        """Create a user who signs in with ``token`` (a new random one if
        ``None``); fire with the token.

        Only the token's hash is kept, so this is the one chance to read it.
        Fails with ValueError if an id, name or token is empty, if the user
        exists or if the token is taken.
        """
        try:
            _text(user_id, "a user id")
            if name is not None:
                _text(name, "a name")
            token = _text(token, "a token") if token is not None else secrets.token_urlsafe(32)
        except ValueError as e:
            return fail(e)
        work = self._run(self._add_user, user_id, name or user_id, _hash_token(token))
        return work.addCallback(lambda _: token)

    def _add_user(self, user_id: str, name: str, token_hash: bytes) -> None:
        db = self._connection()
        try:
            db.execute(
                "INSERT INTO users (id, name, token_hash) VALUES (?, ?, ?)",
                (user_id, name, token_hash),
            )
        except sqlite3.IntegrityError:
            if db.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
                raise ValueError(f"user {user_id!r} already exists") from None
            raise ValueError("that token is already in use") from None

    def set_token(self, user_id: str, token: str | None = None) -> Deferred[str]:
        """Give ``user_id`` a new token (random if ``None``) and end their
        sessions; fire with the token. Fails with LookupError for an unknown
        user, ValueError if another user has the token."""
        try:
            token = _text(token, "a token") if token is not None else secrets.token_urlsafe(32)
        except ValueError as e:
            return fail(e)
        work = self._run(self._set_token, str(user_id), _hash_token(token))
        return work.addCallback(lambda _: token)

    def _set_token(self, user_id: str, token_hash: bytes) -> None:
        db = self._connection()
        with _transaction(db):
            try:
                cursor = db.execute(
                    "UPDATE users SET token_hash = ? WHERE id = ?", (token_hash, user_id)
                )
            except sqlite3.IntegrityError:
                raise ValueError("that token is already in use") from None
            if cursor.rowcount == 0:
                raise LookupError(f"no user {user_id!r}")
            self._revoke(db, user_id)

    def get_user(self, user_id: str) -> Deferred[dict[str, Any] | None]:
        """Fire with ``{"id", "name"}``, or None for an unknown user."""
        return self._run(self._get_user, str(user_id))

    def _get_user(self, user_id: str) -> dict[str, Any] | None:
        row = (
            self._connection()
            .execute("SELECT id, name FROM users WHERE id = ?", (user_id,))
            .fetchone()
        )
        return {"id": row[0], "name": row[1]} if row else None

    def remove_user(self, user_id: str) -> Deferred[bool]:
        """Delete a user (their token stops working) and their group
        memberships, and end their sessions; their messages stay. Fire with
        whether they existed."""
        return self._run(self._remove_user, str(user_id))

    def _remove_user(self, user_id: str) -> bool:
        db = self._connection()
        with _transaction(db):
            db.execute(
                "UPDATE conversations SET unread = 0, since_seq = NULL"
                " WHERE user_id = ? AND is_group = 1",
                (user_id,),
            )
            db.execute("DELETE FROM group_members WHERE user_id = ?", (user_id,))
            self._revoke(db, user_id)
            return db.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0

    def revoke_sessions(self, user_id: str) -> Deferred[None]:
        """End ``user_id``'s sessions on every server using this file."""
        return self._run(self._revoke_sessions, str(user_id))

    def _revoke_sessions(self, user_id: str) -> None:
        self._revoke(self._connection(), user_id)

    def list_all_users(
        self, after: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        """Fire with a page of users as ``{"id", "name"}``, by id."""
        return self._run(self._list_users, after or "", max(0, int(limit)))

    def add_group(
        self, group_id: str, member_ids: Iterable[str], name: str | None = None
    ) -> Deferred[None]:
        """Create group ``group_id``, or replace its members (and its name,
        if given), with ``member_ids`` (in this order, duplicates dropped)."""
        try:
            _text(group_id, "a group id")
            if name is not None:
                _text(name, "a name")
            members = list(dict.fromkeys(_text(str(m), "a member id") for m in member_ids))
        except ValueError as e:
            return fail(e)
        return self._run(self._add_group, group_id, members, name)

    def _add_group(self, group_id: str, members: list[str], name: str | None) -> None:
        db = self._connection()
        with _transaction(db):
            db.execute(
                "INSERT INTO groups (id, name) VALUES (?, ?)"
                " ON CONFLICT DO UPDATE SET name = coalesce(excluded.name, name)",
                (group_id, name),
            )
            keep = set(members)
            leaving = [(m, group_id) for m in self._members(group_id) if m not in keep]
            db.executemany(_LEAVE, leaving)
            db.execute("DELETE FROM group_members WHERE group_id = ?", (group_id,))
            db.executemany(
                "INSERT INTO group_members (group_id, user_id) VALUES (?, ?)",
                [(group_id, m) for m in members],
            )

    def get_group(self, group_id: str) -> Deferred[dict[str, Any] | None]:
        """Fire with ``{"id", "name", "members"}``, or None for an unknown group."""
        return self._run(self._get_group, str(group_id))

    def _get_group(self, group_id: str) -> dict[str, Any] | None:
        groups = self._groups_with_members(
            "SELECT id, coalesce(name, id) FROM groups WHERE id = ?", (group_id,)
        )
        return groups[0] if groups else None

    def _groups_with_members(self, statement: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        db = self._connection()
        groups = {g: {"id": g, "name": n, "members": []} for g, n in db.execute(statement, args)}
        ids = list(groups)
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            rows = db.execute(
                "SELECT group_id, user_id FROM group_members"
                f" WHERE group_id IN ({_placeholders(len(chunk))}) ORDER BY rowid",
                chunk,
            )
            for group_id, user_id in rows:
                groups[group_id]["members"].append(user_id)
        return list(groups.values())

    def remove_group(self, group_id: str) -> Deferred[bool]:
        """Delete a group and its memberships; its messages stay. Fire with
        whether it existed."""
        return self._run(self._remove_group, str(group_id))

    def _remove_group(self, group_id: str) -> bool:
        db = self._connection()
        with _transaction(db):
            db.executemany(_LEAVE, [(m, group_id) for m in self._members(group_id)])
            return db.execute("DELETE FROM groups WHERE id = ?", (group_id,)).rowcount > 0

    def add_member(self, group_id: str, user_id: str) -> Deferred[bool]:
        """Add ``user_id`` to the group; fire with whether they were not a
        member yet. Fails with LookupError for an unknown group."""
        try:
            _text(user_id, "a user id")
        except ValueError as e:
            return fail(e)
        return self._run(self._add_member, str(group_id), user_id)

    def _add_member(self, group_id: str, user_id: str) -> bool:
        db = self._connection()
        with _transaction(db):
            if db.execute("SELECT 1 FROM groups WHERE id = ?", (group_id,)).fetchone() is None:
                raise LookupError(f"no group {group_id!r}")
            cursor = db.execute(
                "INSERT INTO group_members (group_id, user_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                (group_id, user_id),
            )
            return cursor.rowcount > 0

    def remove_member(self, group_id: str, user_id: str) -> Deferred[bool]:
        """Take ``user_id`` out of the group; fire with whether they were in it."""
        return self._run(self._remove_member, str(group_id), str(user_id))

    def _remove_member(self, group_id: str, user_id: str) -> bool:
        db = self._connection()
        with _transaction(db):
            cursor = db.execute(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?", (group_id, user_id)
            )
            if cursor.rowcount == 0:
                return False
            db.execute(_LEAVE, (user_id, group_id))
            return True

    def list_all_groups(
        self, after: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        """Fire with a page of groups as ``{"id", "name", "members"}``, by id."""
        return self._run(self._list_all_groups, after or "", max(0, int(limit)))

    def _list_all_groups(self, after: str, limit: int) -> list[dict[str, Any]]:
        return self._groups_with_members(
            "SELECT id, coalesce(name, id) FROM groups WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
