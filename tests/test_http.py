"""The HTTP side of the port: page, health, readiness, metrics, and the
WebSocket reached on any path, all through the service the plugin builds."""

from __future__ import annotations

import orjson
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, readBody

from chatserver.client import connect
from chatserver.options import Options
from chatserver.tap import make_service


@pytest_twisted.async_yield_fixture
async def start():
    running = []

    async def start(*args: str):
        options = Options()
        options.parseOptions(["--endpoint", "tcp:0:interface=127.0.0.1", "--rate", "0", *args])
        service = make_service(options)
        service.startService()
        port = await list(service)[-1].whenListening()
        running.append(service)
        return service, f"127.0.0.1:{port.getHost().port}"

    yield start
    for service in running:
        await service.stopService()


async def get(url: str) -> tuple[int, bytes, str]:
    response = await Agent(reactor).request(b"GET", url.encode())
    body = await readBody(response)
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
    return response.code, body, content_type


@pytest_twisted.ensureDeferred
async def test_page_health_and_ready(start, tmp_path):
    _, host = await start("--storage", f"sqlite:{tmp_path / 'chat.sqlite3'}")
    code, body, kind = await get(f"http://{host}/")
    assert (code, kind) == (200, "text/html")
    assert b"<html" in body.lower()
    assert (await get(f"http://{host}/app.js"))[0] == 200
    assert (await get(f"http://{host}/no-such-file"))[0] == 404
    code, body, kind = await get(f"http://{host}/health")
    assert (code, orjson.loads(body), kind) == (200, {"status": "ok"}, "application/json")
    code, body, _ = await get(f"http://{host}/ready")
    assert (code, orjson.loads(body)) == (200, {"storage": "ok", "status": "ready"})


@pytest_twisted.ensureDeferred
async def test_no_web_keeps_health_and_the_websocket(start):
    _, host = await start("--no-web", "--dev-auth", "--storage", "memory")
    assert (await get(f"http://{host}/"))[0] == 404
    assert (await get(f"http://{host}/health"))[0] == 200
    client = await connect(f"ws://{host}/")
    assert (await client.authorize(name="x"))["id"] == "x"
    client.sendClose()
    await client.closed


def metric(text: bytes, name: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


@pytest_twisted.ensureDeferred
async def test_metrics_follow_a_chat_and_the_directory_lists_people(start):
    _, host = await start("--dev-auth", "--storage", "memory")
    before = (await get(f"http://{host}/metrics"))[1]
    assert metric(before, "chat_messages_stored_total") == 0
    alice = await connect(f"ws://{host}/ws")  # any path upgrades
    bob = await connect(f"ws://{host}/some/other/path")
    info = await alice.request("serverInfo")
    assert info["devAuth"] is True and info["version"]
    await alice.authorize(name="alice")
    await bob.authorize(name="bob")
    stored = await alice.send({"to": "bob", "text": "counted"})
    await bob.next_push("chatMessage")
    with pytest.raises(Exception):  # noqa: B017
        await alice.request("noSuchAction")
    directory = await alice.request("getUsersAndGroups")
    assert directory["users"] == [{"id": "bob", "name": "bob", "online": True}]
    after = (await get(f"http://{host}/metrics"))[1]
    assert metric(after, "chat_messages_stored_total") == 1
    assert metric(after, "chat_pushes_total") == 2  # bob, and alice's own copy
    assert metric(after, "chat_connections_authorized") == 2
    assert 'chat_requests_total{action="create",outcome="ok"} 1.0' in after.decode()
    assert 'chat_requests_total{action="unknown",outcome="unknownAction"} 1.0' in after.decode()
    assert 'chat_errors_total{code="unknownAction"} 1.0' in after.decode()
    assert 'chat_storage_call_seconds_count{operation="create"} 1.0' in after.decode()
    assert stored["text"] == "counted"
    for client in (alice, bob):
        client.sendClose()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_an_upgrade_over_tcp_hands_the_socket_to_the_websocket_protocol(start):
    """The first request head is read by the port; a WebSocket's socket then
    delivers straight to the WebSocket protocol (no reader in between), and
    plain HTTP still reaches twisted.web on the same port."""
    service, address = await start("--storage", "memory", "--dev-auth")
    client = await connect(f"ws://{address}/any/path")
    await client.authorize(id="alice")
    [connection] = service.factory.connections
    assert connection.transport.protocol is connection
    code, body, _ = await get(f"http://{address}/health")
    assert (code, orjson.loads(body)) == (200, {"status": "ok"})
    client.sendClose()
    await client.closed
