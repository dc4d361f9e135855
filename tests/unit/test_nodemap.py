"""The cluster's decisions on a fake clock: which nodes a push is published to,
presence across nodes with its grace, and forgetting a node whose heartbeat
expired. :class:`NodeMap` is fed what Redis would deliver; a
:class:`RedisCluster` that was never started is fed the bytes other nodes
publish, and counts what it could not publish (Redis is down) per node."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.task import Clock

from chatserver.cluster import RedisCluster
from chatserver.nodemap import NodeMap
from tests.unit.fakes import Connection, server


class Watcher:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def presence_changed(self, user_id: str, online: bool) -> None:
        self.seen.append((user_id, online))


def make(grace: float = 2.0) -> tuple[NodeMap, set[str], Clock, Watcher]:
    local: set[str] = set()
    clock = Clock()
    nodes = NodeMap(local, clock, grace)
    watcher = Watcher()
    nodes.observers.append(watcher)
    return nodes, local, clock, watcher


# -- routing -----------------------------------------------------------------


def test_a_push_to_local_or_absent_users_goes_to_no_node():
    nodes, local, _, _ = make()
    local.update({"alice", "bob"})
    nodes.announce("n2", ["carol"], [])
    assert nodes.route(["alice", "bob", "nobody"]) == {}


def test_a_group_push_goes_once_to_each_node_holding_members():
    nodes, local, _, _ = make()
    local.update({"m0", "m1"})
    nodes.announce("n2", ["m2", "m3", "m4"], [])
    nodes.announce("n3", ["m5"], [])
    nodes.announce("n4", ["outsider"], [])
    route = nodes.route([f"m{n}" for n in range(6)])
    assert {node: sorted(users) for node, users in route.items()} == {
        "n2": ["m2", "m3", "m4"],
        "n3": ["m5"],
    }


def test_a_user_on_two_other_nodes_is_sent_to_both_and_departures_stop_it():
    nodes, _, _, _ = make()
    nodes.announce("n2", ["bob"], [])
    nodes.announce("n3", ["bob"], [])
    assert sorted(nodes.route(["bob"])) == ["n2", "n3"]
    nodes.announce("n2", [], ["bob"])
    assert nodes.route(["bob"]) == {"n3": ["bob"]}
    nodes.replace("n3", [])  # its full state: no one
    assert nodes.route(["bob"]) == {}


# -- presence ----------------------------------------------------------------


def test_the_first_session_anywhere_is_online_at_once_and_the_last_offline_after_the_grace():
    nodes, local, clock, watcher = make(grace=2.0)
    nodes.announce("n2", ["bob"], [])
    assert watcher.seen == [("bob", True)]
    nodes.announce("n3", ["bob"], [])  # a second device elsewhere: nothing new
    local.add("bob")
    nodes.local_arrived("bob")  # and a third here
    assert watcher.seen == [("bob", True)]
    nodes.announce("n2", [], ["bob"])
    local.discard("bob")
    nodes.local_left("bob")
    nodes.forget("n3")
    clock.advance(1.9)
    assert watcher.seen == [("bob", True)]
    assert nodes.online(["bob"]) == {"bob": True}  # as watchers were told
    assert nodes.route(["bob"]) == {}  # but no node holds him any more
    clock.advance(0.1)
    assert watcher.seen == [("bob", True), ("bob", False)]
    assert nodes.online(["bob"]) == {"bob": False}


def test_coming_back_within_the_grace_is_no_departure():
    nodes, local, clock, watcher = make(grace=2.0)
    nodes.announce("n2", ["bob"], [])
    nodes.announce("n2", [], ["bob"])  # a reload...
    clock.advance(1)
    local.add("bob")
    nodes.local_arrived("bob")  # ...that lands on this node
    clock.advance(10)
    assert watcher.seen == [("bob", True)]
    local.discard("bob")
    nodes.local_left("bob")
    clock.advance(2)
    assert watcher.seen == [("bob", True), ("bob", False)]


def test_duplicate_and_empty_announcements_change_nothing():
    nodes, _, clock, watcher = make()
    nodes.announce("n2", ["bob"], [])
    nodes.announce("n2", ["bob"], [])
    nodes.replace("n2", ["bob"])
    nodes.announce("n2", [], ["nobody"])
    clock.advance(5)
    assert watcher.seen == [("bob", True)]
    assert nodes.nodes() == ["n2"]


# -- liveness ----------------------------------------------------------------


def test_a_node_whose_heartbeat_expired_is_forgotten_with_its_users():
    nodes, _, clock, watcher = make(grace=2.0)
    nodes.announce("n2", ["bob", "carol"], [])
    nodes.announce("n3", ["dave"], [])
    assert nodes.expired(["n2", "unknown"]) == ["n2"]
    assert nodes.nodes() == ["n3"]
    assert nodes.route(["bob", "carol", "dave"]) == {"n3": ["dave"]}
    clock.advance(2)
    assert sorted(watcher.seen[-2:]) == [("bob", False), ("carol", False)]


def test_after_a_reconnection_missing_nodes_are_spared_for_a_while():
    nodes, _, clock, watcher = make(grace=2.0)
    nodes.announce("n2", ["bob"], [])
    nodes.announce("n3", ["carol"], [])
    # Back from an outage: the snapshot has n3 (with someone new) but not n2,
    # which may not have reconnected yet.
    nodes.reconnected({"n3": ["carol", "dave"]}, spare=10.0)
    assert nodes.expired(["n2"]) == []  # spared
    assert nodes.online(["bob", "dave"]) == {"bob": True, "dave": True}
    clock.advance(5)
    nodes.announce("n2", [], [])  # it is back: no longer spared
    assert nodes.expired(["n2"]) == ["n2"]
    nodes.announce("n2", ["bob"], [])
    nodes.reconnected({}, spare=10.0)
    clock.advance(10)
    assert nodes.expired(["n2", "n3"]) == ["n2", "n3"]  # stayed away too long
    clock.advance(2)
    assert ("bob", False) in watcher.seen and ("dave", False) in watcher.seen


# -- the cluster, fed what Redis would deliver ------------------------------------


def announce(cluster: RedisCluster, node: bytes, **news: object) -> None:
    cluster.received(cluster.presence_channel, node + orjson.dumps(news))


NODE_2 = b"2" * 16
NODE_3 = b"3" * 16


def node_with_alice(**options: object) -> tuple[Clock, RedisCluster, Any, Connection]:
    """A node (its Redis unreachable: what it would publish counts as dropped)
    on a fake clock, with alice signed in on it."""
    clock = Clock()
    cluster = RedisCluster("redis://127.0.0.1:1/0", reactor=clock, **options)
    app, _ = server(clock, cluster=cluster)
    alice = Connection(app, clock)
    alice.request("authorize", {"token": "alice-token"})
    return clock, cluster, app, alice


def test_with_redis_down_a_push_counts_one_drop_per_other_node_holding_recipients():
    _, cluster, app, alice = node_with_alice()
    alice.messages()
    announce(cluster, NODE_2, on=["bob"])
    announce(cluster, NODE_3, users=["carol", "bob"])
    app.api.send("note", {}, ["alice"])
    assert cluster.dropped == 0  # only here: nothing to publish
    app.api.send("note", {}, ["alice", "bob", "carol"])
    assert cluster.dropped == 2  # one per other node, not one per recipient
    assert [m["type"] for m in alice.messages()] == ["note", "note"]


def test_pushes_published_for_this_node_reach_the_named_local_users():
    clock, cluster, app, alice = node_with_alice()
    bob = Connection(app, clock)
    bob.request("authorize", {"token": "bob-token"})
    alice.messages(), bob.messages()
    payload = orjson.dumps({"type": "note", "data": {"n": 1}})
    cluster.received(cluster.node_channel, NODE_2 + orjson.dumps(["alice"]) + b"\n" + payload)
    assert alice.messages() == [{"type": "note", "data": {"n": 1}}]
    assert bob.messages() == []
    cluster.received(cluster.node_channel, NODE_2 + b"not json\n{}")  # ignored, logged
    assert cluster.received_count == 1


def test_watchers_here_hear_of_users_on_other_nodes_and_of_a_node_leaving():
    clock, cluster, _, alice = node_with_alice(presence_grace=2.0)
    alice.request("watchPresence", {"ids": ["bob"]}, request_id="w")
    assert alice.messages()[-1] == {"id": "w", "data": {"bob": False}}
    announce(cluster, NODE_2, on=["bob"])
    assert alice.messages() == [{"type": "presence", "data": {"id": "bob", "online": True}}]
    announce(cluster, NODE_2, gone=True)  # a clean stop
    assert alice.messages() == []
    clock.advance(2)
    assert alice.messages() == [{"type": "presence", "data": {"id": "bob", "online": False}}]
    assert cluster.online(["bob", "alice"]) == {"bob": False, "alice": True}


def test_metrics_say_how_many_nodes_and_users_the_cluster_has():
    _, cluster, _, _ = node_with_alice()
    announce(cluster, NODE_2, users=["bob", "alice"])
    announce(cluster, NODE_3, on=["carol"])
    figures = {m.name: m.samples[0].value for m in cluster.collect()}
    assert figures["chat_redis_nodes"] == 2
    assert figures["chat_redis_users_online"] == 3
    assert figures["chat_redis_connected"] == 0
