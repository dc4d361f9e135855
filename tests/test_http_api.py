"""The HTTP server API over real HTTP against server processes: every call with
and without the key, on one node and across two nodes sharing a real Redis;
messages posted through it in history and in the conversation list; bodies
refused (413, 415, 400) before anything is done."""

from __future__ import annotations

import http.client
import secrets
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from chatserver.client import ChatClientProtocol, connect
from chatserver.protocol import CLOSE_SESSION_REVOKED
from tests.processes import ServerProcess, make_group
from tests.test_cluster import redis  # noqa: F401 (a fixture)

KEY = secrets.token_urlsafe(32)
CALLS = [
    (b"POST", "/api/send", {"type": "note", "users": ["alice"]}),
    (b"POST", "/api/broadcast", {"type": "note"}),
    (b"POST", "/api/messages", {"from": "system", "to": "alice", "text": "hi"}),
    (b"POST", "/api/disconnect", {"users": ["nobody"]}),
    (b"GET", "/api/presence?ids=alice,bob", None),
]


@dataclass
class Answer:
    code: int
    body: Any
    headers: Headers

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode() if values else None


async def call(
    server: ServerProcess,
    method: bytes,
    path: str,
    body: Any = None,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
    content_type: str | None = "application/json",
) -> Answer:
    """One HTTP request to ``server``; the answer's body parsed as JSON."""
    headers = Headers()
    if key is not None:
        headers.addRawHeader(b"authorization", f"Bearer {key}".encode())
    if content_type is not None:
        headers.addRawHeader(b"content-type", content_type.encode())
    if raw is None and body is not None:
        raw = orjson.dumps(body)
    producer = FileBodyProducer(BytesIO(raw)) if raw is not None else None
    url = f"{server.http_url}{path}".encode()
    response = await Agent(reactor).request(method, url, headers, producer)
    content = await body_of(response)
    kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
    parsed = orjson.loads(content) if kind.startswith(b"application/json") else content
    return Answer(response.code, parsed, response.headers)


class _Body(Protocol):
    """Collects a response's body (``readBody`` warns about Agent's own
    transport wrapper)."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason=connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def body_of(response) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done))
    return done


def key_file(directory: Path) -> Path:
    path = directory / "api.keys"
    path.write_text(f"# the backend's key\n{KEY}\n")
    return path


@pytest.fixture
def api_node(tmp_path):
    """A node with the API, dev sign-in and group ``team`` (alice, bob)."""
    db = tmp_path / "chat.sqlite3"
    make_group(f"sqlite:{db}", "team", "alice", "bob", cwd=tmp_path)
    node = ServerProcess.twistd(
        "--storage",
        f"sqlite:{db}",
        "--dev-auth",
        "--rate",
        "0",
        "--api-key-file",
        str(key_file(tmp_path)),
        cwd=tmp_path,
    )
    yield node
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


async def eventually(check, timeout: float = 10.0) -> None:
    """Ask again, at most every 20 ms, until ``check()`` fires true (for
    what another process does after answering us, e.g. forgetting a session)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await deferLater(reactor, 0.02, lambda: None)


# -- the key ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_call_needs_the_key(api_node):
    for method, path, body in CALLS:
        for key in (None, "wrong", KEY + "x", KEY[:-1]):
            answer = await call(api_node, method, path, body, key=key)
            assert answer.code == 401, (path, key)
            assert answer.body["error"] == "authorizationFailed"
            assert answer.header("www-authenticate").startswith("Bearer")
        answer = await call(api_node, method, path, body)
        assert answer.code == 200, (path, answer.body)
    assert (await call(api_node, b"POST", "/api/send", {}, key=None)).code == 401
    # The description is public: it holds no secret, and tools fetch it.
    answer = await call(api_node, b"GET", "/api/openapi.json", key=None)
    assert answer.code == 200 and answer.body["openapi"].startswith("3.")
    metrics = (await call(api_node, b"GET", "/metrics", key=None)).body.decode()
    assert 'chat_api_requests_total{call="send",outcome="ok"} 1.0' in metrics
    assert "chat_api_unauthorized_total 21.0" in metrics


