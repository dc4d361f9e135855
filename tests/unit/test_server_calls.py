"""The server API's calls and keys, below HTTP: ``create_as`` is the very path
a session's ``create`` takes; bodies are checked strictly."""

from __future__ import annotations

import pytest
from twisted.web.test.requesthelper import DummyRequest

from chatserver.http_api import APIError, APIKeys, ServerCalls, load_api_keys
from tests.unit.test_handler import World, outcome

KEY = "k" * 40


def calls(world: World) -> ServerCalls:
    return ServerCalls(world.handler, world.api)


def result(d):
    found = []
    d.addBoth(found.append)
    return outcome(found)


def test_create_as_stores_and_pushes_as_a_sessions_create_does():
    world = World()
    _, alice_link = world.signed_in("alice")
    _, bob_link = world.signed_in("bob")
    stored = result(world.handler.create_as("alice", {"to": "bob", "text": "hi", "read": True}))
    assert (stored["from"], stored["to"], stored["text"]) == ("alice", "bob", "hi")
    assert "read" not in stored
    assert len(alice_link.frames) == len(bob_link.frames) == 1


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("text", "invalidMessage"),
        ({"text": "no to"}, "invalidMessage"),
        ({"to": "team", "isGroup": True}, "notGroupMember"),
    ],
)
def test_create_as_refuses_what_create_refuses(data, code):
    world = World()
    error = result(world.handler.create_as("carol", data))
    assert error.code == code


def test_the_messages_call_posts_as_from():
    world = World()
    _, bob_link = world.signed_in("bob")
    stored = result(calls(world).messages({"from": "alice", "to": "bob", "text": "hi"}))
    assert stored["from"] == "alice"
    assert len(bob_link.frames) == 1
    for body in ({"to": "bob"}, {"from": "", "to": "bob"}, {"from": ["a"], "to": "bob"}):
        with pytest.raises(APIError) as caught:
            calls(world).messages(body)
        assert caught.value.code == "invalidMessage"
    with pytest.raises(APIError):
        calls(world).messages({"from": "alice", "to": "bob", "isGroup": 1})


@pytest.mark.parametrize(
    "body",
    [
        {"users": ["a"]},
        {"type": "", "users": ["a"]},
        {"type": "x" * 129, "users": ["a"]},
        {"type": 5, "users": ["a"]},
        {"type": "x"},
        {"type": "x", "users": "a"},
        {"type": "x", "users": [""]},
        {"type": "x", "users": [None]},
        {"type": "x", "users": ["u"] * 1001},
        {"type": "x", "users": ["a"], "extra": 1},
    ],
)
def test_send_bodies_are_checked(body):
    with pytest.raises(APIError) as caught:
        calls(World()).send(body)
    assert (caught.value.status, caught.value.code) == (400, "invalidRequest")


def test_send_broadcast_disconnect_and_presence():
    world = World()
    _alice, alice_link = world.signed_in("alice")
    api = calls(world)
    assert api.send({"type": "note", "data": {"n": 1}, "users": ["alice", "alice", 7]}) == {
        "delivered": 1
    }
    assert api.broadcast({"type": "note"}) == {"delivered": 1}
    assert result(api.presence({b"ids": [b"alice,bob"]})) == {"alice": True, "bob": False}
    assert api.disconnect({"users": ["alice"], "reason": "bye"}) == {"disconnected": 1}
    assert alice_link.ended[-1][1] == "bye"
    with pytest.raises(APIError):
        api.disconnect({"users": ["alice"], "reason": "x" * 124})
    for args in ({}, {b"ids": [b""]}, {b"ids": [b"a,,b"]}, {b"ids": [b"\xff"]}):
        with pytest.raises(APIError):
            api.presence(args)


def request_with(*authorization: bytes) -> DummyRequest:
    request = DummyRequest([b"send"])
    for value in authorization:
        request.requestHeaders.addRawHeader(b"authorization", value)
    return request


def test_only_one_bearer_header_with_a_key_passes():
    keys = APIKeys([KEY, "m" * 32])
    assert keys.allow(request_with(b"Bearer " + KEY.encode()))
    assert keys.allow(request_with(b"bearer " + b"m" * 32))
    assert not keys.allow(request_with())
    assert not keys.allow(request_with(b"Bearer " + KEY.encode()[:-1]))
    assert not keys.allow(request_with(b"Basic " + KEY.encode()))
    assert not keys.allow(request_with(KEY.encode()))
    assert not keys.allow(request_with(b"Bearer " + KEY.encode(), b"Bearer " + KEY.encode()))


def test_key_files(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated on Monday\n\n{KEY}\n{'m' * 32}\n")
    assert load_api_keys(path) == [KEY, "m" * 32]
    for content, message in (
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("short\n", "line 1: an API key must be at least 32"),
        (f"{KEY}\n{'x y' * 20}\n", "line 2: an API key may only hold printable ASCII"),
    ):
        path.write_text(content)
        with pytest.raises(ValueError, match=message) as caught:
            load_api_keys(path)
        assert KEY not in str(caught.value)
    with pytest.raises(ValueError, match="No such file"):
        load_api_keys(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least one key"):
        APIKeys([])
