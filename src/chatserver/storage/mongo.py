"""A MongoDB store, talking to the server through txmongo.

Collections (in the database named by the URI's path, ``chatserver`` if none):

``messages``
    One document per chat message: the message as the chat server gave it,
    an ObjectId ``_id`` (handed to clients as its 24-digit hex string), plus
    two fields clients never see: ``conversation``, the key both sides of a
    direct conversation (or every member of a group) share, and
    ``clientKey``, the sender's ``clientMessageId`` as a string, which a
    unique index makes idempotent. A direct message gains ``read: true``
    when its ``to`` reads it; a group message gains a ``readBy`` list.
``users``
    ``{_id: "<user id>", tokenHash: "<sha256 hex>", name: ...}``: only the
    SHA-256 of a token is stored, so a leaked database does not leak logins.
``groups``
    ``{_id: "<group id>", users: ["<user id>", ...], name: ...}``.
``conversations``
    The per-user conversation index, one document per (user, conversation):
    ``{_id, user, with, isGroup, last, unread, since}`` (``last``: the last
    message's ``createdAt`` and id, see :func:`last_key`), kept up to date
    by :meth:`~MongoStorage.create` and :meth:`~MongoStorage.read`.
``revocations``
    ``{user, at}``: sessions an operator ended; each expires after a day.

Ids are strings: users and groups made by an application with ObjectId
``_id`` are found by their hex string too, but listed (by id) only when their
``_id`` is a string; ``python -m chatserver migrate-seed`` converts a
database laid out as node-chat-server's example.

The store is a Twisted service. :meth:`MongoStorage.startService` opens the
connection pool and makes the indexes (see
:mod:`chatserver.storage.mongo_indexes`), each on its own, with a time budget
of their own; :meth:`MongoStorage.status` says where start-up stands, and
:meth:`MongoStorage.whenReady` fires when it is done, or fails with
:class:`MongoStartupError` (one line for the operator) when an index is in
the way. Requests wait for start-up, within their own timeout.
:meth:`MongoStorage.stopService` closes the connections. ``chatserver``
starts and stops it for you when it is given the storage; elsewhere call
``startService()`` yourself.

Every call fails its Deferred with a :class:`MongoStorageError`, a
:class:`chatserver.ChatError` whose code is ``storageTimeout`` when MongoDB
did not answer in ``timeout`` seconds (``?timeoutMS=`` in the URI; ``0``
means no limit of the store's own, as in MongoDB) and ``storageError`` when
it erred or is unreachable; txmongo keeps reconnecting in the background, so
later calls work again once MongoDB is back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import UpdateOne
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    WTimeoutError,
)
from pymongo.results import DeleteResult, UpdateResult
from pymongo.uri_parser import parse_uri
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txmongo import filter as qf
from txmongo.collection import ReturnDocument
from txmongo.connection import ConnectionPool
from txmongo.database import Database
from txmongo.errors import TimeExceeded
from zope.interface import implementer

from chatserver._internals import quiet_txmongo
from chatserver.errors import INVALID_QUERY, NOT_FOUND, STORAGE_ERROR, STORAGE_TIMEOUT, ChatError
from chatserver.interfaces import (
    IAccountStore,
    IChatStorage,
    IConversationStore,
    ISessionRevocations,
    IStorageStatus,
    IUserDirectory,
)
from chatserver.logs import Throttle
from chatserver.storage.mongo_indexes import INDEXES, IndexProblem, IndexSpec, ensure_index

T = TypeVar("T")

DEFAULT_DATABASE = "chatserver"
DEFAULT_TIMEOUT = 5.0
DEFAULT_INDEX_TIMEOUT = 600.0

# What status() says.
STARTING = "starting"
UNREACHABLE = "unreachable"
BUILDING_INDEXES = "building indexes"
READY = "ready"
STOPPED = "stopped"

# Store-managed message fields. A client cannot set them: they are replaced
# (``_id``, ``conversation``, ``clientKey``) or only ever written by read().
_STORE_OWNED = frozenset({"_id", "conversation", "clientKey", "read", "readBy"})

# Internal fields are left out of every document handed back to the server.
_HIDDEN: dict[str, int] = {"conversation": 0, "clientKey": 0}

_NEWEST_FIRST = qf.sort(qf.DESCENDING("createdAt") + qf.DESCENDING("_id"))
_OLDEST_FIRST = qf.sort(qf.ASCENDING("createdAt") + qf.ASCENDING("_id"))
_BY_ID = qf.sort(qf.ASCENDING("_id"))
_LATEST_CONVERSATION_FIRST = qf.sort(qf.DESCENDING("last"))
_BY_PARTNER = qf.sort(qf.ASCENDING("with"))
_BY_TIME = qf.sort(qf.ASCENDING("at"))

# The most a directory page or a getUsers call returns, whatever is asked.
MAX_PAGE = 1000
# Revocations written within this long of the newest one seen may still
# appear (a write becomes visible a little after its timestamp): each poll
# looks back this far, skipping the ones it already returned.
REVOCATION_OVERLAP_MS = 10_000
# Nodes poll often; a burst larger than this is returned over several polls.
REVOCATIONS_PER_POLL = 10_000

# MongoDB's codes for "ran out of time" (MaxTimeMSExpired, NetworkTimeout,
# ExceededTimeLimit, NetworkInterfaceExceededTimeLimit).
_TIMEOUT_CODES = frozenset({50, 89, 202, 262})


class MongoStorageError(ChatError):
    """A MongoDB request failed; the client hears ``code``: ``storageTimeout``
    when MongoDB did not answer in time, ``storageError`` otherwise.

    ``mongo_code`` is MongoDB's numeric error code when the server sent one.
    """

    def __init__(
        self, message: str, mongo_code: int | None = None, code: str = STORAGE_ERROR
    ) -> None:
        super().__init__(code, message)
        self.mongo_code = mongo_code


class MongoStartupError(Exception):
    """Start-up cannot finish without an operator: an index is in the way, or
    building one took longer than its budget. ``line`` (also ``str()``) is
    the one line to show: the problem and its fix."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def hash_token(token: str) -> str:
    """The value stored in ``users.tokenHash`` for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def conversation_key(ids: list[str] | tuple[str, str], is_group: bool) -> str:
    """The ``conversation`` field of a message between ``ids`` (from/to order).

    Direct conversations are keyed by both user ids in sorted order, so both
    sides share one key; a group conversation by the group id. The JSON form
    keeps any id unambiguous, and the prefix keeps a user and a group with the
    same id apart.
    """
    a, b = str(ids[0]), str(ids[1])
    parts = ["g", b] if is_group else ["d", *sorted((a, b))]
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


def conversation_entry_id(user_id: str, key: str) -> str:
    """The ``_id`` of ``user_id``'s entry for conversation ``key`` in ``conversations``."""
    return json.dumps([user_id, key], ensure_ascii=False, separators=(",", ":"))


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as handed to the server: ``_id`` as a string."""
    return {**doc, "_id": str(doc["_id"])}


def _person(doc: Mapping[str, Any]) -> dict[str, str]:
    """A user or group as the directory lists it: ``{"id", "name"}``."""
    doc_id = str(doc["_id"])
    name = doc.get("name")
    return {"id": doc_id, "name": name if isinstance(name, str) and name else doc_id}


def _id_candidates(value: object) -> list[object]:
    """The ``_id`` values an id given as a string may be stored as: itself,
    and the ObjectId it spells (applications' own users and groups)."""
    text = str(value)
    candidates: list[object] = [text]
    if len(text) == 24:
        try:
            candidates.append(ObjectId(text))
        except (InvalidId, TypeError):
            pass
    return candidates


def _id_filter(value: object) -> object:
    candidates = _id_candidates(value)
    return candidates[0] if len(candidates) == 1 else {"$in": candidates}


def _message_oid(message_id: object) -> ObjectId | None:
    """The ObjectId a client's message id names, if it can name one.

    Only the canonical form (24 lowercase or uppercase hex digits, nothing
    around them) is accepted: ``ObjectId()`` itself also takes 12-byte
    strings, which are no id we ever handed out.
    """
    if not isinstance(message_id, str) or len(message_id) != 24:
        return None
    try:
        return ObjectId(message_id)
    except (InvalidId, TypeError):
        return None


def last_key(created_at: object, oid: ObjectId) -> str:
    """A message's place in conversation order as one string: ``createdAt``,
    a space, then its id in hex. Compared as strings these keys follow
    (createdAt, _id) — the server's ``createdAt`` is fixed-width ISO 8601,
    and the space sorts below every character it holds — so ``$max`` keeps
    the latest whatever order writes land in."""
    return f"{created_at} {oid}"


def _message_of(key: str) -> ObjectId:
    return ObjectId(key[-24:])


def _touch_conversation(
    user: str, other: str, is_group: bool, key: str, at: object, oid: ObjectId, unread: int
) -> UpdateOne:
    """The write that records message ``oid`` (sent at ``at``) in ``user``'s
    entry for conversation ``key``: it becomes the last message if it is
    later than the one recorded, and ``unread`` more messages are unread.
    One update, atomic per entry, with plain operators (no pipeline)."""
    return UpdateOne(
        {"_id": conversation_entry_id(user, key)},
        {
            "$max": {"last": last_key(at, oid)},
            "$inc": {"unread": unread},
            # The first message counted: a group member's unread count covers
            # only what was sent once they were in.
            "$setOnInsert": {"user": user, "with": other, "isGroup": is_group, "since": oid},
        },
        upsert=True,
    )


def _encode_cursor(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def _decode_cursor(cursor: object) -> str:
    """The ``last`` key a conversations cursor stands for.

    :raise ChatError: ``invalidQuery`` for anything we did not hand out.
    """
    try:
        if not isinstance(cursor, str) or not cursor or len(cursor) > 4096:
            raise ValueError(cursor)
        padded = cursor + "=" * (-len(cursor) % 4)
        last = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        _message_of(last)
        if last[-25:-24] != " ":
            raise ValueError(last)
        return last
    except (ValueError, TypeError, InvalidId, UnicodeError) as e:
        raise ChatError(INVALID_QUERY, "`before` is not a cursor this server gave") from e


async def page_beyond(
    collection: Any,
    selector: dict[str, Any],
    at: tuple[str, object],
    tie: tuple[str, object],
    *,
    newer: bool,
    count: int,
    projection: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The first ``count`` documents of ``selector`` past the position (at,
    tie) in the order (at, tie): newer ones oldest first, or older ones
    newest first.

    Two plain index ranges, equal ``at`` first, then the rest, rather than
    one query with an ``$or``/``$nor``: every query planner serves these from
    an index on (..., at, tie).
    """
    (at_field, at_value), (tie_field, tie_value) = at, tie
    past = "$gt" if newer else "$lt"
    order = qf.sort(
        (qf.ASCENDING if newer else qf.DESCENDING)(at_field)
        + (qf.ASCENDING if newer else qf.DESCENDING)(tie_field)
    )
    same: list[dict[str, Any]] = await collection.find(
        {**selector, at_field: at_value, tie_field: {past: tie_value}},
        projection=projection,
        sort=order,
        limit=count,
    )
    if len(same) >= count:
        return same
    rest: list[dict[str, Any]] = await collection.find(
        {**selector, at_field: {past: at_value}},
        projection=projection,
        sort=order,
        limit=count - len(same),
    )
    return same + rest


def _page_limit(query: Mapping[str, Any]) -> int:
    try:
        limit = int(query.get("limit", 100))
    except (TypeError, ValueError):
        return 0
    return max(0, min(limit, MAX_PAGE))


def _page_after(query: Mapping[str, Any]) -> dict[str, str]:
    """The query bound for ids after ``query["after"]`` (every string id when None)."""
    after = query.get("after")
    return {"$gt": "" if after is None else str(after)}


def _describe(error: BaseException | None) -> str:
    """Class and code of an error, for logs (no payload: it may hold user data)."""
    if isinstance(error, OperationFailure):
        code_name = (error.details or {}).get("codeName")
        return f"{type(error).__name__} code={error.code} {code_name or ''}".rstrip()
    return type(error).__name__


def _is_timeout(error: BaseException | None) -> bool:
    if isinstance(error, TimeExceeded | DeferredTimeoutError | NetworkTimeout):
        return True
    if isinstance(error, ExecutionTimeout | WTimeoutError):
        return True
    return isinstance(error, OperationFailure) and error.code in _TIMEOUT_CODES


def _duplicate_index(error: DuplicateKeyError) -> str:
    """Which unique index refused a write: ``_id`` or an index's name."""
    details = error.details or {}
    pattern = details.get("keyPattern")
    if isinstance(pattern, Mapping) and list(pattern) == ["_id"]:
        return "_id"
    message = str(details.get("errmsg", error))
    for spec in INDEXES:
        if spec.name in message:
            return spec.name
    return "_id" if "_id_" in message else "?"


def _database_name(parsed: Mapping[str, Any]) -> str:
    return parsed.get("database") or DEFAULT_DATABASE


def _check_ids(**ids: object) -> None:
    for name, value in ids.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, not {value!r}")


@implementer(
    IChatStorage,
    IUserDirectory,
    IConversationStore,
    ISessionRevocations,
    IAccountStore,
    IStorageStatus,
)
class MongoStorage(Service):
    """Users, groups, messages and conversations in MongoDB.

    Construction only parses ``uri``; :meth:`startService` connects.
    """

    log = Logger()

    def __init__(
        self,
        uri: str,
        reactor: IReactorTime | None = None,
        *,
        timeout: float | None = None,
        index_timeout: float = DEFAULT_INDEX_TIMEOUT,
        pool_size: int = 2,
        retry_delay: float = 1.0,
        max_delay: float = 5.0,
        ping_interval: float = 10.0,
    ) -> None:
        """
        :param uri: ``mongodb://[user:pass@]host[:port][,host...]/[database][?options]``;
            the database defaults to ``chatserver``. The URI option
            ``timeoutMS`` sets ``timeout`` when that is not given.
        :param reactor: the clock for timeouts and retries (txmongo itself
            always uses the global reactor).
        :param timeout: seconds one storage call may take, waiting for a
            connection included, before it fails with ``storageTimeout``
            (default 5; ``0``: no limit of the store's own, as ``timeoutMS=0``
            means in MongoDB; the server's storage timeout still applies).
        :param index_timeout: seconds start-up may spend building one index
            (on a large collection that takes a while); past it start-up
            fails with a :class:`MongoStartupError` (MongoDB carries on
            building it).
        :param pool_size: connections to keep open.
        :param retry_delay: first delay before reconnecting (it grows up to
            ``max_delay``); also the connect and handshake timeout.
        :param max_delay: longest delay between reconnection attempts, so
            requests work again at most this long after MongoDB is back.
        :param ping_interval: how often txmongo checks that a connection still
            answers, and drops it when it does not.
        :raise ValueError: for a URI this store cannot use.
        """
        super().__init__()
        if not uri.startswith("mongodb://"):
            # txmongo has no TLS of its own here, and would resolve
            # mongodb+srv:// records with blocking DNS calls.
            raise ValueError("MongoStorage needs a mongodb://host[:port]/database URI")
        parsed = parse_uri(uri)
        options = {key.lower(): value for key, value in parsed["options"].items()}
        if options.get("tls") or options.get("ssl"):
            raise ValueError("MongoStorage does not support TLS connections yet")
        self.uri = uri
        self.database_name = _database_name(parsed)
        if timeout is None:
            timeout = options["timeoutms"] if "timeoutms" in options else DEFAULT_TIMEOUT
        #: Seconds a call may take, or None for no limit of the store's own.
        self.timeout: float | None = float(timeout) if timeout else None
        self.index_timeout = float(index_timeout)
        self._display = "mongodb://{hosts}/{db}".format(
            hosts=",".join(f"{host}:{port}" for host, port in parsed["nodelist"]),
            db=self.database_name,
        )
        self._pool_options = {
            "pool_size": pool_size,
            "retry_delay": retry_delay,
            "max_delay": max_delay,
            "ping_interval": ping_interval,
            "ping_timeout": ping_interval,
        }
        self._retry_delay = retry_delay
        self._max_delay = max_delay
        self._reactor = reactor
        self._pool: ConnectionPool | None = None
        self._db: Database | None = None
        self._setup: Deferred[None] | None = None
        self._ready = False
        self._startup_error: MongoStartupError | None = None
        self._status = STOPPED
        self._waiters: list[Deferred[None]] = []
        self._log_throttle: Throttle | None = None
        #: The index that serves each of ours (an equivalent one may have another name).
        self.index_names: dict[str, str] = {}

    def __repr__(self) -> str:
        # The URI may carry a password: show only hosts and database.
        return f"MongoStorage({self._display!r})"

    @property
    def _throttle(self) -> Throttle:
        # Failed calls are logged at most once per kind per interval: an
        # outage must not write a line per request.
        if self._log_throttle is None:
            self._log_throttle = Throttle(self.clock, logger=self.log)
        return self._log_throttle

    @property
    def clock(self) -> IReactorTime:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        """Open the connection pool and start making the indexes.

        Requests wait (within their timeout) until the indexes exist; see
        :meth:`whenReady` and :meth:`status`.
        """
        super().startService()
        quiet_txmongo()
        self._pool = ConnectionPool(self.uri, **self._pool_options)
        self._db = self._pool[self.database_name]
        self._ready = False
        self._startup_error = None
        self._status = STARTING
        self._setup = ensureDeferred(self._set_up(self._db))
        self._setup.addErrback(self._set_up_failed)

    def stopService(self) -> Deferred[None]:
        """Close the connections; fires once they are closed.

        Requests still waiting fail.
        """
        super().stopService()
        pool, self._pool, self._db = self._pool, None, None
        self._status = STOPPED
        self._ready = False
        if self._setup is not None:
            self._setup.cancel()
            self._setup = None
        self._fire_waiters(MongoStorageError("MongoDB storage stopped"))
        if pool is None:
            return succeed(None)
        closed: Deferred[None] = pool.disconnect()
        return closed

    def status(self) -> str:
        """Where the store stands, in words for ``/ready`` and logs.

        ``"ready"``; ``"starting"``; ``"unreachable"`` (start-up cannot reach
        MongoDB and keeps trying, or no connection to it is open right now);
        ``"building indexes"``; ``"stopped"``; or, when start-up failed, the
        :class:`MongoStartupError` line (``"index conflict: ..."``, ...).
        Only ``"ready"`` means requests are being served.
        """
        if self._startup_error is not None:
            return self._startup_error.line
        if self._status == READY and not self._connected():
            return UNREACHABLE
        return self._status

    def _connected(self) -> bool:
        pool = self._pool
        if pool is None:
            return False
        # txmongo sets a connection's `instance` while it is up (and pings it).
        return any(getattr(c, "instance", None) is not None for c in pool.getprotocols())

    def whenReady(self) -> Deferred[None]:
        """Fires once start-up (reaching MongoDB, making the indexes) is done.

        While MongoDB is unreachable start-up keeps trying, so this may take
        a while. It fails with :class:`MongoStartupError` when start-up
        cannot finish (an index conflict, an index build over its budget),
        and with :class:`MongoStorageError` if the store stops first.
        """
        if self._ready:
            return succeed(None)
        if self._startup_error is not None:
            return fail(self._startup_error)

        def forget(d: Deferred[None]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[None] = Deferred(forget)
        self._waiters.append(waiter)
        return waiter

    def _fire_waiters(self, error: Exception | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    async def _set_up(self, db: Database) -> None:
        pending = list(INDEXES)
        problems: list[str] = []
        delay = self._retry_delay
        while pending:
            try:
                # Reachable at all? Bounded like a request, not like a build.
                await self._bounded(db.command("ping"), self.timeout or DEFAULT_TIMEOUT)
                self._status = BUILDING_INDEXES
                while pending:
                    problem = await self._build(db, pending[0])
                    pending.pop(0)
                    if problem is not None:
                        # Logged now, and the other indexes still made: the
                        # unique ones protect the data whatever happens next.
                        self.log.error("{line}", line=problem)
                        problems.append(problem)
            except (ConnectionFailure, TimeExceeded, DeferredTimeoutError) as e:
                # MongoDB is not there (yet, or any more): keep trying, requests keep waiting.
                self._status = UNREACHABLE
                self.log.warn(
                    "MongoDB {db} not reachable ({error}); trying again in {delay}s",
                    db=self._display,
                    error=_describe(e),
                    delay=delay,
                )
                await deferLater(self.clock, delay, lambda: None)
                delay = min(delay * 2, self._max_delay)
        if problems:
            more = f" (and {len(problems) - 1} more index problems: see the log)"
            raise MongoStartupError(problems[0] + (more if len(problems) > 1 else ""))
        self._status = READY
        self._ready = True
        self.log.info("MongoDB storage ready: {db}", db=self._display)
        self._fire_waiters(None)

    async def _build(self, db: Database, spec: IndexSpec) -> str | None:
        """Make one index, within its budget; return the line describing why
        it cannot be made, or None when it exists."""
        try:
            name = await self._bounded(ensureDeferred(ensure_index(db, spec)), self.index_timeout)
        except IndexProblem as e:
            return e.line
        except DeferredTimeoutError:
            return (
                f"index build too slow: {spec.name} on {self.database_name}.{spec.collection} "
                f"was not built within {self.index_timeout:g}s (MongoDB goes on building it); "
                "start again once it is listed by "
                f'db.getSiblingDB("{self.database_name}").{spec.collection}.getIndexes()'
            )
        except OperationFailure as e:
            return (
                f"index error: MongoDB refused {spec.name} on {self.database_name}."
                f"{spec.collection} ({_describe(e)}); fix that and start again"
            )
        if name != spec.name:
            self.log.info(
                "MongoDB index {index} already exists as {name}: using it",
                index=spec.name,
                name=name,
            )
        self.index_names[spec.name] = name
        return None

    def _bounded(self, d: Deferred[T], seconds: float) -> Deferred[T]:
        return d.addTimeout(seconds, self.clock)

    def _set_up_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):  # stopService
            return
        error = failure.value
        if not isinstance(error, MongoStartupError):
            self.log.failure("MongoDB storage set-up failed", failure)
            error = MongoStartupError(f"MongoDB storage set-up failed: {_describe(error)}")
        self._startup_error = error
        self._fire_waiters(error)

    # -- plumbing ---------------------------------------------------------

    def _timed(self, d: Deferred[T]) -> Deferred[T]:
        # One deadline for the whole call: waiting for a connection (txmongo
        # waits forever while reconnecting) and every round trip included.
        if self.timeout is None:
            return d
        return d.addTimeout(self.timeout, self.clock)

    @property
    def database(self) -> Database | None:
        """The txmongo database while running (for queries of your own: see :meth:`run`)."""
        return self._db

    def run(
        self,
        op: Callable[[Database], Awaitable[T]],
        *,
        name: str = "query",
        retry: bool = True,
    ) -> Deferred[T]:
        """Run ``op(database)`` the way this storage runs its own requests.

        That is: after start-up, within ``timeout`` seconds, and with any
        failure turned into a :class:`MongoStorageError` (``storageTimeout``
        or ``storageError``), logged under ``name``; a
        :class:`~chatserver.ChatError`, ``ValueError`` or ``LookupError``
        that ``op`` raises passes unchanged. With ``retry`` (for operations
        safe to repeat) a connection lost mid-request is retried once on the
        next connection, within the same timeout.
        """
        db = self._db
        if db is None:
            return fail(MongoStorageError("MongoDB storage is not running"))

        async def call() -> T:
            try:
                await self.whenReady()
            except MongoStartupError as e:
                raise MongoStorageError(f"MongoDB storage did not start: {e.line}") from e
            try:
                return await op(db)
            except ConnectionFailure as e:
                if not retry or self._db is not db:
                    raise
                # txmongo has already dropped the dead connection, so this
                # waits for the reconnection (or the deadline).
                self._throttle.info(
                    f"retry-{name}",
                    "MongoDB {name}: {error}; retrying once",
                    name=name,
                    error=_describe(e),
                )
                return await op(db)

        d = self._timed(ensureDeferred(call()))
        d.addErrback(self._failed, name)
        return d

    def _failed(self, failure: Failure, name: str) -> Failure:
        error = failure.value
        if isinstance(error, ChatError | CancelledError | ValueError | LookupError):
            # Ours already, the caller cancelled, or the caller's mistake.
            return failure
        code = STORAGE_ERROR
        if _is_timeout(error):
            code = STORAGE_TIMEOUT
            if not self._ready:
                message = f"MongoDB storage not ready ({self.status()})"
            elif isinstance(error, OperationFailure):
                message = "MongoDB ran out of time"
            elif self.timeout is not None:
                message = f"MongoDB did not answer within {self.timeout:g}s"
            else:
                message = "MongoDB did not answer in time"
        elif isinstance(error, ConnectionFailure):
            message = "MongoDB is unavailable"
        else:
            message = "MongoDB request failed"
        if self._ready:
            self._throttle.warn(
                f"failed-{name}",
                "MongoDB {name} failed: {error}",
                name=name,
                error=_describe(error),
            )
        # else start-up is still trying to reach MongoDB, and logs each attempt itself.
        mongo_code = error.code if isinstance(error, OperationFailure) else None
        return Failure(MongoStorageError(message, mongo_code, code))

    # -- IAuthorizer ------------------------------------------------------

    def authorize(self, credentials: dict[str, Any]) -> Deferred[dict[str, Any] | None]:
        """The user whose token is ``credentials["token"]`` (a str or int), or None.

        The user comes back without its ``tokenHash`` (or any ``token``)
        and with ``_id`` as a string.
        """
        token = credentials.get("token") if isinstance(credentials, Mapping) else None
        if isinstance(token, bool) or not isinstance(token, str | int) or token == "":
            return succeed(None)
        token_hash = hash_token(str(token))

        async def op(db: Database) -> dict[str, Any] | None:
            # Never hand back a token: an application may keep a plaintext
            # one beside the hash (node-chat-server's example did).
            user = await db.users.find_one(
                {"tokenHash": token_hash}, projection={"tokenHash": 0, "token": 0}
            )
            return _public(user) if user is not None else None

        return self.run(op, name="authorize")

    # -- IMessageStore ----------------------------------------------------

    def create(self, message: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Store ``message``; fires with it plus its new ``_id``.

        A second message from the same sender with the same
        ``clientMessageId`` is not stored: the first one is returned instead.
        The conversation index of the sender and the recipient (every member,
        for a group) is updated before this fires.
        """
        fields = {k: v for k, v in message.items() if k not in _STORE_OWNED}
        sender = str(message["from"])
        to = str(message["to"])
        is_group = bool(message.get("isGroup"))
        client_id = message.get("clientMessageId")
        client_key = str(client_id) if client_id is not None else None
        # Made here, in call order: ObjectIds from one process increase, so
        # _id orders equal createdAt by insertion.
        message_id = ObjectId()
        key = conversation_key([sender, to], is_group)
        document = {"_id": message_id, **fields, "conversation": key}
        if client_key is not None:
            document["clientKey"] = client_key

        async def op(db: Database) -> dict[str, Any]:
            try:
                await db.messages.insert_one(document)
            except DuplicateKeyError:
                if client_key is None:
                    raise
                existing = await db.messages.find_one(
                    {"from": sender, "clientKey": client_key}, projection=_HIDDEN
                )
                if existing is None:
                    raise
                # The first attempt may have stopped before the index was
                # updated: record it as the last message (counting nothing twice).
                await self._index_message(db, existing, count_unread=False)
                return _public(existing)
            await self._index_message(db, document, count_unread=True)
            return {"_id": str(message_id), **fields}

        # Only a message with a clientMessageId is safe to send again: the
        # unique index turns a repeat into "return the stored one".
        return self.run(op, name="create", retry=client_key is not None)

    async def _index_message(
        self, db: Database, message: Mapping[str, Any], count_unread: bool
    ) -> None:
        """Record ``message`` in the conversation index of everyone in it."""
        sender, to = str(message["from"]), str(message["to"])
        is_group = bool(message.get("isGroup"))
        key = conversation_key([sender, to], is_group)
        at, oid = message.get("createdAt"), message["_id"]
        if is_group:
            group = await db.groups.find_one({"_id": _id_filter(to)}, projection={"users": 1})
            members = [str(m) for m in (group or {}).get("users", [])]
            people = dict.fromkeys([*members, sender])
            writes = [
                _touch_conversation(
                    member, to, True, key, at, oid, int(count_unread and member != sender)
                )
                for member in people
            ]
        else:
            writes = [_touch_conversation(sender, to, False, key, at, oid, 0)]
            if to != sender:
                writes.append(
                    _touch_conversation(to, sender, False, key, at, oid, int(count_unread))
                )
        await db.conversations.bulk_write(writes, ordered=False)

    def getMessages(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """One conversation's messages, newest first, after ``skip``, at most ``limit``.

        With ``before`` (a message id of this conversation) the page holds the
        messages before it, newest first; with ``after``, the messages after
        it, oldest first. A cursor that names no message of this conversation
        fails with ``ChatError("notFound")``.
        """
        me, other = (str(i) for i in query["ids"])
        skip = int(query.get("skip", 0))
        limit = int(query.get("limit", 10))
        key = conversation_key([me, other], bool(query.get("isGroup")))
        before, after = query.get("before"), query.get("after")
        cursor = before if before is not None else after
        if limit <= 0 and cursor is None:
            # MongoDB reads limit 0 as "no limit".
            return succeed([])

        async def op(db: Database) -> list[dict[str, Any]]:
            if cursor is None:
                docs = await db.messages.find(
                    {"conversation": key},
                    projection=_HIDDEN,
                    skip=skip,
                    limit=limit,
                    sort=_NEWEST_FIRST,
                )
                return [_public(doc) for doc in docs]
            oid = _message_oid(cursor)
            anchor = None
            if oid is not None:
                anchor = await db.messages.find_one(
                    {"_id": oid, "conversation": key}, projection={"createdAt": 1}
                )
            if anchor is None:
                raise ChatError(NOT_FOUND, "no such message in this conversation")
            if limit <= 0:
                return []
            docs = await page_beyond(
                db.messages,
                {"conversation": key},
                ("createdAt", anchor.get("createdAt")),
                ("_id", oid),
                newer=after is not None,
                count=skip + limit,
                projection=_HIDDEN,
            )
            return [_public(doc) for doc in docs[skip:]]

        return self.run(op, name="getMessages")

    def read(self, messageId: str, userId: str) -> Deferred[dict[str, Any] | None]:
        """Mark a message read by ``userId``; fires with it, or None.

        None when the id is malformed or unknown, or ``userId`` is not a
        recipient: the ``to`` of a direct message, or a member (other than
        the sender) of the group a group message went to. The condition is
        part of the atomic update, so the check and the write cannot race.
        The first read by a user lowers their unread count once.
        """
        oid = _message_oid(messageId)
        if oid is None:
            return succeed(None)
        reader = str(userId)

        async def op(db: Database) -> dict[str, Any] | None:
            # Direct messages first: the common case costs one round trip.
            direct = {"_id": oid, "isGroup": {"$ne": True}, "to": reader, "from": {"$ne": reader}}
            updated = await db.messages.find_one_and_update(
                {**direct, "read": {"$ne": True}},
                {"$set": {"read": True}},
                projection={"clientKey": 0},
                return_document=ReturnDocument.AFTER,
            )
            if updated is not None:
                await self._count_read(db, reader, updated, group=False)
                return _public(updated)
            already = await db.messages.find_one(direct, projection=_HIDDEN)
            if already is not None:
                return _public(already)
            group_message = await db.messages.find_one(
                {"_id": oid, "isGroup": True, "from": {"$ne": reader}}, projection={"to": 1}
            )
            if group_message is None:
                return None
            member = await db.groups.find_one(
                {"_id": _id_filter(group_message["to"]), "users": reader}, projection={"_id": 1}
            )
            if member is None:
                return None
            group = {"_id": oid, "isGroup": True, "from": {"$ne": reader}}
            updated = await db.messages.find_one_and_update(
                {**group, "readBy": {"$ne": reader}},
                {"$addToSet": {"readBy": reader}},
                projection={"clientKey": 0},
                return_document=ReturnDocument.AFTER,
            )
            if updated is not None:
                await self._count_read(db, reader, updated, group=True)
                return _public(updated)
            already = await db.messages.find_one(group, projection=_HIDDEN)
            return _public(already) if already is not None else None

        return self.run(op, name="read")

    async def _count_read(
        self, db: Database, reader: str, message: dict[str, Any], group: bool
    ) -> None:
        key = message.pop("conversation", None) or conversation_key(
            [str(message.get("from")), str(message.get("to"))], group
        )
        entry: dict[str, Any] = {
            "_id": conversation_entry_id(reader, key),
            "unread": {"$gt": 0},
        }
        if group:
            # Sent before the reader joined the group: it was never counted.
            entry["since"] = {"$lte": message["_id"]}
        await db.conversations.update_one(entry, {"$inc": {"unread": -1}})

    # -- IGroupDirectory --------------------------------------------------

    def getGroupUserIds(self, data: dict[str, Any]) -> Deferred[list[str]]:
        """The member ids of group ``data["groupId"]``; [] for an unknown group."""
        group_id = data.get("groupId") if isinstance(data, Mapping) else None
        if group_id is None:
            return succeed([])

        async def op(db: Database) -> list[str]:
            group = await db.groups.find_one({"_id": _id_filter(group_id)}, projection={"users": 1})
            return [str(u) for u in group.get("users", [])] if group else []

        return self.run(op, name="getGroupUserIds")

    # -- IUserDirectory ---------------------------------------------------

    def listContacts(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """Users who share a group or a direct conversation with
        ``query["userId"]``, by id, after ``query["after"]``, at most ``limit``.

        Direct partners come from the conversation index (a range of
        ``conversations_by_partner``); fellow members from the user's groups
        (``member_groups``), whose member lists MongoDB unwinds and pages
        itself, so at most a page crosses the network.
        """
        me = str(query["userId"])
        limit = _page_limit(query)
        bound = _page_after(query)
        if limit == 0:
            return succeed([])

        async def op(db: Database) -> list[dict[str, Any]]:
            # One more than a page: the user's conversation with themselves
            # is dropped here (a $ne would keep some planners off the index).
            partners = await db.conversations.find(
                {"user": me, "isGroup": False, "with": bound},
                projection={"with": 1, "_id": 0},
                sort=_BY_PARTNER,
                limit=limit + 1,
            )
            members = await db.groups.aggregate(
                [
                    {"$match": {"users": me}},
                    {"$project": {"_id": 0, "users": 1}},
                    {"$unwind": "$users"},
                    {"$match": {"users": {**bound, "$ne": me}}},
                    {"$group": {"_id": "$users"}},
                    {"$sort": {"_id": 1}},
                    {"$limit": limit},
                ]
            )
            found = {p["with"] for p in partners} | {m["_id"] for m in members}
            ids = sorted(found - {me})[:limit]
            known = await self._users_by_id(db, ids)
            return [known.get(i, {"id": i, "name": i}) for i in ids]

        return self.run(op, name="listContacts")

    def listGroups(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """The groups ``query["userId"]`` is in, by id, after ``query["after"]``."""
        me = str(query["userId"])
        limit = _page_limit(query)
        if limit == 0:
            return succeed([])

        async def op(db: Database) -> list[dict[str, Any]]:
            groups = await db.groups.find(
                {"users": me, "_id": _page_after(query)},
                projection={"name": 1},
                sort=_BY_ID,
                limit=limit,
            )
            return [_person(g) for g in groups]

        return self.run(op, name="listGroups")

    def listUsers(self, query: dict[str, Any]) -> Deferred[list[dict[str, Any]]]:
        """Every user, by id, after ``query["after"]``, at most ``limit``."""
        limit = _page_limit(query)
        if limit == 0:
            return succeed([])

        async def op(db: Database) -> list[dict[str, Any]]:
            users = await db.users.find(
                {"_id": _page_after(query)}, projection={"name": 1}, sort=_BY_ID, limit=limit
            )
            return [_person(u) for u in users]

        return self.run(op, name="listUsers")

    def getUsers(self, userIds: list[Any]) -> Deferred[dict[str, dict[str, Any]]]:
        """``{id: {"id", "name"}}`` for the known users among ``userIds``."""
        ids = list(dict.fromkeys(str(i) for i in userIds))[:MAX_PAGE]
        if not ids:
            return succeed({})

        async def op(db: Database) -> dict[str, dict[str, Any]]:
            return await self._users_by_id(db, ids)

        return self.run(op, name="getUsers")

    async def _users_by_id(self, db: Database, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        candidates = [c for i in ids for c in _id_candidates(i)]
        users = await db.users.find({"_id": {"$in": candidates}}, projection={"name": 1})
        return {person["id"]: person for person in map(_person, users)}

    # -- IConversationStore ----------------------------------------------

    def getConversations(self, query: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """``query["userId"]``'s conversations, latest message first, a page
        of ``limit`` after the cursor ``before``; see
        :class:`~chatserver.interfaces.IConversationStore`."""
        me = str(query["userId"])
        limit = _page_limit(query)
        before = query.get("before")
        try:
            position = _decode_cursor(before) if before is not None else None
        except ChatError as e:
            return fail(e)
        if limit == 0:
            return succeed({"conversations": [], "next": None})

        async def op(db: Database) -> dict[str, Any]:
            selector: dict[str, Any] = {"user": me}
            if position is not None:
                selector["last"] = {"$lt": position}
            entries = await db.conversations.find(
                selector, sort=_LATEST_CONVERSATION_FIRST, limit=limit + 1
            )
            more = len(entries) > limit
            entries = entries[:limit]
            lasts = await db.messages.find(
                {"_id": {"$in": [_message_of(e["last"]) for e in entries]}}, projection=_HIDDEN
            )
            by_id = {m["_id"]: _public(m) for m in lasts}
            page = [
                {
                    "with": e["with"],
                    "isGroup": bool(e.get("isGroup")),
                    "last": by_id[_message_of(e["last"])],
                    "unread": max(0, int(e.get("unread", 0))),
                }
                for e in entries
                if _message_of(e["last"]) in by_id
            ]
            following = _encode_cursor(entries[-1]["last"]) if more else None
            return {"conversations": page, "next": following}

        return self.run(op, name="getConversations")

    # -- ISessionRevocations ----------------------------------------------

    def revocationsAfter(self, cursor: object) -> Deferred[tuple[list[str], object]]:
        """The users revoked since ``cursor``, and the cursor for next time.

        The cursor is ``[t, ids]``: the MongoDB time (ms) of the newest
        revocation seen, and the revocations seen within the look-back
        window before it, so that each is returned once.
        """
        try:
            since, seen = self._parse_revocation_cursor(cursor)
        except ValueError as e:
            return fail(e)

        async def op(db: Database) -> tuple[list[str], object]:
            if cursor is None:
                newest = await db.revocations.find(
                    {}, projection={"at": 1}, sort=qf.sort(qf.DESCENDING("at")), limit=1
                )
                start = _millis(newest[0]["at"]) if newest else 0
                window = await self._revocations_since(db, start - REVOCATION_OVERLAP_MS)
                return [], [start, [str(r["_id"]) for r in window]]
            docs = await self._revocations_since(db, since - REVOCATION_OVERLAP_MS)
            fresh = [r for r in docs if str(r["_id"]) not in seen]
            newest_ms = max([since, *(_millis(r["at"]) for r in docs)])
            keep = [
                str(r["_id"]) for r in docs if _millis(r["at"]) > newest_ms - REVOCATION_OVERLAP_MS
            ]
            return [str(r["user"]) for r in fresh], [newest_ms, keep]

        return self.run(op, name="revocationsAfter")

    @staticmethod
    def _parse_revocation_cursor(cursor: object) -> tuple[int, set[str]]:
        if cursor is None:
            return 0, set()
        if (
            isinstance(cursor, list | tuple)
            and len(cursor) == 2
            and isinstance(cursor[0], int)
            and isinstance(cursor[1], list | tuple)
        ):
            return cursor[0], {str(i) for i in cursor[1]}
        raise ValueError(f"not a revocations cursor of this store: {cursor!r}")

    async def _revocations_since(self, db: Database, millis: int) -> list[dict[str, Any]]:
        moment = datetime.fromtimestamp(max(millis, 0) / 1000, UTC)
        revocations: list[dict[str, Any]] = await db.revocations.find(
            {"at": {"$gt": moment}}, sort=_BY_TIME, limit=REVOCATIONS_PER_POLL
        )
        return revocations

    async def _revoke(self, db: Database, user_id: str) -> None:
        # The time is MongoDB's, so that every node compares the same clock.
        await db.revocations.update_one(
            {"_id": ObjectId()},
            {"$set": {"user": user_id}, "$currentDate": {"at": True}},
            upsert=True,
        )

    # -- IAccountStore ----------------------------------------------------

    def add_user(
        self, user_id: str, name: str | None = None, token: str | None = None
    ) -> Deferred[str]:
        """Create user ``user_id``, who signs in with ``token`` (random if
        None); only its hash is stored. Fires with the token; fails with
        ``ValueError`` if the user exists or another user has that token."""
        try:
            _check_ids(user_id=user_id)
            if name is not None:
                _check_ids(name=name)
            token = secrets.token_urlsafe(32) if token is None else str(token)
            if not token:
                raise ValueError("a token must not be empty")
        except ValueError as e:
            return fail(e)
        document: dict[str, Any] = {"_id": user_id, "tokenHash": hash_token(token)}
        if name is not None:
            document["name"] = name

        async def op(db: Database) -> str:
            try:
                await db.users.insert_one(document)
            except DuplicateKeyError as e:
                if _duplicate_index(e) == "token_hash":
                    raise ValueError("that token belongs to another user") from e
                raise ValueError(f"user {user_id!r} exists") from e
            return token

        return self.run(op, name="add_user", retry=False)

    def set_token(self, user_id: str, token: str | None = None) -> Deferred[str]:
        """Give ``user_id`` a new token (random if None) and end their live
        sessions. Fails with ``LookupError`` for an unknown user and
        ``ValueError`` if another user has that token."""
        try:
            _check_ids(user_id=user_id)
            token = secrets.token_urlsafe(32) if token is None else str(token)
            if not token:
                raise ValueError("a token must not be empty")
        except ValueError as e:
            return fail(e)
        token_hash = hash_token(token)

        async def op(db: Database) -> str:
            try:
                result = await db.users.update_one(
                    {"_id": _id_filter(user_id)}, {"$set": {"tokenHash": token_hash}}
                )
            except DuplicateKeyError as e:
                raise ValueError("that token belongs to another user") from e
            if result.matched_count == 0:
                raise LookupError(f"no user {user_id!r}")
            await self._revoke(db, user_id)
            return token

        return self.run(op, name="set_token")

    def get_user(self, user_id: str) -> Deferred[dict[str, Any] | None]:
        """``{"id", "name"}`` of ``user_id``, or None."""
        if not isinstance(user_id, str) or not user_id:
            return fail(ValueError("user_id must be a non-empty string"))

        async def op(db: Database) -> dict[str, Any] | None:
            user = await db.users.find_one({"_id": _id_filter(user_id)}, projection={"name": 1})
            return {**_person(user), "id": user_id} if user is not None else None

        return self.run(op, name="get_user")

    def remove_user(self, user_id: str) -> Deferred[bool]:
        """Delete ``user_id`` (their token, memberships and conversation
        index; their messages stay) and end their live sessions. Fires with
        whether they existed."""
        if not isinstance(user_id, str) or not user_id:
            return fail(ValueError("user_id must be a non-empty string"))

        async def op(db: Database) -> bool:
            result: DeleteResult = await db.users.delete_one({"_id": _id_filter(user_id)})
            await db.groups.update_many({"users": user_id}, {"$pull": {"users": user_id}})
            await db.conversations.delete_many({"user": user_id})
            await self._revoke(db, user_id)
            return result.deleted_count > 0

        return self.run(op, name="remove_user")

    def revoke_sessions(self, user_id: str) -> Deferred[None]:
        """End ``user_id``'s live sessions on every node (they may sign in again)."""
        if not isinstance(user_id, str) or not user_id:
            return fail(ValueError("user_id must be a non-empty string"))

        async def op(db: Database) -> None:
            await self._revoke(db, user_id)

        return self.run(op, name="revoke_sessions", retry=False)

    def list_all_users(
        self, after: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        """A page of users as ``{"id", "name"}``, by id, after ``after``."""
        return self.listUsers({"after": after, "limit": limit})

    def add_group(
        self, group_id: str, member_ids: Iterable[str], name: str | None = None
    ) -> Deferred[None]:
        """Create group ``group_id`` with these members (in order, duplicates
        dropped), or replace an existing group's members (and name, if given)."""
        try:
            _check_ids(group_id=group_id)
            members = list(dict.fromkeys(member_ids))
            for member in members:
                _check_ids(member_id=member)
            if name is not None:
                _check_ids(name=name)
        except ValueError as e:
            return fail(e)
        fields: dict[str, Any] = {"users": members}
        if name is not None:
            fields["name"] = name

        async def op(db: Database) -> None:
            result = await db.groups.update_one({"_id": _id_filter(group_id)}, {"$set": fields})
            if result.matched_count == 0:
                # Not with the filter above: an upsert cannot take its _id from an $in.
                await db.groups.update_one({"_id": group_id}, {"$set": fields}, upsert=True)

        return self.run(op, name="add_group")

    def get_group(self, group_id: str) -> Deferred[dict[str, Any] | None]:
        """``{"id", "name", "members"}`` of ``group_id``, or None."""
        if not isinstance(group_id, str) or not group_id:
            return fail(ValueError("group_id must be a non-empty string"))

        async def op(db: Database) -> dict[str, Any] | None:
            group = await db.groups.find_one({"_id": _id_filter(group_id)})
            if group is None:
                return None
            members = [str(m) for m in group.get("users", [])]
            return {**_person(group), "id": group_id, "members": members}

        return self.run(op, name="get_group")

    def remove_group(self, group_id: str) -> Deferred[bool]:
        """Delete ``group_id`` and its memberships (its messages stay); fires
        with whether it existed."""
        if not isinstance(group_id, str) or not group_id:
            return fail(ValueError("group_id must be a non-empty string"))

        async def op(db: Database) -> bool:
            result: DeleteResult = await db.groups.delete_one({"_id": _id_filter(group_id)})
            return result.deleted_count > 0

        return self.run(op, name="remove_group")

    def add_member(self, group_id: str, user_id: str) -> Deferred[bool]:
        """Add ``user_id`` to ``group_id``; fires with whether they were added
        (False: a member already); fails with ``LookupError`` for an unknown
        group."""
        try:
            _check_ids(group_id=group_id, user_id=user_id)
        except ValueError as e:
            return fail(e)

        async def op(db: Database) -> bool:
            result = await db.groups.update_one(
                {"_id": _id_filter(group_id), "users": {"$ne": user_id}},
                {"$push": {"users": user_id}},
            )
            if result.modified_count:
                return True
            if await db.groups.find_one({"_id": _id_filter(group_id)}, projection={"_id": 1}):
                return False
            raise LookupError(f"no group {group_id!r}")

        return self.run(op, name="add_member", retry=False)

    def remove_member(self, group_id: str, user_id: str) -> Deferred[bool]:
        """Remove ``user_id`` from ``group_id``; fires with whether they were a member."""
        try:
            _check_ids(group_id=group_id, user_id=user_id)
        except ValueError as e:
            return fail(e)

        async def op(db: Database) -> bool:
            result: UpdateResult = await db.groups.update_one(
                {"_id": _id_filter(group_id), "users": user_id}, {"$pull": {"users": user_id}}
            )
            return result.modified_count > 0

        return self.run(op, name="remove_member", retry=False)

    def list_all_groups(
        self, after: str | None = None, limit: int = 100
    ) -> Deferred[list[dict[str, Any]]]:
        """A page of groups as ``{"id", "name", "members"}``, by id, after ``after``."""
        page = max(0, min(int(limit), MAX_PAGE))
        if page == 0:
            return succeed([])

        async def op(db: Database) -> list[dict[str, Any]]:
            groups = await db.groups.find(
                {"_id": {"$gt": "" if after is None else str(after)}}, sort=_BY_ID, limit=page
            )
            return [{**_person(g), "members": [str(m) for m in g.get("users", [])]} for g in groups]

        return self.run(op, name="list_all_groups")


def _millis(moment: datetime) -> int:
    """Milliseconds since the epoch of a BSON date (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