# -- the calls ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_and_broadcast_reach_the_users_connections(api_node):
    alice, alice_too, bob = (
        await login(api_node, "alice"),
        await login(api_node, "alice"),
        await login(api_node, "bob"),
    )
    answer = await call(
        api_node, b"POST", "/api/send", {"type": "invoice", "data": {"n": 7}, "users": ["alice"]}
    )
    assert (answer.code, answer.body) == (200, {"delivered": 2})
    assert await alice.next_push("invoice") == {"n": 7}
    assert await alice_too.next_push("invoice") == {"n": 7}
    answer = await call(api_node, b"POST", "/api/broadcast", {"type": "notice", "data": "down"})
    assert (answer.code, answer.body) == (200, {"delivered": 3})
    assert await bob.next_push("notice") == "down"
    assert bob.pending_pushes("invoice") == []
    await close(alice, alice_too, bob)


@pytest_twisted.ensureDeferred
async def test_messages_go_through_create_and_land_in_history(api_node):
    alice, bob = await login(api_node, "alice"), await login(api_node, "bob")
    body = {"from": "system", "to": "alice", "text": "Welcome!", "_id": "forged", "read": True}
    answer = await call(api_node, b"POST", "/api/messages", body)
    assert answer.code == 200, answer.body
    stored = answer.body
    assert (stored["from"], stored["to"], stored["text"]) == ("system", "alice", "Welcome!")
    assert stored["_id"] != "forged" and "read" not in stored
    assert (await alice.next_push("chatMessage"))["_id"] == stored["_id"]
    history = await alice.get_messages(**{"with": "system"})
    assert [m["_id"] for m in history] == [stored["_id"]]

    # As a member of the group, to the group: every member hears it.
    group = {"from": "alice", "to": "team", "isGroup": True, "text": "standup"}
    answer = await call(api_node, b"POST", "/api/messages", group)
    assert answer.code == 200, answer.body
    assert (await bob.next_push("chatMessage"))["_id"] == answer.body["_id"]
    # Not a member: refused as the WebSocket refuses it.
    answer = await call(api_node, b"POST", "/api/messages", {**group, "from": "mallory"})
    assert (answer.code, answer.body["error"]) == (403, "notGroupMember")

    # clientMessageId: a retry stores nothing twice; another message under it conflicts.
    once = {"from": "system", "to": "bob", "text": "once", "clientMessageId": "m-1"}
    first = await call(api_node, b"POST", "/api/messages", once)
    again = await call(api_node, b"POST", "/api/messages", once)
    assert first.code == again.code == 200
    assert first.body["_id"] == again.body["_id"]
    other = await call(api_node, b"POST", "/api/messages", {**once, "text": "twice"})
    assert (other.code, other.body["error"]) == (409, "conflict")
    assert len(await bob.get_messages(**{"with": "system"})) == 1

    for bad in ({"to": "alice"}, {"from": "system"}, {"from": "", "to": "a"}, {"from": 1.5}):
        answer = await call(api_node, b"POST", "/api/messages", bad)
        assert (answer.code, answer.body["error"]) == (400, "invalidMessage"), bad
    await close(alice, bob)


@pytest_twisted.ensureDeferred
async def test_disconnect_ends_the_users_sessions_with_4000(api_node):
    alice, alice_too, bob = (
        await login(api_node, "alice"),
        await login(api_node, "alice"),
        await login(api_node, "bob"),
    )
    answer = await call(
        api_node, b"POST", "/api/disconnect", {"users": ["alice"], "reason": "account closed"}
    )
    assert (answer.code, answer.body) == (200, {"disconnected": 2})
    for client in (alice, alice_too):
        assert await client.closed == (CLOSE_SESSION_REVOKED, "account closed")
    answer = await call(api_node, b"POST", "/api/disconnect", {"users": ["bob"]})
    assert await bob.closed == (CLOSE_SESSION_REVOKED, "session ended by the server")


@pytest_twisted.ensureDeferred
async def test_presence(api_node):
    alice = await login(api_node, "alice")
    answer = await call(api_node, b"GET", "/api/presence?ids=alice,bob,%C3%A9mile")
    assert (answer.code, answer.body) == (200, {"alice": True, "bob": False, "émile": False})
    # More ids than a URL holds: POST them.
    many = ["alice", *(f"user-{n:04d}" for n in range(999))]
    answer = await call(api_node, b"POST", "/api/presence", {"users": many})
    assert answer.code == 200
    assert [user for user, online in answer.body.items() if online] == ["alice"]
    assert len(answer.body) == 1000
    await close(alice)

    async def gone() -> bool:
        return (await call(api_node, b"GET", "/api/presence?ids=alice")).body == {"alice": False}

    await eventually(gone)
    too_long = "?ids=" + ",".join(["u"] * 513)  # 1025 characters
    for query in ("", "?ids=", "?ids=a,,b", "?other=a", "?ids=a&ids=b", too_long):
        answer = await call(api_node, b"GET", "/api/presence" + query)
        assert (answer.code, answer.body["error"]) == (400, "invalidRequest"), query


