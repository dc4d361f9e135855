"""The storage conformance suite, end to end over WebSocket.

Every storage call the suite makes goes through a real server on a loopback
port instead: :class:`WireStorage` provides ``IChatStorage`` by sending
requests from real :mod:`chatserver.client` connections, one authorized
connection per user, to a :class:`~chatserver.ChatServerFactory` over the
store under test (``MemoryStorage``, ``SQLiteStorage``). So each test checks
the store and the server's handling of the same request together: ``from`` and
``createdAt`` set by the server, queries passed along, ``notFound`` for what a
user may not read, and the ``chatMessage`` push a sender gets before its reply.

The suite calls the store in an order and expects that order to stick (the
history of a thousand concurrent creates must come back in call order). A
server has no order across connections, so :class:`_InOrder` gives the calls
the one a client would have to: consecutive calls of one kind on one
connection are pipelined, a burst of frames as the suite intends, and a call
on another connection waits for the replies to every earlier one.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserver import ChatError, IChatStorage, Limits, MemoryStorage, build_server
from chatserver.client import ChatClientProtocol, RequestFailed, connect
from chatserver.errors import AUTHORIZATION_FAILED, CONFLICT, INVALID_REQUEST, NOT_FOUND
from chatserver.events import SOCKET_CLOSED
from chatserver.handlers.chat import MAX_ID_LENGTH
from chatserver.storage.sqlite import SQLiteStorage
from chatserver.testing import StorageConformanceTests
from chatserver.testing.conformance import MALFORMED_IDS, message_id

# The suite sends far faster than people type: rate limits are tested on their own.
# It pipelines hundreds of requests on one connection, far past a client's
# share of requests in flight.
LIMITS = Limits(rate=0, max_in_flight=0)
# How long stopping may wait for the server to see every connection go.
STOP_TIMEOUT = 5.0
# The user the adapter asks group questions as.
DIRECTORY_USER = "wire-directory"
# createdAt as the server writes it.
SERVER_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class _Shared:
    """One Deferred's result for any number of waiters (a Deferred has one
    callback chain, so it cannot be awaited twice)."""

    def __init__(self, d: Deferred) -> None:
        self._done = False
        self._result: Any = None
        self._waiters: list[Deferred] = []
        d.addBoth(self._fire)

    def _fire(self, result: Any) -> None:
        self._done, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._hand(waiter)

    def _hand(self, waiter: Deferred) -> None:
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(self._result)

    def get(self) -> Deferred:
        waiter: Deferred = Deferred()
        if self._done:
            self._hand(waiter)
        else:
            self._waiters.append(waiter)
        return waiter


class _InOrder:
    """Starts calls in the order they are made, as the server must see them.

    Consecutive calls with the same key (one connection, one kind of request)
    start at once, so their frames go out back to back and the server
    handles them in that order. A call with another key starts only once
    every earlier call has been answered.
    """

    def __init__(self) -> None:
        self._key: Hashable = object()
        self._gate = _Shared(succeed(None))
        self._batch: list[Deferred] = []

    def run(self, key: Hashable, start: Callable[[], Deferred]) -> Deferred:
        if key != self._key:
            self._key = key
            self._gate = _Shared(DeferredList(self._batch))
            self._batch = []
        result = _Shared(self._gate.get().addCallback(lambda _: start()))
        # Only that it settled matters here; the caller gets the outcome.
        self._batch.append(result.get().addErrback(lambda _: None))
        return result.get()


@implementer(IChatStorage)
class WireStorage:
    """``IChatStorage`` by way of a real server over ``backend`` and real clients.

    @param add_user: C{add_user(user_id, token)} provisions a user in
        ``backend``, returning (or firing with) the token that works if the
        store makes its own. Users the suite uses without provisioning them
        (it sends as "alice" without ever adding her) are provisioned on
        first use.
    """

    def __init__(self, backend: Any, add_user: Callable[[str, str], Any]) -> None:
        self.backend = backend
        self._add_user = add_user
        self.app = build_server(
            backend, actions={"groupMembers": self._group_members}, limits=LIMITS
        )
        self.factory = self.app.factory
        self.url = ""
        self._port: Any = None
        self._tokens: dict[str, str] = {}
        self._sessions: dict[str, _Shared] = {}
        self._clients: list[ChatClientProtocol] = []
        self._order = _InOrder()

    # -- running the server ------------------------------------------------

    async def start(self) -> None:
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        self._port = await endpoint.listen(self.app.site)
        self.url = f"ws://127.0.0.1:{self._port.getHost().port}"

    async def stop(self) -> None:
        """Close every client, wait until the server has seen them all go,
        check it forgot them, and stop listening."""
        try:
            for client in self._clients:
                if client.close_info is None:
                    client.sendClose()
            await DeferredList([client.closed for client in self._clients])
            await self._server_idle()
            assert not self.factory.connections, "the server still holds connections"
            assert not self.app.registry.user_ids(), "the server still lists users online"
        finally:
            await self._port.stopListening()

    def _server_idle(self) -> Deferred:
        idle: Deferred = Deferred()

        def check(_connection: object = None) -> None:
            if not self.factory.connections and not idle.called:
                self.app.api.off(SOCKET_CLOSED, check)
                idle.callback(None)

        self.app.api.on(SOCKET_CLOSED, check)
        check()
        return idle.addTimeout(STOP_TIMEOUT, reactor)

    async def server_sets_nodelay(self) -> bool:
        """Whether the server's sockets have TCP_NODELAY, as Autobahn's
        ``tcpNoDelay`` option (on by default) says they should."""
        client = await self._connect()
        try:
            return all(
                connection.transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                for connection in self.factory.connections
            )
        finally:
            await self._close(client)

    def _group_members(self, connection: object, data: object) -> Any:
        if not isinstance(data, dict) or "groupId" not in data:
            raise ChatError(INVALID_REQUEST, "groupMembers needs a groupId")
        return self.backend.getGroupUserIds(data)

    # -- users and their connections -------------------------------------

    async def add_user(self, user_id: str, token: str | None = None) -> str:
        token = token or secrets.token_urlsafe(32)
        given = await maybeDeferred(self._add_user, user_id, token)
        self._tokens[user_id] = given or token
        return self._tokens[user_id]

    async def _connect(self) -> ChatClientProtocol:
        client = await connect(self.url)
        self._clients.append(client)
        return client

    async def _close(self, client: ChatClientProtocol) -> None:
        if client.close_info is None:
            client.sendClose()
        await client.closed

    async def _login(self, user_id: str) -> ChatClientProtocol:
        token = self._tokens.get(user_id) or await self.add_user(user_id)
        client = await self._connect()
        user = await client.authorize(token=token)
        assert str(user.get("id", user.get("_id"))) == user_id, user
        return client

    def _session(self, user_id: str) -> Deferred:
        """Fire with ``user_id``'s one authorized client, connecting it first
        if need be."""
        if user_id not in self._sessions:
            self._sessions[user_id] = _Shared(Deferred.fromCoroutine(self._login(user_id)))
        return self._sessions[user_id].get()

    def _request(self, key: Hashable, user_id: str, action: str, data: Any) -> Deferred:
        def start() -> Deferred:
            return self._session(user_id).addCallback(lambda client: client.request(action, data))

        return self._order.run((user_id, *key), start)

    # -- IChatStorage ------------------------------------------------------

    def authorize(self, credentials: dict) -> Deferred:
        return self._order.run(
            object(), lambda: Deferred.fromCoroutine(self._authorize(credentials))
        )

    async def _authorize(self, credentials: dict) -> dict | None:
        client = await self._connect()
        try:
            return await client.authorize(**credentials)
        except RequestFailed as e:
            if e.code == AUTHORIZATION_FAILED:
                return None
            raise
        finally:
            await self._close(client)

    def create(self, message: dict) -> Deferred:
        sender = message["from"]
        data = {k: v for k, v in message.items() if k not in ("from", "createdAt")}

        def start() -> Deferred:
            return self._session(sender).addCallback(
                lambda client: client.send(data).addCallback(self._created, client)
            )

        return self._order.run((sender, "create", bool(message.get("isGroup"))), start)

    @staticmethod
    def _created(stored: dict, client: ChatClientProtocol) -> dict:
        # The server pushes the message to its sender before it replies.
        pushes = client.pending_pushes("chatMessage")
        assert pushes and pushes[-1] == stored, "the sender got no chatMessage push of it"
        return stored

    def getMessages(self, query: dict) -> Deferred:
        me, other = query["ids"]
        data = {k: v for k, v in query.items() if k not in ("ids", "isGroup")}
        data["with"] = other
        if query.get("isGroup"):
            data["isGroup"] = True
        return self._request(("getMessages",), me, "getMessages", data)

    def read(self, messageId: str, userId: str) -> Deferred:
        d = self._request(("read",), userId, "read", {"id": messageId})
        return d.addErrback(self._not_found)

    @staticmethod
    def _not_found(failure: Failure) -> Failure | None:
        failure.trap(RequestFailed)
        return None if failure.value.code == NOT_FOUND else failure

    def getGroupUserIds(self, data: dict) -> Deferred:
        return self._request(("groupMembers",), DIRECTORY_USER, "groupMembers", data)


class WireConformanceTests(StorageConformanceTests):
    """The suite through :class:`WireStorage`; subclasses say which store."""

    # What the server accepts in one request; the create frame, without
    # `from` and `createdAt`, is a little smaller than the message the suite builds.
    max_message_bytes = LIMITS.max_request_bytes

    def make_backend(self) -> Any:
        raise NotImplementedError

    def close_backend(self, backend: Any) -> Any:
        pass

    def add_backend_user(self, backend: Any, user_id: str, token: str) -> Any:
        raise NotImplementedError

    def add_backend_group(self, backend: Any, group_id: str, member_ids: list[str]) -> Any:
        raise NotImplementedError

    # Hooks

    async def make_storage(self) -> WireStorage:
        backend = await maybeDeferred(self.make_backend)
        storage = WireStorage(
            backend, lambda user_id, token: self.add_backend_user(backend, user_id, token)
        )
        try:
            await storage.start()
        except BaseException:
            await maybeDeferred(self.close_backend, backend)
            raise
        return storage

    async def close_storage(self, storage: WireStorage) -> None:
        try:
            await storage.stop()
        finally:
            await maybeDeferred(self.close_backend, storage.backend)

    def add_user(self, storage: WireStorage, user_id: str, token: str) -> Deferred:
        return Deferred.fromCoroutine(storage.add_user(user_id, token))

    def add_group(self, storage: WireStorage, group_id: str, member_ids: list[str]) -> Any:
        return self.add_backend_group(storage.backend, group_id, member_ids)

    async def create(self, storage: Any, message: dict) -> dict:
        """As the suite's, except that the server, not the caller, sets
        ``createdAt``: check it is the server's clock at the time, then record
        it in ``message``, so that what the test later compares with
        ``message`` checks that the stored ``createdAt`` round-trips."""
        before = reactor.seconds()
        stored = await maybeDeferred(storage.create, dict(message))
        after = reactor.seconds()
        message_id(stored)
        created_at = stored.get("createdAt")
        assert isinstance(created_at, str) and SERVER_TIMESTAMP.fullmatch(created_at), created_at
        millis = round(datetime.fromisoformat(created_at).timestamp() * 1000)
        assert int(before * 1000) <= millis <= int(after * 1000), created_at
        message["createdAt"] = created_at
        for key, value in message.items():
            assert stored.get(key) == value, f"stored {key!r} differs"
        return stored

    # What cannot hold over the wire

    @pytest.mark.skip(
        reason="sets createdAt itself; over the wire the server always sets createdAt "
        "(its clock, at receipt), so the order under test cannot be arranged"
    )
    def test_history_orders_by_created_at_then_insertion(self) -> None:
        pass

    @pytest.mark.skip(
        reason="reads the empty id, which the server refuses with invalidRequest and never "
        "passes to storage; test_read_a_malformed_id_over_the_wire runs the rest"
    )
    def test_read_a_malformed_id(self) -> None:
        pass

    @pytest_twisted.ensureDeferred
    async def test_a_resent_client_message_id_is_stored_once(self, storage: WireStorage) -> None:
        # Over the wire an identical resend gets the first copy back, and a
        # clientMessageId reused for other content is refused.
        firsts = []
        for client_id in ("c1", 42):  # any JSON value the client chose
            sent = self.message("alice", "bob", f"{client_id}", clientMessageId=client_id)
            first = await self.create(storage, sent)
            again = await storage.create(dict(sent))
            assert message_id(again) == message_id(first)
            resent = self.message("alice", "bob", "retry", clientMessageId=client_id)
            with pytest.raises(RequestFailed) as error:
                await storage.create(resent)
            assert error.value.code == CONFLICT
            firsts.append(first)
        history = await self.history(storage, "alice", "bob")
        assert self.ids(history) == self.ids(reversed(firsts))

    @pytest_twisted.ensureDeferred
    async def test_a_thousand_concurrent_creates(self, storage: WireStorage) -> None:
        if not await storage.server_sets_nodelay():
            pytest.skip(
                "server bug: its sockets lack TCP_NODELAY (Autobahn's tcpNoDelay never takes "
                "effect), so each of the ~1000 round trips this test needs to keep call order "
                "across two connections may stall ~40 ms (Nagle and delayed ACK): ~15 s a store"
            )
        await super().test_a_thousand_concurrent_creates(storage)

    @pytest_twisted.ensureDeferred
    async def test_read_a_malformed_id_over_the_wire(self, storage: WireStorage) -> None:
        stored = await self.create(storage, self.message("alice", "bob"))
        real = message_id(stored)
        # Ids the server refuses itself: storage never sees them.
        for refused in ("", "9" * (MAX_ID_LENGTH + 1)):
            with pytest.raises(RequestFailed) as error:
                await storage.read(refused, "bob")
            assert error.value.code == INVALID_REQUEST, repr(refused)
        # Every other one reaches storage, which must find nothing.
        malformed = [m for m in MALFORMED_IDS if m]
        for wrong in (*malformed, f" {real}", f"{real} ", f"{real}\n", f"+{real}"):
            assert await storage.read(wrong, "bob") is None, repr(wrong)
        [fetched] = await self.history(storage, "alice", "bob")
        assert not fetched.get("read")


class TestMemoryStorageOverWire(WireConformanceTests):
    def make_backend(self):
        return MemoryStorage()

    def add_backend_user(self, backend, user_id, token):
        return backend.add_user(user_id, token=token)

    def add_backend_group(self, backend, group_id, member_ids):
        backend.add_group(group_id, member_ids)


class TestSQLiteStorageOverWire(WireConformanceTests):
    @pytest.fixture(autouse=True)
    def _database_path(self, tmp_path):
        self.path = str(tmp_path / "chat.sqlite3")

    def make_backend(self):
        backend = SQLiteStorage(self.path)
        backend.startService()
        return backend

    def close_backend(self, backend):
        return backend.stopService()

    def add_backend_user(self, backend, user_id, token):
        return backend.add_user(user_id)  # SQLite makes its own tokens

    def add_backend_group(self, backend, group_id, member_ids):
        return backend.add_group(group_id, member_ids)
