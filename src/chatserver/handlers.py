"""What each action does: the one place that decides.

The handler knows nothing of frames or sockets. It is given a connection (for
its ``user`` and ``user_id``) and the request's ``data``, talks to storage, asks
the delivery function to push frames, and returns the reply's ``data`` or fails
with a :class:`ChatError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any, Protocol

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver import errors
from chatserver._version import __version__
from chatserver.errors import ChatError, ConnectionRefused
from chatserver.events import SOCKET_AUTHORIZED, EventEmitter
from chatserver.interfaces import IChatStorage
from chatserver.metrics import ServerStats
from chatserver.registry import ConnectionRegistry
from chatserver.wire import Timestamps, push

# Fields only the server (or the store) may set on a message.
RESERVED_FIELDS = ("_id", "id", "from", "createdAt", "read", "readBy")
MAX_ID_LENGTH = 256

Action = Callable[[Any, Any], object]
Deliver = Callable[[bytes, Iterable[str]], object]


class Connection(Protocol):
    """What the handler needs of a connection."""

    user: dict | None
    user_id: str | None
    closed: bool

    def authorized(self) -> None:
        """Called once the connection has a user."""


def _as_id(value: object) -> str | None:
    """A user, group or message id as the wire may carry it, or None if invalid."""
    if isinstance(value, str):
        return value if 0 < len(value) <= MAX_ID_LENGTH else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _count(query: Mapping, name: str, default: int) -> int:
    value = query.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChatError(errors.INVALID_QUERY, f"{name} must be a non-negative integer")
    return value


class ChatHandler:
    """Runs the built-in actions (``authorize``, ``create``, ``getMessages``,
    ``read``) and the application's custom ones."""

    log = Logger()

    def __init__(
        self,
        storage: IChatStorage,
        registry: ConnectionRegistry,
        deliver: Deliver,
        events: EventEmitter,
        clock: IReactorTime,
        *,
        actions: Mapping[str, Action] | None = None,
        open_actions: Mapping[str, Action] | None = None,
        max_history: int = 100,
        storage_timeout: float = 0,
        max_connections_per_user: int = 0,
        stats: ServerStats | None = None,
        server_info: Mapping[str, object] | None = None,
    ) -> None:
        """
        @param deliver: pushes an encoded frame to users, wherever they are
            connected (locally, the registry's C{push}).
        @param actions: custom actions, callable as C{action(connection, data)},
            for authorized connections.
        @param open_actions: custom actions that may run before ``authorize``.
        @param max_history: the largest ``limit`` honoured by ``getMessages``.
        @param storage_timeout: seconds before a storage call counts as failed
            (0: wait forever).
        @param max_connections_per_user: how many connections one user may
            hold at once (0: any number).
        @param stats: where to count stored messages and storage latency.
        @param server_info: what the open ``serverInfo`` action tells clients
            (with the version added).
        """
        self._registry = registry
        self._deliver = deliver
        self._events = events
        self._clock = clock
        self._timestamps = Timestamps()
        self.max_history = max_history
        self.storage_timeout = storage_timeout
        self.max_connections_per_user = max_connections_per_user
        self.stats = stats or ServerStats()
        self.server_info = {**(server_info or {}), "version": __version__}
        # Bound once: storage methods are looked up per request on the hot path.
        self._authorize = storage.authorize
        self._create = storage.create
        self._get_messages = storage.getMessages
        self._group_user_ids = storage.getGroupUserIds
        self._read = storage.read

        builtins: dict[str, Callable[[Any, Any], Deferred]] = {
            "authorize": self.authorize,
            "create": self.create,
            "getMessages": self.get_messages,
            "read": self.read,
            "serverInfo": self.info,
        }
        custom = {**(actions or {}), **(open_actions or {})}
        clash = set(builtins) & set(custom)
        if clash:
            raise ValueError(f"custom actions may not replace built-in ones: {sorted(clash)}")
        self._routes: dict[str, Callable[[Any, Any], Deferred]] = dict(builtins)
        for name, action in custom.items():
            self._routes[name] = self._custom(name, action)
        self._open = frozenset({"authorize", "serverInfo", *(open_actions or {})})

    # -- dispatch ----------------------------------------------------------

    def handle(self, connection: Connection, action: str, data: object) -> Deferred:
        """Run ``action`` for ``connection``.

        @return: a Deferred firing with the reply's ``data``, or failing with
            L{ChatError} (a reply with its code) or L{ConnectionRefused} (the
            connection is to be closed).
        """
        route = self._routes.get(action)
        if connection.user is None and (route is None or action not in self._open):
            return fail(ConnectionRefused(1008, "not authorized: send authorize first"))
        if route is None:
            return fail(ChatError(errors.UNKNOWN_ACTION, "no such action"))
        try:
            return route(connection, data)
        except Exception:
            return fail()

    def _custom(self, name: str, action: Action) -> Callable[[Any, Any], Deferred]:
        def run(connection: Connection, data: object) -> Deferred:
            return maybeDeferred(action, connection, data).addErrback(self._action_failed, name)

        return run

    def _action_failed(self, failure: Failure, name: str) -> Failure:
        if failure.check(ChatError):
            return failure
        self.log.failure("custom action {action} failed", failure, action=name)
        return Failure(ChatError(errors.ACTION_FAILED, "the action failed"))

    def _storage_failed(self, failure: Failure, operation: str) -> Failure:
        if failure.check(ChatError):
            return failure
        if failure.check(TimeoutError, CancelledError):
            self.log.error(
                "storage {operation} took over {timeout}s",
                operation=operation,
                timeout=self.storage_timeout,
            )
            return Failure(ChatError(errors.STORAGE_TIMEOUT, "storage did not answer in time"))
        self.log.failure("storage {operation} failed", failure, operation=operation)
        return Failure(ChatError(errors.STORAGE_ERROR, "storage is unavailable, try again"))

    def _storage(self, operation: str, method: Callable[..., object], *args: object) -> Deferred:
        started = perf_counter()
        d = maybeDeferred(method, *args)
        if d.called:  # an in-memory store: no need for a timer
            self.stats.observe_storage(operation, perf_counter() - started)
        else:
            if self.storage_timeout:
                d.addTimeout(self.storage_timeout, self._clock)
            d.addBoth(self._timed, operation, started)
        return d.addErrback(self._storage_failed, operation)

    def _timed(self, result: object, operation: str, started: float) -> object:
        self.stats.observe_storage(operation, perf_counter() - started)
        return result

    # -- built-in actions --------------------------------------------------

    def authorize(self, connection: Connection, credentials: object) -> Deferred:
        """Identify the connection's user and register the connection as theirs."""
        if not isinstance(credentials, dict):
            raise ChatError(errors.INVALID_REQUEST, "authorize data must be an object")
        d = self._storage("authorize", self._authorize, credentials)
        return d.addCallback(self._authorized, connection)

    def _authorized(self, user: object, connection: Connection) -> object:
        if not user:
            raise ChatError(errors.AUTHORIZATION_FAILED, "authorization failed")
        user_id = None
        if isinstance(user, dict):
            user_id = user.get("id", user.get("_id"))
        if user_id is None:
            self.log.error("authorize returned a user without id or _id")
            raise ChatError(errors.STORAGE_ERROR, "storage returned an invalid user")
        if connection.closed:
            # Gone while storage answered: registering it would leak it.
            return user
        user_id = str(user_id)
        limit = self.max_connections_per_user
        if (
            limit
            and user_id != connection.user_id
            and len(self._registry.connections(user_id)) >= limit
        ):
            raise ConnectionRefused(1008, f"too many connections for this user (max {limit})")
        if connection.user_id is not None:
            self._registry.remove(connection.user_id, connection)
        connection.authorized()
        connection.user = user
        connection.user_id = user_id
        self._registry.add(connection.user_id, connection)
        self._events.emit(SOCKET_AUTHORIZED, connection)
        return user

    def create(self, connection: Connection, data: object) -> Deferred:
        """Store a message from the connection's user, then push it to its
        recipients: ``to`` and the sender, or every member of the group."""
        if not isinstance(data, dict):
            raise ChatError(errors.INVALID_MESSAGE, "a message must be an object")
        to = _as_id(data.get("to"))
        if to is None:
            raise ChatError(errors.INVALID_MESSAGE, "a message must contain a `to` property")
        message = dict(data)
        for field in RESERVED_FIELDS:
            message.pop(field, None)
        sender = connection.user_id
        message["to"] = to
        message["from"] = sender
        message["createdAt"] = self._timestamps.format(self._clock.seconds())
        if message.pop("isGroup", False):
            message["isGroup"] = True
            d = self._storage("getGroupUserIds", self._group_user_ids, {"groupId": to})
            return d.addCallback(self._create_in_group, message)
        d = self._storage("create", self._create, message)
        return d.addCallback(self._stored, (to, sender) if to != sender else (sender,))

    def _create_in_group(self, members: Iterable[object], message: dict) -> Deferred:
        member_ids = {str(m) for m in members}
        if message["from"] not in member_ids:
            raise ChatError(errors.NOT_GROUP_MEMBER, "you are not a member of this group")
        d = self._storage("create", self._create, message)
        return d.addCallback(self._stored, member_ids)

    def _stored(self, stored: dict, recipients: Iterable[str]) -> dict:
        self.stats.messages_stored += 1
        self._deliver(push("chatMessage", stored), recipients)
        return stored

    def get_messages(self, connection: Connection, data: object) -> Deferred:
        """One conversation's history, newest first: with a user, or of a
        group the connection's user belongs to."""
        if not isinstance(data, dict):
            raise ChatError(errors.INVALID_QUERY, "getMessages data must be an object")
        other = _as_id(data.get("with"))
        if other is None:
            raise ChatError(errors.INVALID_QUERY, "getMessages needs `with`: a user or group id")
        query = dict(data)
        query["skip"] = _count(data, "skip", 0)
        query["limit"] = min(_count(data, "limit", 10), self.max_history)
        query["ids"] = [connection.user_id, other]
        if not query.pop("isGroup", False):
            return self._storage("getMessages", self._get_messages, query)
        query["isGroup"] = True
        d = self._storage("getGroupUserIds", self._group_user_ids, {"groupId": other})
        return d.addCallback(self._member_history, connection.user_id, query)

    def _member_history(self, members: Iterable[object], user_id: str, query: dict) -> Deferred:
        if user_id not in {str(m) for m in members}:
            raise ChatError(errors.NOT_GROUP_MEMBER, "you are not a member of this group")
        return self._storage("getMessages", self._get_messages, query)

    def probe_storage(self, timeout: float) -> Deferred:
        """Ask storage the cheapest question there is; fails if it cannot
        answer within ``timeout`` seconds."""
        d = maybeDeferred(self._group_user_ids, {"groupId": "\x00probe"})
        return d.addTimeout(timeout, self._clock)

    def info(self, connection: Connection, data: object) -> Deferred:
        """What a client may want to know before signing in."""
        return succeed(self.server_info)

    def is_action(self, name: str) -> bool:
        """Whether ``name`` is an action this server runs."""
        return name in self._routes

    def read(self, connection: Connection, data: object) -> Deferred:
        """Mark a message read by the connection's user, and tell its sender."""
        message_id = _as_id(data.get("id", data.get("_id")) if isinstance(data, dict) else data)
        if message_id is None:
            raise ChatError(errors.INVALID_REQUEST, "read needs a message id")
        d = self._storage("read", self._read, message_id, connection.user_id)
        return d.addCallback(self._was_read, connection.user_id)

    def _was_read(self, message: dict | None, reader: str) -> dict:
        if not message:
            raise ChatError(errors.NOT_FOUND, "no such message for you to read")
        sender = message.get("from")
        if sender is not None and str(sender) != reader:
            self._deliver(push("messageRead", message), (str(sender),))
        return message
