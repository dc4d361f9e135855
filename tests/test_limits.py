"""Each limit over real sockets: what a client sees when it crosses it, and
that everyone else keeps chatting."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from chatserver import Limits
from chatserver.client import ConnectionClosed, RequestFailed, connect
from tests.test_bad_input import assert_others_still_chat

UNLIMITED = {"rate": 0}


async def start(serve, make_server, **limits):
    return await serve(make_server(limits=Limits(**{**UNLIMITED, **limits})))


@pytest_twisted.ensureDeferred
async def test_a_frame_over_the_limit_closes_with_1009(serve, make_server):
    server = await start(serve, make_server, max_frame_bytes=10_000, max_request_bytes=5_000)
    client = await server.login("alice")
    client.send_raw(
        b'{"id": 1, "type": "create", "data": {"to": "bob", "text": "' + b"x" * 20_000 + b'"}}'
    )
    code, _ = await client.closed
    assert code == 1009
    await assert_others_still_chat(server)


@pytest_twisted.ensureDeferred
async def test_a_request_over_the_request_limit_gets_too_large(serve, make_server):
    server = await start(serve, make_server, max_frame_bytes=10_000, max_request_bytes=5_000)
    alice = await server.login("alice")
    with pytest.raises(RequestFailed) as info:
        await alice.send({"to": "bob", "text": "x" * 6_000})
    assert info.value.code == "tooLarge"
    assert await alice.get_messages(**{"with": "bob"}) == []  # nothing stored
    assert (await alice.send({"to": "bob", "text": "x" * 4_000}))["from"] == "alice"


@pytest_twisted.ensureDeferred
async def test_a_flood_is_rate_limited_then_disconnected(serve, make_server):
    server = await start(serve, make_server, rate=5, burst=5, max_strikes=30)
    flooder = await server.login("dave")
    bob = await server.login("bob")
    outcomes = []
    for d in [flooder.send({"to": "bob", "n": n}) for n in range(20)]:
        try:
            await d
            outcomes.append("ok")
        except RequestFailed as e:
            outcomes.append(e.code)
    assert outcomes[:4] == ["ok"] * 4  # the burst (minus one spent on authorize)
    assert outcomes.count("rateLimited") >= 14
    for n in range(100):  # keep flooding: the server hangs up
        flooder.send_raw(b'{"id": "f%d", "type": "create", "data": {"to": "bob"}}' % n)
    code, reason = await flooder.closed
    assert (code, reason) == (1008, "rate limit exceeded"), reason
    # bob got only what was accepted, and the server is fine.
    assert len(bob.pending_pushes("chatMessage")) <= outcomes.count("ok")
    await assert_others_still_chat(server)


@pytest_twisted.ensureDeferred
async def test_connections_per_user_are_capped(serve, make_server):
    server = await start(serve, make_server, max_connections_per_user=2)
    first, second = await server.login("alice"), await server.login("alice")
    third = await server.connect()
    with pytest.raises(ConnectionClosed):
        await third.authorize(token="alice-token")
    code, reason = await third.closed
    assert code == 1008
    assert "too many connections" in reason
    assert first.close_info is None and second.close_info is None
    await assert_others_still_chat(server, "bob", "carol")  # others are not affected


@pytest_twisted.ensureDeferred
async def test_connections_in_total_are_capped(serve, make_server):
    server = await start(serve, make_server, max_connections=3)
    clients = [await server.connect() for _ in range(3)]
    with pytest.raises(ConnectionClosed):
        await connect(server.url)
    clients[0].sendClose()
    await clients[0].closed
    assert (await server.connect()).close_info is None  # room again


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_dropped(serve, make_server):
    server = await start(serve, make_server, max_buffered_bytes=256 * 1024)
    app = server.app
    reader = await server.login("bob")
    stalled = await server.login("carol")
    stalled.transport.pauseProducing()  # carol's app hangs: nothing is read
    chunk = "x" * 64 * 1024
    for _ in range(1000):  # at most 64 MB, far more than any socket buffers
        if not app.registry.sessions("carol"):
            break
        app.api.send("bulk", chunk, ["carol", "bob"])
        await reader.next_push("bulk")
        await deferLater(reactor, 0, lambda: None)
    server_side = next(iter(app.registry.sessions("carol")), None)
    assert server_side is None, server_side
    assert len(app.registry.sessions("bob")) == 1
    stalled.transport.resumeProducing()
    await stalled.closed
    await assert_others_still_chat(server)


@pytest_twisted.ensureDeferred
async def test_only_allowed_origins_may_connect(serve, make_server):
    server = await serve(make_server(allowed_origins=["https://chat.example.com"]))
    with pytest.raises(ConnectionClosed):
        await connect(server.url, headers={"Origin": "https://evil.example.net"})
    ok = await connect(server.url, headers={"Origin": "https://chat.example.com"})
    await ok.authorize(token="alice-token")
    no_origin = await connect(server.url)  # not a browser: no page to speak for
    await no_origin.authorize(token="bob-token")
    for client in (ok, no_origin):
        client.sendClose()
        await client.closed
