"""The built-in actions over real loopback WebSockets."""

from __future__ import annotations

import re

import pytest
import pytest_twisted

from chatserver.client import RequestFailed

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def failure_code(d) -> str:
    with pytest.raises(RequestFailed) as info:
        await d
    return info.value.code


@pytest_twisted.ensureDeferred
async def test_authorize_returns_the_user(server):
    client = await server.connect()
    user = await client.authorize(token="alice-token")
    assert user == {"id": "alice", "name": "Alice"}


@pytest_twisted.ensureDeferred
async def test_authorize_refuses_a_bad_token_and_allows_a_retry(server):
    client = await server.connect()
    assert await failure_code(client.authorize(token="nope")) == "authorizationFailed"
    assert await failure_code(client.authorize()) == "authorizationFailed"
    assert (await client.authorize(token="bob-token"))["id"] == "bob"


@pytest_twisted.ensureDeferred
async def test_direct_message_is_stored_then_pushed_to_both_sides(server):
    alice = await server.login("alice")
    bob = await server.login("bob")
    stored = await alice.send({"to": "bob", "text": "hi bob", "from": "mallory", "_id": "x"})
    assert stored["from"] == "alice"  # never what the client claims
    assert stored["to"] == "bob"
    assert stored["text"] == "hi bob"
    assert stored["_id"] != "x"
    assert ISO_MS.match(stored["createdAt"])
    assert await bob.next_push("chatMessage") == stored
    assert await alice.next_push("chatMessage") == stored


@pytest_twisted.ensureDeferred
async def test_integer_ids_are_strings_on_the_server(server):
    # chat-client's README authorizes with {token: 123}; ids may be numbers too.
    server.app.storage.authorize_as("123", {"id": 7})
    seven = await server.connect()
    assert (await seven.authorize(token=123))["id"] == 7
    alice = await server.login("alice")
    stored = await alice.send({"to": 7, "text": "to a number"})
    assert stored["to"] == "7"
    assert (await seven.next_push("chatMessage"))["_id"] == stored["_id"]


@pytest_twisted.ensureDeferred
async def test_every_connection_of_a_user_gets_the_push(server):
    bob_phone = await server.login("bob")
    bob_laptop = await server.login("bob")
    alice = await server.login("alice")
    stored = await alice.send({"to": "bob", "text": "both devices"})
    assert await bob_phone.next_push("chatMessage") == stored
    assert await bob_laptop.next_push("chatMessage") == stored
    bob_phone.sendClose()
    await bob_phone.closed
    again = await alice.send({"to": "bob", "text": "laptop only"})
    assert await bob_laptop.next_push("chatMessage") == again
    assert len(server.app.registry.sessions("bob")) == 1


@pytest_twisted.ensureDeferred
async def test_message_to_self_is_pushed_once_per_connection(server):
    alice = await server.login("alice")
    stored = await alice.send({"to": "alice", "text": "note to self"})
    assert await alice.next_push("chatMessage") == stored
    await alice.get_messages(**{"with": "alice"})  # a round trip: any duplicate has arrived
    assert alice.pending_pushes("chatMessage") == []


@pytest_twisted.ensureDeferred
async def test_group_message_reaches_every_member(server):
    alice, bob, carol = [await server.login(u) for u in ("alice", "bob", "carol")]
    stored = await alice.send({"to": "team", "isGroup": True, "text": "standup"})
    assert stored["isGroup"] is True
    for member in (alice, bob, carol):
        assert await member.next_push("chatMessage") == stored


@pytest_twisted.ensureDeferred
async def test_non_member_cannot_post_to_a_group_and_nothing_is_stored(server):
    dave = await server.login("dave")
    alice = await server.login("alice")
    code = await failure_code(dave.send({"to": "team", "isGroup": True, "text": "let me in"}))
    assert code == "notGroupMember"
    history = await alice.get_messages(**{"with": "team", "isGroup": True})
    assert history == []
    assert alice.pending_pushes("chatMessage") == []


@pytest_twisted.ensureDeferred
async def test_history_is_newest_first_with_skip_and_limit(server):
    alice = await server.login("alice")
    bob = await server.login("bob")
    sent = [await alice.send({"to": "bob", "n": n}) for n in range(15)]
    sent += [await bob.send({"to": "alice", "n": n}) for n in range(15, 20)]
    newest_first = [m["n"] for m in reversed(sent)]

    page = await bob.get_messages(**{"with": "alice"})
    assert [m["n"] for m in page] == newest_first[:10]  # limit 10 by default
    page = await alice.get_messages(**{"with": "bob", "skip": 10, "limit": 5})
    assert [m["n"] for m in page] == newest_first[10:15]
    assert await alice.get_messages(**{"with": "carol"}) == []


@pytest_twisted.ensureDeferred
async def test_history_limit_is_capped(server):
    alice = await server.login("alice")
    for n in range(105):
        await alice.send({"to": "bob", "n": n})
    assert len(await alice.get_messages(**{"with": "bob", "limit": 1000})) == 100


@pytest.mark.parametrize(
    "query",
    [
        {"with": "bob", "skip": -1},
        {"with": "bob", "limit": -5},
        {"with": "bob", "limit": "10"},
        {"with": "bob", "skip": 1.5},
        {"with": "bob", "limit": True},
        {"with": ["bob"]},
        {},
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_history_queries_are_refused(server, query):
    alice = await server.login("alice")
    assert await failure_code(alice.get_messages(**query)) == "invalidQuery"


@pytest_twisted.ensureDeferred
async def test_group_history_is_for_members_only(server):
    alice = await server.login("alice")
    bob = await server.login("bob")
    dave = await server.login("dave")
    await alice.send({"to": "team", "isGroup": True, "text": "one"})
    await bob.send({"to": "team", "isGroup": True, "text": "two"})
    history = await alice.get_messages(**{"with": "team", "isGroup": True})
    assert [m["text"] for m in history] == ["two", "one"]
    code = await failure_code(dave.get_messages(**{"with": "team", "isGroup": True}))
    assert code == "notGroupMember"


@pytest_twisted.ensureDeferred
async def test_read_by_the_recipient_tells_the_sender(server):
    alice = await server.login("alice")
    bob = await server.login("bob")
    stored = await alice.send({"to": "bob", "text": "did you see this?"})
    # chat-client's README passes the id itself as data: read(msg._id).
    updated = await bob.request("read", stored["_id"])
    assert updated["read"] is True
    assert (await alice.next_push("messageRead"))["_id"] == stored["_id"]


@pytest_twisted.ensureDeferred
async def test_only_a_recipient_can_mark_read(server):
    alice = await server.login("alice")
    carol = await server.login("carol")
    stored = await alice.send({"to": "bob", "text": "private"})
    assert await failure_code(carol.read(stored["_id"])) == "notFound"
    assert await failure_code(alice.read(stored["_id"])) == "notFound"
    assert await failure_code(carol.read("no-such-message")) == "notFound"
    assert await failure_code(carol.request("read", {"id": ["x"]})) == "invalidRequest"


@pytest_twisted.ensureDeferred
async def test_group_read_is_tracked_per_member(server):
    alice, bob, carol = [await server.login(u) for u in ("alice", "bob", "carol")]
    dave = await server.login("dave")
    stored = await alice.send({"to": "team", "isGroup": True, "text": "read me"})
    await bob.read(stored["_id"])
    updated = await carol.read(stored["_id"])
    assert updated["readBy"] == ["bob", "carol"]
    assert await failure_code(dave.read(stored["_id"])) == "notFound"
    assert (await alice.next_push("messageRead"))["readBy"] == ["bob"]