# -- what is refused before anything is done --------------------------------------


@pytest_twisted.ensureDeferred
async def test_malformed_calls_get_json_errors(api_node):
    post = "/api/send"
    cases = [
        (b"POST", post, dict(raw=b"{}", content_type="text/plain"), 415),
        (b"POST", post, dict(raw=b"{}", content_type=None), 415),
        (b"POST", post, dict(raw=b"{not json"), 400),
        (b"POST", post, dict(raw=b"[1]"), 400),
        (b"POST", post, dict(raw=b""), 400),
        (b"POST", post, dict(raw=b'{"type": "x", "users": [], "data": "\\ud800"}'), 400),
        (b"POST", post, dict(raw=b'{"type": "x", "users": [], "data": 1e400}'), 400),
        (
            b"POST",
            post,
            dict(raw=b'{"type": "x", "users": [], "data": ' + b"[" * 40 + b"]" * 40 + b"}"),
            400,
        ),
        (b"POST", post, dict(body={"type": "x", "users": ["a"], "extra": 1}), 400),
        (b"POST", post, dict(body={"type": "x", "users": ["u"] * 1001}), 400),
        (b"GET", post, {}, 405),
        (b"PUT", post, dict(body={}), 405),
        (b"DELETE", "/api/presence", {}, 405),
        (b"POST", "/api/presence", dict(body={}), 400),
        (b"POST", "/api/nope", dict(body={}), 404),
        (b"GET", "/api/send/more", {}, 404),
        (b"GET", "/api", {}, 404),
    ]
    for method, path, kwargs, code in cases:
        answer = await call(api_node, method, path, **kwargs)
        assert answer.code == code, (method, path, kwargs, answer.body)
        assert set(answer.body) == {"error", "message"}, answer.body
    answer = await call(api_node, b"GET", "/api/send")
    assert answer.header("allow") == "POST"
    answer = await call(api_node, b"PUT", "/api/presence")
    assert answer.header("allow") == "GET, POST"
    assert b"Traceback" not in api_node.log


