"""The protocol's additions on a fake clock: typing, presence, conversations
(through the real protocol, on in-memory transports)."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.unit.fakes import Connection, server


def signed_in(app, clock, user):
    connection = Connection(app, clock)
    connection.request("authorize", {"token": f"{user}-token"})
    assert connection.messages()[0]["data"]["id"] == user
    return connection


def pushes(connection, event_type):
    return [m["data"] for m in connection.messages() if m.get("type") == event_type]


def test_typing_reaches_the_recipient_at_most_once_a_second():
    app, clock = server()
    alice, bob = signed_in(app, clock, "alice"), signed_in(app, clock, "bob")
    for _ in range(5):
        alice.request("typing", {"to": "bob"})
    assert [m["data"] for m in alice.messages()] == [{}] * 5  # every request answered
    assert pushes(bob, "typing") == [{"from": "alice", "to": "bob"}]
    clock.advance(1)
    alice.request("typing", {"to": "bob"})
    assert pushes(bob, "typing") == [{"from": "alice", "to": "bob"}]


def test_typing_in_a_group_reaches_the_other_members_only():
    app, clock = server()
    alice, bob, carol = (signed_in(app, clock, u) for u in ("alice", "bob", "carol"))
    alice.request("typing", {"to": "team", "isGroup": True})
    assert pushes(bob, "typing") == [{"from": "alice", "to": "team", "isGroup": True}]
    assert pushes(alice, "typing") == []
    carol.request("typing", {"to": "team", "isGroup": True})
    carol.request("typing", {"to": "team", "isGroup": True})  # refused again, from memory
    assert [m["error"] for m in carol.messages()] == ["notGroupMember", "notGroupMember"]
    assert pushes(bob, "typing") == []


def test_watching_presence():
    app, clock = server()
    alice = signed_in(app, clock, "alice")
    alice.request("watchPresence", {"ids": ["bob", "carol", 7]}, request_id=1)
    assert alice.messages() == [{"id": 1, "data": {"bob": False, "carol": False, "7": False}}]
    bob = signed_in(app, clock, "bob")
    assert pushes(alice, "presence") == [{"id": "bob", "online": True}]
    second = signed_in(app, clock, "bob")
    assert pushes(alice, "presence") == []  # already online
    bob.protocol.connectionLost(Failure(ConnectionDone()))
    second.protocol.connectionLost(Failure(ConnectionDone()))
    clock.advance(5)  # past any grace
    assert pushes(alice, "presence") == [{"id": "bob", "online": False}]
    alice.request("watchPresence", {"ids": []}, request_id=2)
    alice.messages()
    signed_in(app, clock, "bob")
    assert pushes(alice, "presence") == []


def test_watch_lists_are_bounded_and_checked():
    app, clock = server()
    alice = signed_in(app, clock, "alice")
    alice.request("watchPresence", {"ids": [f"u{n}" for n in range(1001)]}, request_id=1)
    alice.request("watchPresence", {"ids": [{"$gt": ""}]}, request_id=2)
    alice.request("watchPresence", {}, request_id=3)
    assert [m["error"] for m in alice.messages()] == [
        "tooLarge",
        "invalidRequest",
        "invalidRequest",
    ]


def test_a_closed_session_stops_watching():
    app, clock = server()
    alice = signed_in(app, clock, "alice")
    alice.request("watchPresence", {"ids": ["bob"]})
    alice.protocol.connectionLost(Failure(ConnectionDone()))
    watch = app.handler._routes["watchPresence"]
    assert watch.watched_users == 0


def test_conversation_queries_are_checked():
    app, clock = server()
    alice = signed_in(app, clock, "alice")
    for n, data in enumerate(({"limit": 0}, {"limit": "5"}, {"before": 5}, {"before": "x" * 3000})):
        alice.request("getConversations", data, request_id=n)
    errors = [m.get("error") for m in alice.messages()]
    assert all(e in ("invalidQuery", "notSupported") for e in errors), errors
