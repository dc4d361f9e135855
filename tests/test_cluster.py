"""Several nodes sharing one real Redis, each node its own process."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import pytest_twisted

from chatserver.bench.processes import RedisServer, free_port
from chatserver.client import ChatClientProtocol, connect
from tests.processes import ROOT, ServerProcess

REDIS = "redis-server"


def announce(connection, data):
    """A custom action: a server-side broadcast, started from one node."""
    return connection.server.broadcast("announcement", data)


ACTIONS = {"announce": announce}


@pytest.fixture
def redis(tmp_path):
    if subprocess.run(["which", REDIS], capture_output=True).returncode != 0:
        pytest.fail("redis-server is needed for the cluster tests (apt-get install redis-server)")
    server = RedisServer(str(tmp_path))
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path, redis):
    """Start nodes on demand (all sharing one SQLite file and the Redis)."""
    db = tmp_path / "shared.sqlite3"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "chatserver",
            "groups",
            "add",
            "team",
            "alice",
            "bob",
            "carol",
            "--storage",
            f"sqlite:{db}",
        ],
        env={"PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    nodes: list[ServerProcess] = []

    def start() -> ServerProcess:
        node = ServerProcess.twistd(
            "--redis",
            redis.url,
            "--storage",
            f"sqlite:{db}",
            "--dev-auth",
            "--rate",
            "0",
            "--actions",
            "tests.test_cluster:ACTIONS",
            cwd=tmp_path,
        )
        assert node.wait_for_log(b"Redis: subscribed"), node.log.decode()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


async def login(node: ServerProcess, name: str) -> ChatClientProtocol:
    client = await connect(node.url)
    await client.authorize(name=name)
    return client


async def close(*clients: ChatClientProtocol) -> None:
    for client in clients:
        if client.close_info is None:
            client.sendClose()
            await client.closed


@pytest_twisted.ensureDeferred
async def test_users_on_different_nodes_chat_directly_and_in_groups(cluster):
    a, b, c = cluster(), cluster(), cluster()
    alice, bob, carol = await login(a, "alice"), await login(b, "bob"), await login(c, "carol")
    try:
        stored = await alice.send({"to": "bob", "text": "across nodes"})
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
        reply = await bob.send({"to": "alice", "text": "and back"})
        assert (await alice.next_push("chatMessage"))["_id"] == stored["_id"]  # her own copy
        assert (await alice.next_push("chatMessage"))["_id"] == reply["_id"]
        group = await carol.send({"to": "team", "isGroup": True, "text": "all hands"})
        for member in (alice, bob, carol):
            pushes = [await member.next_push("chatMessage")]
            while pushes[-1]["_id"] != group["_id"]:
                pushes.append(await member.next_push("chatMessage"))
        read = await bob.read(stored["_id"])  # the sender hears of it on her node
        assert read["read"] is True
        assert (await alice.next_push("messageRead"))["_id"] == stored["_id"]
    finally:
        await close(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_a_user_on_two_nodes_gets_pushes_on_both_and_broadcast_reaches_all(cluster):
    a, b, c = cluster(), cluster(), cluster()
    bob_a, bob_b, alice = await login(a, "bob"), await login(b, "bob"), await login(c, "alice")
    try:
        stored = await alice.send({"to": "bob", "text": "on both devices"})
        assert (await bob_a.next_push("chatMessage"))["_id"] == stored["_id"]
        assert (await bob_b.next_push("chatMessage"))["_id"] == stored["_id"]
        await bob_a.request("announce", {"text": "maintenance"})
        for client in (bob_a, bob_b, alice):
            assert await client.next_push("announcement") == {"text": "maintenance"}
    finally:
        await close(bob_a, bob_b, alice)


@pytest_twisted.ensureDeferred
async def test_a_redis_outage_loses_only_remote_pushes(cluster, redis):
    a, b = cluster(), cluster()
    alice, dave, bob = await login(a, "alice"), await login(a, "dave"), await login(b, "bob")
    try:
        redis.stop()
        assert a.wait_for_log(b"Redis: connection to"), a.log.decode()
        during = await alice.send({"to": "bob", "text": "during the outage"})  # still acked
        local = await alice.send({"to": "dave", "text": "same node"})
        assert (await dave.next_push("chatMessage"))["_id"] == local["_id"]

        marks = (b"Redis: subscribed", b"Redis: publishing")
        before = {(node, mark): node.log.count(mark) for node in (a, b) for mark in marks}
        redis.start()
        for (node, mark), seen in before.items():  # both reconnect and re-subscribe by themselves
            assert node.wait_for_log(mark, timeout=30, count=seen + 1), node.log.decode()
        after = await alice.send({"to": "bob", "text": "after the outage"})
        pushed = await bob.next_push("chatMessage")
        assert pushed["_id"] == after["_id"]  # the one sent during the outage never came
        history = await bob.get_messages(**{"with": "alice"})
        assert [m["_id"] for m in history] == [after["_id"], during["_id"]]
    finally:
        await close(alice, dave, bob)


@pytest_twisted.ensureDeferred
async def test_when_a_node_dies_its_users_reconnect_elsewhere(cluster):
    a, b = cluster(), cluster()
    alice, bob = await login(a, "alice"), await login(b, "bob")
    try:
        b.process.send_signal(signal.SIGKILL)
        await bob.closed
        bob = await login(a, "bob")  # what a load balancer does next
        stored = await alice.send({"to": "bob", "text": "found you"})
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
        carol = await login(a, "carol")
        group = await carol.send({"to": "team", "isGroup": True, "text": "still a team"})
        assert (await bob.next_push("chatMessage"))["_id"] == group["_id"]
        await close(carol)
    finally:
        await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_workers_share_one_port(tmp_path, redis):
    port = free_port()
    supervisor = ServerProcess(
        [
            sys.executable,
            "-m",
            "chatserver",
            "--port",
            str(port),
            "--workers",
            "2",
            "--redis",
            redis.url,
            "--storage",
            f"sqlite:{tmp_path / 'w.sqlite3'}",
            "--dev-auth",
            "--rate",
            "0",
        ],
        cwd=tmp_path,
    )
    clients = []
    try:
        assert supervisor.wait_for_log(b"Redis: subscribed", timeout=30, count=2)  # both workers
        url = f"ws://127.0.0.1:{port}"
        for n in range(20):
            client = await connect(url)
            await client.authorize(name=f"user{n}")
            clients.append(client)
        for n in range(0, 20, 2):
            stored = await clients[n].send({"to": f"user{n + 1}", "text": "hi"})
            assert (await clients[n + 1].next_push("chatMessage"))["_id"] == stored["_id"]
    finally:
        await close(*clients)
        supervisor.stop()
    log = supervisor.log.decode()
    assert "[worker-0]" in log and "[worker-1]" in log
