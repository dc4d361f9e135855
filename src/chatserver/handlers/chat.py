"""The built-in actions and the dispatch of custom ones."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserver import errors
from chatserver._version import __version__
from chatserver.delivery import Router, SessionRegistry
from chatserver.errors import ChatError, Ending, SessionRefused
from chatserver.events import SOCKET_AUTHORIZED, SOCKET_CLOSED, EventEmitter
from chatserver.interfaces import IChatStorage, IConversationStore
from chatserver.logs import Throttle
from chatserver.metrics import ServerStats
from chatserver.session import Session

# Fields only the server (or the store) may set on a message.
RESERVED_FIELDS = frozenset({"_id", "id", "from", "createdAt", "read", "readBy"})
MAX_ID_LENGTH = 256
#: The close reason of a session whose user's ``exp`` has passed.
EXPIRED_REASON = "token expired"

#: A custom action: ``action(session, data)`` returning the reply's data (or
#: a Deferred or coroutine of it).
Action = Callable[[Session, Any], object]
#: Runs an action: a Deferred of the reply's data, or (built-in actions that
#: finished at once) the data itself.
Route = Callable[[Session, Any], Any]

log = Logger()

#: What a :data:`ResultTaker` answers when a Deferred's result is not there to take.
PENDING: Any = object()
#: ``take(d, pending)``: the result of ``d`` if it has already succeeded and
#: nothing else waits on it, else ``pending``.
ResultTaker = Callable[[Deferred[Any], Any], Any]


def never_take(d: Deferred[Any], pending: Any) -> Any:
    """A :data:`ResultTaker` that always leaves the result in its Deferred."""
    return pending


def as_id(value: Any) -> str | None:
    """A user, group or message id as the wire may carry it, or None if invalid."""
    if type(value) is str:
        return value if 0 < len(value) <= MAX_ID_LENGTH else None
    if type(value) is int:
        return str(value)  # the edge keeps integers within ±(2^53-1)
    return None


def _count(query: Mapping[str, Any], name: str, default: int) -> int:
    value = query.get(name, default)
    if value is None:
        return default
    if type(value) is not int or value < 0:
        raise ChatError(errors.INVALID_QUERY, f"{name} must be a non-negative integer")
    return value


class Timestamps:
    """Formats ``createdAt`` as node-chat-server does: ``2026-11-24T23:27:50.298Z``.

    The date-and-time part changes once a second, so it is formatted once a
    second rather than once a message.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, seconds: float) -> str:
        millis = int(seconds * 1000)
        second, millis = divmod(millis, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{millis:03d}Z"


def signed_in(session: Session) -> str:
    """The session's user id (the handler runs other actions only for
    authorized sessions)."""
    user_id = session.user_id
    assert user_id is not None
    return user_id


def _deadline(user: Mapping[str, Any]) -> float | None:
    """The ``exp`` of an authorized user (seconds since the epoch, as in
    JWT), or None if it has none.

    :raise ValueError: if ``exp`` is there but not a finite number.
    """
    exp = user.get("exp")
    if exp is None:
        return None
    if type(exp) not in (int, float) or not math.isfinite(exp):
        raise ValueError("exp must be a number")
    return float(exp)


def _same_message(stored: Mapping[str, Any], sent: Mapping[str, Any]) -> bool:
    """Whether ``stored`` (found under ``sent``'s clientMessageId) is the
    message ``sent`` asks to store, server-set fields aside."""
    if bool(stored.get("isGroup")) != bool(sent.get("isGroup")):
        return False
    keys = (stored.keys() | sent.keys()) - RESERVED_FIELDS - {"isGroup"}
    return all(stored.get(k) == sent.get(k) for k in keys)


class ChatHandler:
    """Runs the built-in actions (``authorize``, ``create``, ``getMessages``,
    ``read``, ``serverInfo``) and the application's custom ones."""

    def __init__(
        self,
        storage: IChatStorage,
        registry: SessionRegistry,
        router: Router,
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
        take_result: ResultTaker = never_take,
    ) -> None:
        """
        :param registry: the sessions of this node, where an authorized
            session is registered under its user.
        :param router: delivers pushes to users wherever they are connected.
        :param actions: custom actions, for authorized sessions.
        :param open_actions: custom actions that may run before ``authorize``.
        :param max_history: the largest ``limit`` honoured by ``getMessages``.
        :param storage_timeout: seconds before a storage call counts as
            failed (0: wait forever).
        :param max_connections_per_user: how many sessions one user may hold
            on this node at once (0: any number).
        :param stats: where to count stored messages and storage latency.
        :param server_info: what the open ``serverInfo`` action tells clients
            (with the version added).
        :param take_result: takes the result out of a storage call's Deferred
            that has already succeeded (an in-memory store's), so that the
            rest of the request runs without callbacks; the network layer
            provides one (:func:`chatserver._internals.fired_result`).
        """
        self._registry = registry
        self._router = router
        self._events = events
        self._clock = clock
        self._timestamps = Timestamps()
        self._take_result = take_result
        self._throttle = Throttle(clock)
        self.max_history = max_history
        self.storage_timeout = storage_timeout
        self.max_connections_per_user = max_connections_per_user
        self.stats = stats or ServerStats()
        self.server_info = {**(server_info or {}), "version": __version__}
        self._cursors = IConversationStore.providedBy(storage)
        # Bound once: storage methods are looked up per request on the hot path.
        self._authorize = storage.authorize
        self._create = storage.create
        self._get_messages = storage.getMessages
        self._group_user_ids = storage.getGroupUserIds
        self._read = storage.read

        builtins: dict[str, Route] = {
            "authorize": self._authorize_now,
            "create": self._create_now,
            "getMessages": self.get_messages,
            "read": self.read,
            "serverInfo": self.info,
        }
        custom = {**(actions or {}), **(open_actions or {})}
        clash = set(builtins) & set(custom)
        if clash:
            raise ValueError(f"custom actions may not replace built-in ones: {sorted(clash)}")
        # Sessions whose user carries an ``exp``, and the call that ends them.
        self._expiries: dict[Session, IDelayedCall] = {}
        events.on(SOCKET_CLOSED, self._forget_expiry)
        self._routes: dict[str, Route] = dict(builtins)
        for name, action in custom.items():
            self._routes[name] = self._custom(name, action)
        self._open = frozenset({"authorize", "serverInfo", *(open_actions or {})})

    # -- dispatch ----------------------------------------------------------

    def handle(self, session: Session, action: str, data: object) -> Deferred[Any]:
        """Run ``action`` for ``session``.

        :return: a Deferred firing with the reply's ``data``, or failing with
            :class:`ChatError` (a reply with its code) or
            :class:`SessionRefused` (the session is to be ended).
        """
        result = self.handle_now(session, action, data)
        return result if isinstance(result, Deferred) else succeed(result)

    def handle_now(self, session: Session, action: str, data: object) -> Any:
        """Run ``action`` for ``session``, as :meth:`handle` does, but answer
        with the reply's ``data`` itself when it is there at once (a built-in
        action on a store that answers synchronously): no Deferred, and no
        callbacks run through one, per request.

        :return: the reply's ``data`` (never a Deferred), or a Deferred as
            :meth:`handle` returns; errors always come as a failed Deferred.
        """
        route = self._routes.get(action)
        if session.user is None and (route is None or action not in self._open):
            return fail(SessionRefused("not authorized: send authorize first"))
        if route is None:
            return fail(ChatError(errors.UNKNOWN_ACTION, "no such action"))
        try:
            return route(session, data)
        except Exception:
            return fail()

    def add_builtin(self, name: str, route: Route) -> None:
        """Run ``route(session, data)`` for action ``name`` (for authorized
        sessions): the protocol's additions that live in modules of their
        own. A custom action of that name is refused, as for the others.

        :raise ValueError: if ``name`` is taken.
        """
        if name in self._routes:
            raise ValueError(f"custom actions may not replace built-in ones: [{name!r}]")
        self._routes[name] = route

    def is_action(self, name: str) -> bool:
        """Whether ``name`` is an action this server runs."""
        return name in self._routes

    def _custom(self, name: str, action: Action) -> Route:
        def run(session: Session, data: object) -> Deferred[Any]:
            return maybeDeferred(action, session, data).addErrback(self._action_failed, name)

        return run

    def _action_failed(self, failure: Failure, name: str) -> Failure:
        if failure.check(ChatError):
            return failure
        self._throttle.failure(
            f"action:{name}", "custom action {action} failed", failure, action=name
        )
        return Failure(ChatError(errors.ACTION_FAILED, "the action failed"))

    # -- storage -----------------------------------------------------------

    def _storage_failed(self, failure: Failure, operation: str) -> Failure:
        if failure.check(ChatError):
            return failure
        if failure.check(TimeoutError, CancelledError):
            self._throttle.warn(
                f"storage-timeout:{operation}",
                "storage {operation} took over {timeout}s",
                operation=operation,
                timeout=self.storage_timeout,
            )
            return Failure(ChatError(errors.STORAGE_TIMEOUT, "storage did not answer in time"))
        self._throttle.failure(
            f"storage:{operation}", "storage {operation} failed", failure, operation=operation
        )
        return Failure(ChatError(errors.STORAGE_ERROR, "storage is unavailable, try again"))

    def _storage(
        self, operation: str, method: Callable[..., object], *args: object
    ) -> Deferred[Any]:
        started = perf_counter()
        d = maybeDeferred(method, *args)
        if d.called:  # an in-memory store: no need for a timer
            self.stats.observe_storage(operation, perf_counter() - started)
        else:
            if self.storage_timeout:
                d.addTimeout(self.storage_timeout, self._clock)
            d.addBoth(self._timed, operation, started)
        return d.addErrback(self._storage_failed, operation)

    #: For the protocol's other actions: a storage call with the same
    #: deadline, metrics and error mapping as the built-in ones.
    call_storage = _storage

    def _storage_now(self, operation: str, method: Callable[..., object], *args: object) -> Any:
        """:meth:`_storage`, answering with the result itself when storage
        has it at once (see :func:`~chatserver._internals.fired_result`)."""
        started = perf_counter()
        d = maybeDeferred(method, *args)
        result = self._take_result(d, PENDING)
        if result is PENDING:
            if d.called:
                self.stats.observe_storage(operation, perf_counter() - started)
            else:
                if self.storage_timeout:
                    d.addTimeout(self.storage_timeout, self._clock)
                d.addBoth(self._timed, operation, started)
            return d.addErrback(self._storage_failed, operation)
        self.stats.observe_storage(operation, perf_counter() - started)
        return result

    def _timed(self, result: object, operation: str, started: float) -> object:
        self.stats.observe_storage(operation, perf_counter() - started)
        return result

    def probe_storage(self, timeout: float) -> Deferred[Any]:
        """Ask storage the cheapest question there is; fails if it cannot
        answer within ``timeout`` seconds."""
        d = maybeDeferred(self._group_user_ids, {"groupId": "\x00probe"})
        return d.addTimeout(timeout, self._clock)

    # -- built-in actions --------------------------------------------------

    def authorize(self, session: Session, credentials: object) -> Deferred[Any]:
        """Identify the session's user and register the session as theirs.

        A user object carrying ``exp`` (seconds since the epoch, as a JWT's
        claim) ends the session at that time, with
        :attr:`~chatserver.errors.Ending.EXPIRED` and the reason
        ``"token expired"``; an ``exp`` already past refuses the
        ``authorize`` with ``authorizationFailed``. A later ``authorize`` on
        the same session replaces the deadline (a client renews its session
        by sending a fresh token before the old one expires).
        """
        try:
            result = self._authorize_now(session, credentials)
        except Exception:
            return fail()
        return result if isinstance(result, Deferred) else succeed(result)

    def _authorize_now(self, session: Session, credentials: object) -> Any:
        if type(credentials) is not dict:
            raise ChatError(errors.INVALID_REQUEST, "authorize data must be an object")
        user = self._storage_now("authorize", self._authorize, credentials)
        if isinstance(user, Deferred):
            return user.addCallback(self._authorized, session)
        return self._authorized(user, session)

    def _authorized(self, user: object, session: Session) -> object:
        if not user:
            raise ChatError(errors.AUTHORIZATION_FAILED, "authorization failed")
        user_id = None
        deadline = None
        if isinstance(user, dict):
            user_id = user.get("id", user.get("_id"))
            try:
                deadline = _deadline(user)
            except ValueError:
                self._throttle.error("invalid-user", "authorize returned a user with a bad exp")
                raise ChatError(errors.STORAGE_ERROR, "storage returned an invalid user") from None
        if user_id is None:
            self._throttle.error("invalid-user", "authorize returned a user without id or _id")
            raise ChatError(errors.STORAGE_ERROR, "storage returned an invalid user")
        if deadline is not None and deadline <= self._clock.seconds():
            raise ChatError(errors.AUTHORIZATION_FAILED, "the credentials have expired")
        if session.closed:
            # Gone while storage answered: registering it would leak it.
            return user
        user_id = str(user_id)
        limit = self.max_connections_per_user
        if limit and user_id != session.user_id and self._registry.count(user_id) >= limit:
            raise SessionRefused(f"too many connections for this user (max {limit})")
        if session.user_id is not None and session.user_id != user_id:
            # Signing in again as the same user is no departure: removing
            # the session would tell presence watchers "offline", then "online".
            self._registry.remove(session.user_id, session)
        session.user = user  # type: ignore[assignment]
        session.user_id = user_id
        self._registry.add(user_id, session)
        self._expire_at(session, deadline)
        self._events.emit(SOCKET_AUTHORIZED, session)
        return user

    def _expire_at(self, session: Session, deadline: float | None) -> None:
        """End ``session`` at ``deadline`` (None: never), instead of when
        it was to end before."""
        self._forget_expiry(session)
        if deadline is not None:
            delay = deadline - self._clock.seconds()
            self._expiries[session] = self._clock.callLater(delay, self._expire, session)

    def _expire(self, session: Session) -> None:
        self._expiries.pop(session, None)
        session.end(EXPIRED_REASON, Ending.EXPIRED)

    def _forget_expiry(self, session: Session) -> None:
        call = self._expiries.pop(session, None)
        if call is not None and call.active():
            call.cancel()

    def sessions_expiring(self) -> int:
        """How many sessions have a deadline (for metrics and tests)."""
        return len(self._expiries)

    def create(self, session: Session, data: object) -> Deferred[Any]:
        """Store a message from the session's user, then push it to its
        recipients: ``to`` and the sender, or every member of the group."""
        return self.create_as(signed_in(session), data)

    def _create_now(self, session: Session, data: object) -> Any:
        return self._create_from(signed_in(session), data)

    def create_as(self, sender: str, data: object) -> Deferred[Any]:
        """Store a message from ``sender`` and push it, exactly as a
        ``create`` from a session of that user would be (the server API's
        way to post as a user, without a session).

        :param sender: the sender's user id.
        :param data: the message as a client sends it (``to``, ``isGroup``,
            any other fields; the fields only the server sets are dropped).
        :return: a Deferred firing with the stored message, or failing with
            :class:`ChatError` (``invalidMessage``, ``notGroupMember``,
            ``conflict``, ``storageError``, ``storageTimeout``).
        """
        try:
            result = self._create_from(sender, data)
        except Exception:
            return fail()
        return result if isinstance(result, Deferred) else succeed(result)

    def _create_from(self, sender: str, data: object) -> Any:
        """Store and push; the stored message, or a Deferred of it."""
        if type(data) is not dict:
            raise ChatError(errors.INVALID_MESSAGE, "a message must be an object")
        to = as_id(data.get("to"))
        if to is None:
            raise ChatError(errors.INVALID_MESSAGE, "a message must contain a `to` property")
        message = {k: v for k, v in data.items() if k not in RESERVED_FIELDS}
        message["to"] = to
        message["from"] = sender
        message["createdAt"] = self._timestamps.format(self._clock.seconds())
        if message.pop("isGroup", False):
            message["isGroup"] = True
            members = self._storage_now("getGroupUserIds", self._group_user_ids, {"groupId": to})
            if isinstance(members, Deferred):
                return members.addCallback(self._create_in_group, message)
            return self._create_in_group(members, message)
        stored = self._storage_now("create", self._create, message)
        recipients = (to, sender) if to != sender else (sender,)
        if isinstance(stored, Deferred):
            return stored.addCallback(self._stored, message, recipients)
        return self._stored(stored, message, recipients)

    def _create_in_group(self, members: Iterable[object], message: dict[str, Any]) -> Any:
        member_ids = {str(m) for m in members}
        if message["from"] not in member_ids:
            raise ChatError(errors.NOT_GROUP_MEMBER, "you are not a member of this group")
        stored = self._storage_now("create", self._create, message)
        if isinstance(stored, Deferred):
            return stored.addCallback(self._stored, message, member_ids)
        return self._stored(stored, message, member_ids)

    def _stored(
        self, stored: dict[str, Any], sent: dict[str, Any], recipients: Iterable[str]
    ) -> dict[str, Any]:
        # With a clientMessageId, the store may answer with the message stored
        # earlier under it. The same message (a retry) is pushed again to its
        # recipients, who are the original's (same `to`): the server cannot
        # know whether the first attempt got as far as pushing. Another
        # message is refused, so no one sees it who was not its recipient.
        if "clientMessageId" in sent and not _same_message(stored, sent):
            raise ChatError(
                errors.CONFLICT, "this clientMessageId was already used for another message"
            )
        self.stats.messages_stored += 1
        self._router.push("chatMessage", stored, recipients)
        return stored

    def get_messages(self, session: Session, data: object) -> Deferred[Any]:
        """One conversation's history, newest first (oldest first with
        ``after``): with a user, or of a group the session's user belongs to."""
        if type(data) is not dict:
            raise ChatError(errors.INVALID_QUERY, "getMessages data must be an object")
        other = as_id(data.get("with"))
        if other is None:
            raise ChatError(errors.INVALID_QUERY, "getMessages needs `with`: a user or group id")
        query = dict(data)
        query["skip"] = _count(data, "skip", 0)
        query["limit"] = min(_count(data, "limit", 10), self.max_history)
        me = signed_in(session)
        query["ids"] = [me, other]
        self._cursor(query)
        if not query.pop("isGroup", False):
            return self._storage("getMessages", self._get_messages, query)
        query["isGroup"] = True
        d = self._storage("getGroupUserIds", self._group_user_ids, {"groupId": other})
        return d.addCallback(self._member_history, me, query)

    def _cursor(self, query: dict[str, Any]) -> None:
        """Check the history cursors ``before``/``after`` of a getMessages query."""
        given = [name for name in ("before", "after") if query.get(name) is not None]
        if not given:
            query.pop("before", None)
            query.pop("after", None)
            return
        if len(given) > 1:
            raise ChatError(errors.INVALID_QUERY, "use `before` or `after`, not both")
        [name] = given
        if query["skip"]:
            raise ChatError(errors.INVALID_QUERY, "`skip` cannot be used with a cursor")
        message_id = as_id(query[name])
        if message_id is None:
            raise ChatError(errors.INVALID_QUERY, f"`{name}` must be a message id")
        if not self._cursors:
            raise ChatError(errors.NOT_SUPPORTED, "this server's storage has no history cursors")
        query[name] = message_id
        query.pop("after" if name == "before" else "before", None)

    def _member_history(
        self, members: Iterable[object], user_id: str, query: dict[str, Any]
    ) -> Deferred[Any]:
        if user_id not in {str(m) for m in members}:
            raise ChatError(errors.NOT_GROUP_MEMBER, "you are not a member of this group")
        return self._storage("getMessages", self._get_messages, query)

    def info(self, session: Session, data: object) -> Deferred[Any]:
        """What a client may want to know before signing in."""
        return succeed(self.server_info)

    def read(self, session: Session, data: object) -> Deferred[Any]:
        """Mark a message read by the session's user, and tell its sender."""
        message_id = as_id(data.get("id", data.get("_id")) if type(data) is dict else data)
        if message_id is None:
            raise ChatError(errors.INVALID_REQUEST, "read needs a message id")
        reader = signed_in(session)
        d = self._storage("read", self._read, message_id, reader)
        return d.addCallback(self._was_read, reader)

    def _was_read(self, message: dict[str, Any] | None, reader: str) -> dict[str, Any]:
        if not message:
            raise ChatError(errors.NOT_FOUND, "no such message for you to read")
        sender = message.get("from")
        if sender is not None and str(sender) != reader:
            self._router.push("messageRead", message, (str(sender),))
        return message
