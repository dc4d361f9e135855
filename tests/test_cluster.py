"""Several nodes sharing one real Redis, each node its own process.

Routing is measured on the Redis itself: ``CONFIG RESETSTAT`` then ``INFO
commandstats`` counts the PUBLISH commands a scenario caused (those run by
the nodes' scripts included). A publish count is read once a later publish
from the same node has been delivered: a node's commands reach Redis in the
order it wrote them, so every earlier one has been counted by then.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from chatserver.bench.processes import RedisServer, free_port
from chatserver.client import ChatClientProtocol, connect
from tests.processes import ServerProcess, make_group

REDIS = "redis-server"
#: The nodes' presence grace (RedisCluster's default).
GRACE = 2.0
#: How long a test waits for the cluster to notice something: a killed node's
#: heartbeat expiring (3 s), the next check (1 s), the grace (2 s), and room
#: for a loaded machine.
NOTICE = 20.0
CROWD = [f"member{n}" for n in range(6)]


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
    # The nodes sign users in by the id they claim: members need no account.
    make_group(f"sqlite:{db}", "team", "alice", "bob", "carol", cwd=tmp_path)
    make_group(f"sqlite:{db}", "crowd", *CROWD, cwd=tmp_path)
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


async def close(*clients: ChatClientProtocol | None) -> None:
    for client in clients:
        if client is not None and client.close_info is None:
            client.sendClose()
            await client.closed


async def until_online(client: ChatClientProtocol, *user_ids: str, online: bool = True) -> None:
    """Wait until ``client``'s node sees each of ``user_ids`` online (or
    offline): the announcements from their nodes have arrived. Replaces the
    client's watch list, and takes the presence pushes that led there (the
    node wrote them before the reply that saw their outcome)."""
    deadline = time.monotonic() + NOTICE
    while True:
        state = await client.request("watchPresence", {"ids": list(user_ids)})
        if all(state[u] is online for u in user_ids):
            while client.pending_pushes("presence"):
                await client.next_push("presence")
            return
        assert time.monotonic() < deadline, f"still {state}"
        await deferLater(reactor, 0.05)  # polling another process; there is no event to await


def redis_cli(redis, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(redis.port), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout


def users_in_redis(redis) -> set[str]:
    """Every user some node has registered in Redis."""
    keys = redis_cli(redis, "--scan", "--pattern", "chatserver:node:*:users").split()
    return {u for key in keys for u in redis_cli(redis, "SMEMBERS", key).split()}


def publishes(redis) -> int:
    """PUBLISH commands since the last ``CONFIG RESETSTAT``."""
    stats = redis_cli(redis, "INFO", "commandstats")
    found = re.search(r"cmdstat_publish:calls=(\d+)", stats)
    return int(found.group(1)) if found else 0


@pytest_twisted.ensureDeferred
async def test_users_on_different_nodes_chat_directly_and_in_groups(cluster):
    a, b, c = cluster(), cluster(), cluster()
    alice, bob, carol = await login(a, "alice"), await login(b, "bob"), await login(c, "carol")
    try:
        for client in (alice, bob, carol):  # each node knows where the others are
            await until_online(client, "alice", "bob", "carol")
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
    # Each node announces its users in the order they arrive: once alice's
    # node has heard of dave and erin, it has heard of bob on both nodes.
    dave, erin = await login(a, "dave"), await login(b, "erin")
    try:
        await until_online(alice, "dave", "erin")
        stored = await alice.send({"to": "bob", "text": "on both devices"})
        assert (await bob_a.next_push("chatMessage"))["_id"] == stored["_id"]
        assert (await bob_b.next_push("chatMessage"))["_id"] == stored["_id"]
        await bob_a.request("announce", {"text": "maintenance"})
        for client in (bob_a, bob_b, alice):
            assert await client.next_push("announcement") == {"text": "maintenance"}
    finally:
        await close(bob_a, bob_b, alice, dave, erin)


@pytest_twisted.ensureDeferred
async def test_a_redis_outage_loses_only_remote_pushes(cluster, redis):
    a, b = cluster(), cluster()
    alice, dave, bob = await login(a, "alice"), await login(a, "dave"), await login(b, "bob")
    try:
        await until_online(alice, "bob")
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
        await until_online(alice, "bob")
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


# -- routing by node ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_message_between_users_of_one_node_publishes_nothing(cluster, redis):
    a, b = cluster(), cluster()
    alice, bob, carol = await login(a, "alice"), await login(a, "bob"), await login(b, "carol")
    try:
        await until_online(carol, "alice", "bob")  # a's announcements are all published
        await until_online(alice, "carol")
        redis_cli(redis, "CONFIG", "RESETSTAT")
        stored = await alice.send({"to": "bob", "text": "next door"})
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
        assert (await alice.next_push("chatMessage"))["_id"] == stored["_id"]  # her copy
        # Then one to the other node: exactly one publish, and the first's
        # would have reached Redis before it.
        far = await alice.send({"to": "carol", "text": "over there"})
        assert (await carol.next_push("chatMessage"))["_id"] == far["_id"]
        assert publishes(redis) == 1
        await alice.request("announce", {"text": "to all"})  # a broadcast: one more
        for client in (alice, bob, carol):
            assert await client.next_push("announcement") == {"text": "to all"}
        assert publishes(redis) == 2
    finally:
        await close(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_a_group_message_is_one_publish_per_other_node(cluster, redis):
    a, b = cluster(), cluster()
    here = [await login(a, name) for name in CROWD[:3]]
    there = [await login(b, name) for name in CROWD[3:]]
    try:
        await until_online(there[0], *CROWD[:3])
        await until_online(here[0], *CROWD[3:])
        redis_cli(redis, "CONFIG", "RESETSTAT")
        stored = await here[0].send({"to": "crowd", "isGroup": True, "text": "all six"})
        for member in here + there:
            assert (await member.next_push("chatMessage"))["_id"] == stored["_id"]
        assert publishes(redis) == 1  # the frame and the three recipients on b, once
    finally:
        await close(*here, *there)


@pytest_twisted.ensureDeferred
async def test_typing_crosses_nodes(cluster):
    a, b = cluster(), cluster()
    alice, bob, carol = await login(a, "alice"), await login(b, "bob"), await login(b, "carol")
    try:
        await until_online(alice, "bob", "carol")
        assert await alice.request("typing", {"to": "bob"}) == {}
        assert await bob.next_push("typing") == {"from": "alice", "to": "bob"}
        assert await alice.request("typing", {"to": "team", "isGroup": True}) == {}
        expected = {"from": "alice", "to": "team", "isGroup": True}
        assert await bob.next_push("typing") == expected
        assert await carol.next_push("typing") == expected
        await until_online(bob, "alice")
        assert await bob.request("typing", {"to": "alice"}) == {}
        assert await alice.next_push("typing") == {"from": "bob", "to": "alice"}
    finally:
        await close(alice, bob, carol)


# -- presence across the cluster --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_watchers_hear_of_users_on_other_nodes_coming_and_going(cluster):
    a, b = cluster(), cluster()
    alice = await login(a, "alice")
    try:
        assert await alice.request("watchPresence", {"ids": ["bob", "carol"]}) == {
            "bob": False,
            "carol": False,
        }
        bob = await login(b, "bob")
        assert await alice.next_push("presence") == {"id": "bob", "online": True}
        assert await alice.request("watchPresence", {"ids": ["bob", "carol"]}) == {
            "bob": True,
            "carol": False,
        }
        second = await login(b, "bob")  # already online: nothing new
        await close(bob)
        left = time.monotonic()
        await close(second)
        assert await alice.next_push("presence", timeout=NOTICE) == {"id": "bob", "online": False}
        assert time.monotonic() - left >= GRACE * 0.9  # after the grace, not at once
        assert await alice.request("watchPresence", {"ids": ["bob"]}) == {"bob": False}
    finally:
        await close(alice)


@pytest_twisted.ensureDeferred
async def test_a_reload_within_the_grace_is_no_departure(cluster):
    a, b = cluster(), cluster()
    alice, bob, carol = await login(a, "alice"), await login(b, "bob"), await login(b, "carol")
    try:
        await until_online(alice, "bob", "carol")  # now watching both
        await close(bob)
        bob = await login(a, "bob")  # back at once, on another node
        await close(carol)
        # carol's "offline" is due after bob's would have been: once it is
        # here, bob's would be too.
        assert await alice.next_push("presence", timeout=NOTICE) == {
            "id": "carol",
            "online": False,
        }
        assert alice.pending_pushes("presence") == []
    finally:
        await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_the_users_of_a_killed_node_go_offline_within_seconds(cluster):
    a, b = cluster(), cluster()
    alice, bob = await login(a, "alice"), await login(b, "bob")
    try:
        await until_online(alice, "bob")
        b.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await bob.closed
        assert await alice.next_push("presence", timeout=NOTICE) == {"id": "bob", "online": False}
        assert time.monotonic() - killed < 10  # heartbeat TTL 3 s, checks 1 s, grace 2 s
        assert await alice.request("watchPresence", {"ids": ["bob"]}) == {"bob": False}
        assert a.wait_for_log(b"stopped answering; its users are offline"), a.log.decode()
    finally:
        await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_a_node_started_later_knows_who_is_online(cluster):
    a, b = cluster(), cluster()
    alice, bob = await login(a, "alice"), await login(b, "bob")
    # An id that reads as a number keeps its leading zeros through the map.
    agent = await login(b, "007")
    carol = None
    try:
        await until_online(alice, "bob", "007")
        c = cluster()  # loads the map when it connects
        carol = await login(c, "carol")
        ids = ["alice", "bob", "dave", "007", "7"]
        assert await carol.request("watchPresence", {"ids": ids}) == {
            "alice": True,
            "bob": True,
            "dave": False,
            "007": True,
            "7": False,
        }
        stored = await carol.send({"to": "team", "isGroup": True, "text": "hello from c"})
        for member in (alice, bob, carol):
            assert (await member.next_push("chatMessage"))["_id"] == stored["_id"]
    finally:
        await close(alice, bob, agent, carol)


@pytest_twisted.ensureDeferred
async def test_routing_and_presence_recover_after_redis_restarts(cluster, redis):
    a, b = cluster(), cluster()
    alice, bob = await login(a, "alice"), await login(b, "bob")
    carol = None
    try:
        await until_online(alice, "bob")
        marks = {node: node.log.count(b"Redis: subscribed") for node in (a, b)}
        redis.stop()  # Redis forgets everything: it keeps nothing on disk
        for node in (a, b):
            assert node.wait_for_log(b"Redis: connection to"), node.log.decode()
        redis.start()
        for node, seen in marks.items():  # each reloads the map and re-announces its users
            assert node.wait_for_log(b"Redis: subscribed", timeout=30, count=seen + 1), (
                node.log.decode()
            )
        # bob never looked offline, and alice's node still routes to him.
        assert await alice.request("watchPresence", {"ids": ["bob", "carol"]}) == {
            "bob": True,
            "carol": False,
        }
        stored = await alice.send({"to": "bob", "text": "after the restart"})
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
        carol = await login(b, "carol")
        assert await alice.next_push("presence") == {"id": "carol", "online": True}
        await close(bob)
        assert await alice.next_push("presence", timeout=NOTICE) == {"id": "bob", "online": False}
        assert alice.pending_pushes("presence") == []  # bob never went offline before
        assert users_in_redis(redis) == {"alice", "carol"}  # the map in Redis is whole again
    finally:
        await close(alice, bob, carol)


@pytest_twisted.ensureDeferred
async def test_a_node_stopping_cleanly_leaves_nothing_behind(cluster, redis):
    a, b = cluster(), cluster()
    alice, bob = await login(a, "alice"), await login(b, "bob")
    try:
        await until_online(alice, "bob")
        assert users_in_redis(redis) == {"alice", "bob"}
        b.stop()  # SIGTERM: says goodbye to bob, then to the cluster
        # Gone from Redis at once, not when its heartbeat would have expired.
        assert len(redis_cli(redis, "SMEMBERS", "chatserver:nodes").split()) == 1
        alive = redis_cli(redis, "--scan", "--pattern", "chatserver:node:*:alive").split()
        assert len(alive) == 1
        assert users_in_redis(redis) == {"alice"}
        assert await alice.next_push("presence", timeout=NOTICE) == {"id": "bob", "online": False}
        assert b"stopped answering" not in a.log  # it said it was leaving
    finally:
        await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_a_node_stalled_past_its_heartbeat_comes_back_with_its_users(cluster):
    a, b = cluster(), cluster()
    alice, bob = await login(a, "alice"), await login(b, "bob")
    try:
        await until_online(alice, "bob")
        b.process.send_signal(signal.SIGSTOP)  # alive, but silent: taken for dead
        try:
            assert await alice.next_push("presence", timeout=NOTICE) == {
                "id": "bob",
                "online": False,
            }
        finally:
            b.process.send_signal(signal.SIGCONT)
        # Its next heartbeat finds it was removed; it announces its users again.
        assert await alice.next_push("presence", timeout=NOTICE) == {"id": "bob", "online": True}
        assert b.wait_for_log(b"taken for dead"), b.log.decode()
        stored = await alice.send({"to": "bob", "text": "welcome back"})
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
    finally:
        await close(alice, bob)
