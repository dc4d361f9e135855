"""A MongoDB :class:`IChatStorage`, talking to the server through txmongo.

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

The storage is a Twisted service: :meth:`MongoStorage.startService` opens the
connection pool and creates the indexes, :meth:`MongoStorage.stopService`
closes it. ``chatserver`` starts it for you when it is given the storage (a
storage that provides ``IService`` becomes a child service); elsewhere call
``startService()`` yourself.

Every call fails its Deferred with a :class:`chatserver.ChatError` (code
``storageError``) when MongoDB errs, is unreachable, or does not answer in
``timeout`` seconds; txmongo keeps reconnecting in the background, so later
calls work again once MongoDB is back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError
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

from chatserver.errors import STORAGE_ERROR, ChatError
from chatserver.interfaces import IChatStorage, IUserDirectory

T = TypeVar("T")

DEFAULT_DATABASE = "chatserver"

# Store-managed message fields. A client cannot set them: they are replaced
# (``_id``, ``conversation``, ``clientKey``) or only ever written by read().
_STORE_OWNED = frozenset({"_id", "conversation", "clientKey", "read", "readBy"})

# Internal fields are left out of every document handed back to the server.
_HIDDEN: dict[str, int] = {"conversation": 0, "clientKey": 0}

_NEWEST_FIRST = qf.sort(qf.DESCENDING("createdAt") + qf.DESCENDING("_id"))
_BY_ID = qf.sort(qf.ASCENDING("_id"))

# Index specifications, created (idempotently) at start-up, per collection.
INDEXES: dict[str, list[dict[str, Any]]] = {
    "messages": [
        # One conversation's history, newest first: serves direct and group
        # histories alike, as both are looked up by their conversation key.
        {"key": {"conversation": 1, "createdAt": -1, "_id": -1}, "name": "conversation_history"},
        # Idempotent create: one message per (sender, clientMessageId).
        {
            "key": {"from": 1, "clientKey": 1},
            "name": "client_message_id",
            "unique": True,
            "partialFilterExpression": {"clientKey": {"$exists": True}},
        },
    ],
    "users": [
        {
            "key": {"tokenHash": 1},
            "name": "token_hash",
            "unique": True,
            # Users the application created without a token must not collide.
            "partialFilterExpression": {"tokenHash": {"$exists": True}},
        },
    ],
    "groups": [
        # "Which groups is this user in?" (see examples/mongo_example.py).
        {"key": {"users": 1}, "name": "members"},
    ],
}


class MongoStorageError(ChatError):
    """A MongoDB request failed; the client hears ``storageError``.

    ``mongo_code`` is MongoDB's numeric error code when the server sent one.
    """

    def __init__(self, message: str, mongo_code: int | None = None) -> None:
        super().__init__(STORAGE_ERROR, message)
        self.mongo_code = mongo_code


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


def _public(doc: dict) -> dict:
    """A stored document as handed to the server: ``_id`` as a string."""
    return {**doc, "_id": str(doc["_id"])}


def _describe(error: BaseException) -> str:
    """Class and code of an error, for logs (no payload: it may hold user data)."""
    if isinstance(error, OperationFailure):
        code_name = (error.details or {}).get("codeName")
        return f"{type(error).__name__} code={error.code} {code_name or ''}".rstrip()
    return type(error).__name__


def _database_name(parsed: Mapping[str, Any]) -> str:
    return parsed.get("database") or DEFAULT_DATABASE


@implementer(IChatStorage, IUserDirectory)
class MongoStorage(Service):
    """Users, groups and messages in MongoDB.

    Construction only parses ``uri``; :meth:`startService` connects.
    """

    log = Logger()

    def __init__(
        self,
        uri: str,
        reactor: IReactorTime | None = None,
        *,
        timeout: float | None = None,
        pool_size: int = 2,
        retry_delay: float = 1.0,
        max_delay: float = 5.0,
        ping_interval: float = 10.0,
    ) -> None:
        """
        @param uri: ``mongodb://[user:pass@]host[:port][,host...]/[database][?options]``;
            the database defaults to C{"chatserver"}. The URI option
            ``timeoutMS`` sets ``timeout`` when that is not given.
        @param reactor: the clock for timeouts and retries (txmongo itself
            always uses the global reactor).
        @param timeout: seconds one storage call may take, waiting for a
            connection included, before it fails (default 5).
        @param pool_size: connections to keep open.
        @param retry_delay: first delay before reconnecting (it grows up to
            ``max_delay``); also the connect and handshake timeout.
        @param max_delay: longest delay between reconnection attempts, so
            requests work again at most this long after MongoDB is back.
        @param ping_interval: how often txmongo checks that a connection still
            answers, and drops it when it does not.
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
        self.timeout = float(timeout if timeout is not None else options.get("timeoutms") or 5.0)
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
        self._waiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        # The URI may carry a password: show only hosts and database.
        return f"MongoStorage({self._display!r})"

    @property
    def clock(self) -> IReactorTime:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor  # type: ignore[assignment]
        return self._reactor  # type: ignore[return-value]

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        """Open the connection pool and start creating the indexes.

        Requests wait (within their timeout) until the indexes exist; see
        :meth:`whenReady`.
        """
        super().startService()
        self._pool = ConnectionPool(self.uri, **self._pool_options)
        self._db = self._pool[self.database_name]
        self._ready = False
        self._setup = ensureDeferred(self._set_up(self._db))
        self._setup.addErrback(self._set_up_failed)

    def stopService(self) -> Deferred[None]:
        """Close the connections; fires once they are closed.

        Requests still waiting fail.
        """
        super().stopService()
        pool, self._pool, self._db = self._pool, None, None
        if self._setup is not None:
            self._setup.cancel()
            self._setup = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(MongoStorageError("MongoDB storage stopped"))
        if pool is None:
            return succeed(None)
        return pool.disconnect()

    def whenReady(self) -> Deferred[None]:
        """Fires once start-up (creating the indexes) has finished.

        If MongoDB is unreachable at start the indexes are retried until it
        answers, so this may take a while; it never fails while running.
        """
        if self._ready:
            return succeed(None)

        def forget(d: Deferred[None]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[None] = Deferred(forget)
        self._waiters.append(waiter)
        return waiter

    async def _set_up(self, db: Database) -> None:
        delay = self._retry_delay
        while True:
            try:
                await self._timed(ensureDeferred(self._create_indexes(db)))
            except (ConnectionFailure, TimeExceeded, DeferredTimeoutError) as e:
                # MongoDB is not there yet: keep trying, requests keep waiting.
                self.log.warn(
                    "MongoDB {db} not reachable ({error}); creating indexes again in {delay}s",
                    db=self._display,
                    error=_describe(e),
                    delay=delay,
                )
                await deferLater(self.clock, delay, lambda: None)
                delay = min(delay * 2, self._max_delay)
                continue
            except PyMongoError as e:
                # E.g. a conflicting index of the same name, or no permission:
                # an operator must look, but chat keeps working without them.
                self.log.error(
                    "Could not create MongoDB indexes ({error}); continuing without them",
                    error=_describe(e),
                )
            else:
                self.log.info("MongoDB storage ready: {db}", db=self._display)
            break
        self._ready = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _set_up_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # cancelled: stopService
            self.log.failure("MongoDB storage set-up failed", failure)

    async def _create_indexes(self, db: Database) -> None:
        for collection, indexes in INDEXES.items():
            await db.command({"createIndexes": collection, "indexes": indexes})

    # -- plumbing ---------------------------------------------------------

    def _timed(self, d: Deferred[T]) -> Deferred[T]:
        # One deadline for the whole call: waiting for a connection (txmongo
        # waits forever while reconnecting) and every round trip included.
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
        failure turned into a :class:`MongoStorageError` (``storageError``),
        logged under ``name``. With ``retry`` (for operations safe to
        repeat) a connection lost mid-request is retried once on the next
        connection, within the same timeout.
        """
        db = self._db
        if db is None:
            return fail(MongoStorageError("MongoDB storage is not running"))

        async def call() -> T:
            await self.whenReady()
            try:
                return await op(db)
            except ConnectionFailure as e:
                if not retry or self._db is not db:
                    raise
                # txmongo has already dropped the dead connection, so this
                # waits for the reconnection (or the deadline).
                self.log.info(
                    "MongoDB {name}: {error}; retrying once", name=name, error=_describe(e)
                )
                return await op(db)

        d = self._timed(ensureDeferred(call()))
        d.addErrback(self._failed, name)
        return d

    def _failed(self, failure: Failure, name: str) -> Failure:
        error = failure.value
        if isinstance(error, ChatError | CancelledError):
            # Ours already, or the caller cancelled: nothing to translate.
            return failure
        if isinstance(error, ConnectionFailure):
            message = "MongoDB is unavailable"
        elif isinstance(error, TimeExceeded | DeferredTimeoutError):
            message = f"MongoDB did not answer within {self.timeout:g}s"
        else:
            message = "MongoDB request failed"
        self.log.warn("MongoDB {name} failed: {error}", name=name, error=_describe(error))
        code = error.code if isinstance(error, OperationFailure) else None
        return Failure(MongoStorageError(message, code))

    # -- IChatStorage -----------------------------------------------------

    def authorize(self, credentials: dict) -> Deferred[dict | None]:
        """The user whose token is ``credentials["token"]`` (a str or int), or None.

        The user comes back without its ``tokenHash`` and with ``_id`` as a
        string.
        """
        token = credentials.get("token") if isinstance(credentials, Mapping) else None
        if isinstance(token, bool) or not isinstance(token, str | int) or token == "":
            return succeed(None)
        token_hash = hash_token(str(token))

        async def op(db: Database) -> dict | None:
            user = await db.users.find_one({"tokenHash": token_hash}, projection={"tokenHash": 0})
            return _public(user) if user is not None else None

        return self.run(op, name="authorize")

    def create(self, message: dict) -> Deferred[dict]:
        """Store ``message``; fires with it plus its new ``_id``.

        A second message from the same sender with the same
        ``clientMessageId`` is not stored: the first one is returned instead.
        """
        fields = {k: v for k, v in message.items() if k not in _STORE_OWNED}
        sender = str(message["from"])
        client_id = message.get("clientMessageId")
        client_key = str(client_id) if client_id is not None else None
        message_id = ObjectId()
        document = {
            "_id": message_id,
            **fields,
            "conversation": conversation_key(
                [sender, str(message["to"])], bool(message.get("isGroup"))
            ),
        }
        if client_key is not None:
            document["clientKey"] = client_key

        async def op(db: Database) -> dict:
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
                return _public(existing)
            return {"_id": str(message_id), **fields}

        # Only a message with a clientMessageId is safe to send again: the
        # unique index turns a repeat into "return the stored one".
        return self.run(op, name="create", retry=client_key is not None)

    def getMessages(self, query: dict) -> Deferred[list[dict]]:
        """One conversation's messages, newest first, after ``skip``, at most ``limit``."""
        me, other = (str(i) for i in query["ids"])
        skip = int(query.get("skip", 0))
        limit = int(query.get("limit", 10))
        if limit <= 0:
            # MongoDB reads limit 0 as "no limit".
            return succeed([])
        key = conversation_key([me, other], bool(query.get("isGroup")))

        async def op(db: Database) -> list[dict]:
            docs = await db.messages.find(
                {"conversation": key},
                projection=_HIDDEN,
                skip=skip,
                limit=limit,
                sort=_NEWEST_FIRST,
            )
            return [_public(doc) for doc in docs]

        return self.run(op, name="getMessages")

    def read(self, messageId: str, userId: str) -> Deferred[dict | None]:
        """Mark a message read by ``userId``; fires with it, or None.

        None when the id is malformed or unknown, or ``userId`` is not a
        recipient: the ``to`` of a direct message, or a member (other than
        the sender) of the group a group message went to. The condition is
        part of the atomic update, so the check and the write cannot race.
        """
        if not isinstance(messageId, str):
            return succeed(None)
        try:
            oid = ObjectId(messageId)
        except (InvalidId, TypeError):
            return succeed(None)
        reader = str(userId)

        async def op(db: Database) -> dict | None:
            # Direct messages first: the common case costs one round trip.
            updated = await db.messages.find_one_and_update(
                {"_id": oid, "isGroup": {"$ne": True}, "to": reader, "from": {"$ne": reader}},
                {"$set": {"read": True}},
                projection=_HIDDEN,
                return_document=ReturnDocument.AFTER,
            )
            if updated is not None:
                return _public(updated)
            group_message = await db.messages.find_one(
                {"_id": oid, "isGroup": True, "from": {"$ne": reader}}, projection={"to": 1}
            )
            if group_message is None:
                return None
            member = await db.groups.find_one(
                {"_id": group_message["to"], "users": reader}, projection={"_id": 1}
            )
            if member is None:
                return None
            updated = await db.messages.find_one_and_update(
                {"_id": oid, "isGroup": True, "from": {"$ne": reader}},
                {"$addToSet": {"readBy": reader}},
                projection=_HIDDEN,
                return_document=ReturnDocument.AFTER,
            )
            return _public(updated) if updated is not None else None

        return self.run(op, name="read")

    def getGroupUserIds(self, data: dict) -> Deferred[list[str]]:
        """The member ids of group ``data["groupId"]``; [] for an unknown group."""
        group_id = data.get("groupId") if isinstance(data, Mapping) else None
        if group_id is None:
            return succeed([])

        async def op(db: Database) -> list[str]:
            group = await db.groups.find_one({"_id": str(group_id)}, projection={"users": 1})
            return [str(u) for u in group.get("users", [])] if group else []

        return self.run(op, name="getGroupUserIds")

    # -- provisioning -----------------------------------------------------

    def add_user(
        self, user_id: str, name: str | None = None, token: str | None = None
    ) -> Deferred[str]:
        """Create or update user ``user_id``; fires with its (new) token.

        A random token is made unless ``token`` is given; either way only its
        hash is stored, and it replaces the user's previous token. Fails if
        another user already has that token.
        """
        if token is None:
            token = secrets.token_urlsafe(32)
        token = str(token)
        if not token:
            raise ValueError("a token must not be empty")
        fields: dict[str, Any] = {"tokenHash": hash_token(token)}
        if name is not None:
            fields["name"] = name

        async def op(db: Database) -> str:
            await db.users.update_one({"_id": str(user_id)}, {"$set": fields}, upsert=True)
            return token

        return self.run(op, name="add_user")

    def list_users(self) -> Deferred[list[dict]]:
        """Fire with every user as ``{"id", "name"}``, by id."""

        async def op(db: Database) -> list[dict]:
            users = await db.users.find({}, projection={"name": 1}, sort=_BY_ID)
            return [{"id": str(u["_id"]), "name": u.get("name", str(u["_id"]))} for u in users]

        return self.run(op, name="list_users")

    def list_groups(self) -> Deferred[list[dict]]:
        """Fire with every group as ``{"id", "members"}``, by id."""

        async def op(db: Database) -> list[dict]:
            groups = await db.groups.find({}, sort=_BY_ID)
            return [
                {"id": str(g["_id"]), "members": [str(m) for m in g.get("users", [])]}
                for g in groups
            ]

        return self.run(op, name="list_groups")

    def add_group(
        self, group_id: str, member_ids: Iterable[str], name: str | None = None
    ) -> Deferred[None]:
        """Create (or replace) group ``group_id`` with these members."""
        group: dict[str, Any] = {"users": [str(m) for m in member_ids]}
        if name is not None:
            group["name"] = name

        async def op(db: Database) -> None:
            await db.groups.replace_one({"_id": str(group_id)}, group, upsert=True)

        return self.run(op, name="add_group")
