"""The chat server over MongoStorage and a real MongoDB-compatible server, end
to end: the conformance suite over WebSocket, the npm ``chat-client`` 1.0.3
flow against ``twistd -n chatserver --storage mongodb://...``,
``examples/mongo_example.py``, a server restart, and the database going away
under load (stopped, crashed, frozen) while the chat server keeps running.

The database is the SecantusDB the tests start (tests/mongo.py); the outage
tests start one of their own, keeping its data on disk, so that they can stop
and restart it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pymongo
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from chatserver.client import ChatClientProtocol, RequestFailed, connect
from chatserver.errors import STORAGE_ERROR, STORAGE_TIMEOUT
from chatserver.storage.mongo import MongoStorage
from tests import test_chat_client_compat as compat
from tests import test_conformance_wire as wire
from tests.mongo import SecantusServer, drop_database, new_database_name, with_database
from tests.processes import ROOT, ServerProcess, admin

DEMO_USERS = ("alice", "bob", "carol", "dave")


async def provision(uri: str, users: tuple[str, ...] = DEMO_USERS, **groups: list[str]) -> None:
    """Users ``<id>`` with token ``<id>-token``, and ``groups``, in ``uri``'s database."""
    storage = MongoStorage(uri, timeout=30)
    storage.startService()
    try:
        for user_id in users:
            await storage.add_user(user_id, name=user_id.title(), token=f"{user_id}-token")
        for group_id, members in groups.items():
            await storage.add_group(group_id, members, name=group_id.title())
    finally:
        await storage.stopService()


async def login(url: str, user_id: str) -> ChatClientProtocol:
    client = await connect(url)
    user = await client.authorize(token=f"{user_id}-token")
    assert user["_id"] == user_id
    return client


async def close_all(clients: list[ChatClientProtocol]) -> None:
    for client in clients:
        if client.close_info is None:
            client.sendClose()
    await gatherResults([client.closed for client in clients])


def stored_messages(uri: str) -> list[dict]:
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        return list(client.get_default_database().messages.find({}))


# -- the conformance suite over WebSocket ----------------------------------------


class TestMongoStorageOverWire(wire.WireConformanceTests):
    @pytest.fixture(autouse=True)
    def _server(self, mongodb_server):
        self.server = mongodb_server

    async def make_backend(self) -> MongoStorage:
        backend = MongoStorage(with_database(self.server, new_database_name()), timeout=30)
        backend.startService()
        await backend.whenReady()
        return backend

    async def close_backend(self, backend: MongoStorage) -> None:
        try:
            await backend.run(lambda db: db.command("dropDatabase"), name="dropDatabase")
        finally:
            await backend.stopService()

    def add_backend_user(self, backend: MongoStorage, user_id: str, token: str) -> Any:
        return backend.add_user(user_id, token=token)

    def add_backend_group(self, backend: MongoStorage, group_id: str, member_ids: list[str]) -> Any:
        return backend.add_group(group_id, member_ids)


# -- chat-client 1.0.3 against twistd --storage mongodb://... -------------------