def test_an_oversized_body_is_refused_with_413_unread(api_node):
    connection = http.client.HTTPConnection("127.0.0.1", api_node.port, timeout=10)
    body = orjson.dumps({"type": "x", "users": ["alice"], "data": "x" * 70_000})
    connection.request(
        "POST",
        "/api/send",
        body,
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 413
    assert orjson.loads(response.read())["error"] == "tooLarge"
    connection.close()


@pytest_twisted.ensureDeferred
async def test_the_api_is_off_by_default(tmp_path):
    node = ServerProcess.twistd("--storage", "memory", "--dev-auth", cwd=tmp_path)
    try:
        for method, path, body in CALLS:
            answer = await call(node, method, path, body)
            assert answer.code in (404, 405), path
            assert not isinstance(answer.body, dict), answer.body
        assert (await call(node, b"GET", "/api/openapi.json")).code == 404
    finally:
        node.stop()


# -- the conversation list ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_api_messages_appear_in_the_conversation_list(api_node):
    alice = await login(api_node, "alice")
    body = {"from": "shop", "to": "alice", "text": "your order shipped"}
    direct = (await call(api_node, b"POST", "/api/messages", body)).body
    group = {"from": "bob", "to": "team", "isGroup": True, "text": "lunch?"}
    in_group = (await call(api_node, b"POST", "/api/messages", group)).body
    listed = await alice.request("getConversations", {})
    entries = {(c["with"], c["isGroup"]): c for c in listed["conversations"]}
    assert entries[("shop", False)]["last"]["_id"] == direct["_id"]
    assert entries[("shop", False)]["unread"] == 1
    assert entries[("team", True)]["last"]["_id"] == in_group["_id"]
    assert [c["with"] for c in listed["conversations"]] == ["team", "shop"]  # newest first
    await close(alice)


# -- two nodes -----------------------------------------------------------------------


@pytest.fixture
def two_nodes(tmp_path, redis):  # noqa: F811 (the fixture imported above)
    db = tmp_path / "shared.sqlite3"
    make_group(f"sqlite:{db}", "team", "alice", "bob", cwd=tmp_path)
    keys = key_file(tmp_path)
    nodes = []
    for _ in range(2):
        node = ServerProcess.twistd(
            "--redis",
            redis.url,
            "--storage",
            f"sqlite:{db}",
            "--dev-auth",
            "--rate",
            "0",
            "--api-key-file",
            str(keys),
            cwd=tmp_path,
        )
        nodes.append(node)
        assert node.wait_for_log(b"Redis: subscribed"), node.log.decode()
    yield nodes
    for node in nodes:
        node.stop()


async def until_present(node: ServerProcess, **expected: bool) -> None:
    """Wait until ``node``'s /api/presence says ``expected`` (other nodes'
    announcements take a moment to arrive)."""
    deadline = time.monotonic() + 10
    while True:
        answer = await call(node, b"POST", "/api/presence", {"users": list(expected)})
        if answer.body == expected:
            return
        assert time.monotonic() < deadline, answer.body
        await deferLater(reactor, 0.05)  # polling another process; there is no event to await


@pytest_twisted.ensureDeferred
async def test_calls_on_one_node_reach_users_on_the_other(two_nodes):
    a, b = two_nodes
    alice, bob = await login(a, "alice"), await login(b, "bob")
    await until_present(a, bob=True)  # a routes to b only once it knows bob is there
    for method, path, body in CALLS:  # the key works on each node
        assert (await call(b, method, path, body, key=None)).code == 401
    answer = await call(a, b"POST", "/api/send", {"type": "ping", "data": 1, "users": ["bob"]})
    assert (answer.code, answer.body) == (200, {"delivered": 0})  # none on this node
    assert await bob.next_push("ping") == 1
    answer = await call(a, b"POST", "/api/broadcast", {"type": "notice", "data": "all"})
    assert answer.body == {"delivered": 1}
    assert await alice.next_push("notice") == await bob.next_push("notice") == "all"

    answer = await call(a, b"POST", "/api/messages", {"from": "alice", "to": "bob", "text": "x"})
    assert answer.code == 200
    assert (await bob.next_push("chatMessage"))["_id"] == answer.body["_id"]
    assert (await alice.next_push("chatMessage"))["_id"] == answer.body["_id"]
    group = {"from": "bob", "to": "team", "isGroup": True, "text": "from b's user, via a"}
    answer = await call(a, b"POST", "/api/messages", group)
    assert (await alice.next_push("chatMessage"))["_id"] == answer.body["_id"]
    assert [m["_id"] for m in await bob.get_messages(**{"with": "team", "isGroup": True})] == [
        answer.body["_id"]
    ]

    answer = await call(a, b"POST", "/api/disconnect", {"users": ["bob"], "reason": "bye"})
    assert (answer.code, answer.body) == (200, {"disconnected": 0})
    assert await bob.closed == (CLOSE_SESSION_REVOKED, "bye")
    await close(alice)


@pytest_twisted.ensureDeferred
async def test_presence_across_nodes(two_nodes):
    a, b = two_nodes
    alice, bob = await login(a, "alice"), await login(b, "bob")
    try:
        await until_present(a, bob=True)
        await until_present(b, alice=True)
        answer = await call(a, b"GET", "/api/presence?ids=alice,bob,carol")
        assert answer.body == {"alice": True, "bob": True, "carol": False}
        answer = await call(b, b"GET", "/api/presence?ids=alice,bob,carol")
        assert answer.body == {"alice": True, "bob": True, "carol": False}
        await close(bob)
        await until_present(a, bob=False)  # after the grace
    finally:
        await close(alice, bob)


def test_a_backends_keep_alive_connection_is_not_evicted_as_pending(tmp_path):
    """Connections that have not signed in are capped (the oldest makes
    room); one that presented the API key no longer counts among them."""
    node = ServerProcess.twistd(
        "--storage",
        "memory",
        "--max-pending-connections",
        "2",
        "--api-key-file",
        str(key_file(tmp_path)),
        cwd=tmp_path,
    )
    headers = {"Authorization": f"Bearer {KEY}"}
    backend = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    others = []
    try:
        backend.request("GET", "/api/presence?ids=a", headers=headers)
        assert backend.getresponse().read() == b'{"a":false}'
        for _ in range(3):  # each admitted, and still pending, once answered
            other = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
            other.request("GET", "/health")
            assert other.getresponse().read() == b'{"status":"ok"}'
            others.append(other)
        backend.request("GET", "/api/presence?ids=b", headers=headers)
        assert backend.getresponse().read() == b'{"b":false}'
        # The first of the others was evicted to make room for the third.
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            others[0].request("GET", "/health")
            others[0].getresponse().read()
    finally:
        for connection in (backend, *others):
            connection.close()
        node.stop()
