"""Custom actions, events, and the server-side push API."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from chatserver import ChatError, build_server
from chatserver.client import RequestFailed
from tests.conftest import demo_storage


def whoami(connection, data):
    return {"user": connection.user["id"], "echo": data}


def slow_sum(connection, data):
    return deferLater(reactor, 0, lambda: sum(data["numbers"]))


def refuse(connection, data):
    raise ChatError("quotaExceeded", "you have sent enough today")


def crash(connection, data):
    raise ZeroDivisionError("secret internals")


def server_time(connection, data):
    return {"authorized": connection.user is not None}


@pytest.fixture
def app():
    return build_server(
        demo_storage(),
        actions={"whoami": whoami, "sum": slow_sum, "refuse": refuse, "crash": crash},
        open_actions={"serverTime": server_time},
    )


@pytest_twisted.ensureDeferred
async def test_custom_actions_get_the_user_and_return_values_or_deferreds(serve, app):
    server = await serve(app)
    alice = await server.login("alice")
    assert await alice.request("whoami", {"x": 1}) == {"user": "alice", "echo": {"x": 1}}
    assert await alice.request("sum", {"numbers": [1, 2, 3]}) == 6


@pytest_twisted.ensureDeferred
async def test_custom_action_errors(serve, app):
    server = await serve(app)
    alice = await server.login("alice")
    with pytest.raises(RequestFailed) as info:
        await alice.request("refuse")
    assert (info.value.code, info.value.message) == ("quotaExceeded", "you have sent enough today")
    with pytest.raises(RequestFailed) as info:
        await alice.request("crash")
    assert info.value.code == "actionFailed"
    assert "secret" not in info.value.message
    assert (await alice.request("whoami"))["user"] == "alice"


@pytest_twisted.ensureDeferred
async def test_open_actions_run_before_authorize_others_do_not(serve, app):
    server = await serve(app)
    guest = await server.connect()
    assert await guest.request("serverTime") == {"authorized": False}
    with pytest.raises(Exception):  # noqa: B017 - the connection is closed under it
        await guest.request("whoami")
    code, _ = await guest.closed
    assert code == 1008


def test_custom_actions_cannot_replace_builtins():
    with pytest.raises(ValueError, match="create"):
        build_server(demo_storage(), actions={"create": whoami})


def test_storage_must_provide_the_interface():
    with pytest.raises(TypeError, match="IChatStorage"):
        build_server(object())


@pytest_twisted.ensureDeferred
async def test_events_fire_with_the_connection(serve, app):
    seen: list[tuple[str, object]] = []
    closed: Deferred = Deferred()
    for event in ("socketConnected", "socketAuthorized"):
        app.api.on(event, lambda conn, event=event: seen.append((event, conn.user_id)))

    @app.api.on("socketClosed")
    def on_closed(conn):
        seen.append(("socketClosed", conn.user_id))
        closed.callback(None)

    app.api.on("socketAuthorized", lambda conn: 1 / 0)  # a broken listener harms no one
    server = await serve(app)
    alice = await server.login("alice")
    alice.sendClose()
    await closed
    assert seen == [
        ("socketConnected", None),
        ("socketAuthorized", "alice"),
        ("socketClosed", "alice"),
    ]
    assert app.registry.sessions("alice") == frozenset()


@pytest_twisted.ensureDeferred
async def test_send_and_broadcast_from_the_server(serve, app):
    server = await serve(app)
    alice = await server.login("alice")
    bob = await server.login("bob")
    bob2 = await server.login("bob")
    guest = await server.connect()
    assert app.api.send("notice", {"text": "maintenance at noon"}, ["bob", "nobody"]) == 2
    assert await bob.next_push("notice") == {"text": "maintenance at noon"}
    assert await bob2.next_push("notice") == {"text": "maintenance at noon"}
    assert app.api.broadcast("hello", [1, 2]) == 3
    for client in (alice, bob, bob2):
        assert await client.next_push("hello") == [1, 2]
    await guest.request("serverTime")  # a round trip: any push would have arrived
    assert guest.pending_pushes("hello") == []
    assert alice.pending_pushes("notice") == []


@pytest_twisted.ensureDeferred
async def test_a_push_is_encoded_once_for_all_its_recipients(serve):
    app = build_server(demo_storage())
    server = await serve(app)
    members = [await server.login(u) for u in ("alice", "bob", "carol", "alice", "bob")]
    framed, pushes = app.registry.frames, app.registry.pushes
    await members[0].send({"to": "team", "isGroup": True, "text": "to five connections"})
    for member in members:
        await member.next_push("chatMessage")
    assert app.registry.pushes - pushes == 5
    assert app.registry.frames - framed == 1


ACTIONS = {"whoami": whoami, "sum": slow_sum}