@pytest.fixture(scope="module")
def flow(mongodb_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    node, npm = compat._require_tools()
    compat._install_node_packages(npm)
    uri = with_database(mongodb_server, new_database_name())
    # Users and the group made as an operator would: by the admin CLI.
    scratch = tmp_path_factory.mktemp("admin")
    tokens = {
        user: admin("users", "add", user, user.title(), "--storage", uri, cwd=scratch)
        for user in ("alice", "bob", "carol")
    }
    admin("groups", "add", "team", "alice", "bob", "--name", "Team", "--storage", uri, cwd=scratch)
    server = ServerProcess.twistd("--storage", uri, cwd=tmp_path_factory.mktemp("chat"))
    try:
        result = subprocess.run(
            [node, str(compat.FLOW), server.url],
            cwd=compat.COMPAT_DIR,
            env={**os.environ, "FLOW_TOKENS": json.dumps(tokens)},
            capture_output=True,
            text=True,
            timeout=compat.FLOW_TIMEOUT,
            check=False,
        )
        returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stdout, stderr = None, compat._text(exc.stdout), compat._text(exc.stderr)
    finally:
        server.stop()
        drop_database(uri)
    yield compat.FlowRun(
        returncode=returncode,
        steps=compat._parse_steps(stdout),
        stdout=stdout,
        stderr=stderr,
        server_log=server.log.decode(errors="replace"),
    )


def test_chat_client_flow_over_mongodb(flow: Any) -> None:
    failed = [name for name, step in flow.steps.items() if not step.get("ok")]
    assert not failed, f"steps failed: {failed}\n{flow.report()}"
    assert list(flow.steps) == compat.STEPS, f"flow.js ran {list(flow.steps)}\n{flow.report()}"
    assert flow.returncode == 0, flow.report()


# -- examples/mongo_example.py --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_mongo_example(mongodb_uri, tmp_path):
    argv = [sys.executable, str(ROOT / "examples" / "mongo_example.py"), mongodb_uri, "--demo"]
    argv += ["--port", "tcp:0:interface=127.0.0.1"]
    for _run in range(2):  # --demo again over its own users: still works
        example = ServerProcess(argv, cwd=tmp_path)
        try:
            alice = await login(example.url, "alice")
            bob = await login(example.url, "bob")
            directory = await alice.request("getUsersAndGroups")
            assert [u["_id"] for u in directory["users"]] == ["alice", "bob", "carol"]
            assert all("tokenHash" not in u for u in directory["users"])
            assert directory["groups"] == [
                {"_id": "team", "users": ["alice", "bob"], "name": "Team"}
            ]
            sent = await alice.send({"to": "team", "isGroup": True, "text": "hi team"})
            pushed = await bob.next_push("chatMessage")
            assert pushed["_id"] == sent["_id"]
            history = await bob.get_messages(**{"with": "team", "isGroup": True})
            assert sent["_id"] in [m["_id"] for m in history]
            await close_all([alice, bob])
        finally:
            example.stop()


# -- a chat server restart --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_and_tokens_survive_a_server_restart(mongodb_uri, tmp_path):
    await provision(mongodb_uri, team=["alice", "bob"])
    server = ServerProcess.twistd("--storage", mongodb_uri, cwd=tmp_path)
    try:
        alice = await login(server.url, "alice")
        direct = await alice.send({"to": "bob", "text": "kept in MongoDB"})
        group = await alice.send({"to": "team", "isGroup": True, "text": "team note"})
        await close_all([alice])
    finally:
        server.stop()
    assert "alice-token" not in server.log.decode()

    server = ServerProcess.twistd("--storage", mongodb_uri, cwd=tmp_path)
    try:
        bob = await login(server.url, "bob")
        history = await bob.get_messages(**{"with": "alice"})
        assert [m["_id"] for m in history] == [direct["_id"]]
        history = await bob.get_messages(**{"with": "team", "isGroup": True})
        assert [m["text"] for m in history] == [group["text"]]
        assert (await bob.read(direct["_id"]))["read"] is True
        await close_all([bob])
    finally:
        server.stop()


# -- the database goes away under load -------------------------------------------


@dataclass
class Load:
    """Each client sends message after message (every one with a
    clientMessageId), recording which were acknowledged and which failed."""

    clients: dict[str, ChatClientProtocol]
    acked: dict[str, str] = field(default_factory=dict)  # clientMessageId -> _id
    failed: dict[str, dict] = field(default_factory=dict)  # clientMessageId -> message
    errors: set[str] = field(default_factory=set)
    running: bool = True
    _waiters: list[tuple[Any, Deferred]] = field(default_factory=list)

    def until(self, condition: Any) -> Deferred:
        """Fire once ``condition(self)`` holds (checked after every reply)."""
        d: Deferred = Deferred()
        self._waiters.append((condition, d))
        self._check()
        return d

    def _check(self) -> None:
        for waiter in list(self._waiters):
            condition, d = waiter
            if condition(self):
                self._waiters.remove(waiter)
                d.callback(None)

    async def sender(self, user_id: str) -> None:
        client = self.clients[user_id]
        others = [u for u in self.clients if u != user_id]
        n = 0
        while self.running:
            n += 1
            key = f"{user_id}-{n}"
            message = {"to": others[n % len(others)], "text": key, "clientMessageId": key}
            try:
                stored = await client.send(dict(message))
            except RequestFailed as e:
                self.errors.add(e.code)
                self.failed[key] = message
            else:
                assert stored["clientMessageId"] == key
                self.acked[key] = stored["_id"]
            self._check()

    def start(self) -> Deferred:
        return gatherResults(
            [Deferred.fromCoroutine(self.sender(u)) for u in self.clients], consumeErrors=True
        )


def within(d: Deferred, seconds: float) -> Deferred:
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


async def run_outage(secantus: SecantusServer, tmp_path: Any, outage: str) -> None:
    uri = secantus.uri("chat")
    await provision(uri)
    # Short per-call timeouts, so that the test sees failures within seconds.
    server = ServerProcess.twistd("--storage", f"{uri}?timeoutMS=1500", "--rate", "0", cwd=tmp_path)
    clients: dict[str, ChatClientProtocol] = {}
    try:
        for user_id in DEMO_USERS:
            clients[user_id] = await login(server.url, user_id)
        load = Load(clients)
        senders = load.start()
        await within(load.until(lambda s: len(s.acked) >= 40), 30)

        if outage == "crash":
            secantus.kill()
        elif outage == "stop":
            secantus.stop()
        else:
            secantus.pause()
        acked_before = len(load.acked)
        # Every sender meets the outage at least once.
        await within(
            load.until(lambda s: {k.split("-")[0] for k in s.failed} == set(DEMO_USERS)), 30
        )
        if outage == "freeze":
            secantus.resume()
        else:
            secantus.start()  # same port, same files
        # The chat server recovers by itself: acknowledgements resume.
        recovered = len(load.acked)
        await within(load.until(lambda s: len(s.acked) >= recovered + 40), 60)
        load.running = False
        await within(senders, 30)

        assert load.errors <= {STORAGE_ERROR, STORAGE_TIMEOUT}, load.errors
        if outage == "freeze":
            assert STORAGE_TIMEOUT in load.errors  # nothing answered: the deadline spoke
        assert acked_before >= 40

        # Each failed send, sent again with its clientMessageId, is stored once.
        for key, message in load.failed.items():
            user_id = key.split("-")[0]
            stored = await clients[user_id].send(dict(message))
            assert stored["clientMessageId"] == key
            if key in load.acked:  # acknowledged on an earlier try already
                assert load.acked[key] == stored["_id"]
            load.acked[key] = stored["_id"]
        await close_all(list(clients.values()))
    finally:
        for client in clients.values():
            if client.close_info is None:
                client.dropConnection(abort=True)
        server.stop()

    # No acknowledgement without a stored message, and no message twice.
    messages = stored_messages(uri)
    by_key: dict[str, list[str]] = {}
    for message in messages:
        by_key.setdefault(message["clientMessageId"], []).append(str(message["_id"]))
    duplicates = {key: ids for key, ids in by_key.items() if len(ids) > 1}
    assert not duplicates
    missing = {key: i for key, i in load.acked.items() if by_key.get(key) != [i]}
    assert not missing, f"acknowledged but not stored: {sorted(missing)[:10]}"


@pytest_twisted.ensureDeferred
async def test_database_crashes_under_load(secantus, tmp_path):
    await run_outage(secantus, tmp_path, "crash")


@pytest_twisted.ensureDeferred
async def test_database_stops_under_load(secantus, tmp_path):
    await run_outage(secantus, tmp_path, "stop")


@pytest_twisted.ensureDeferred
async def test_database_freezes_under_load(secantus, tmp_path):
    await run_outage(secantus, tmp_path, "freeze")
