"""Fuzz the protocol against a live server process: arbitrary frames, then a
well-behaved pair of users must still chat, and the server must still run
without having logged a single unhandled error."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.processes import ServerProcess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3000" if os.environ.get("CI") else "600"))
REPLY_TIMEOUT = 5.0

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
ids = st.one_of(st.integers(), st.text(max_size=200), json_values)
actions = st.one_of(
    st.sampled_from(["authorize", "create", "getMessages", "read", "nope", "", "__init__"]),
    st.text(max_size=300),
    json_values,
)
message_data = st.fixed_dictionaries(
    {},
    optional={
        "to": st.one_of(st.sampled_from(["alice", "bob", "team", ""]), json_values),
        "isGroup": json_values,
        "text": st.text(max_size=200),
        "with": st.one_of(st.sampled_from(["alice", "bob"]), json_values),
        "skip": st.one_of(st.integers(), json_values),
        "limit": st.one_of(st.integers(), json_values),
        "id": json_values,
        "clientMessageId": json_values,
        "name": st.one_of(st.text(max_size=80), json_values),
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={"type": actions, "id": ids, "data": st.one_of(message_data, json_values)},
)


def encode(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits: send them anyway
        import json

        return json.dumps(value).encode()


frames = st.one_of(
    requests.map(lambda r: (encode(r), False)),
    json_values.map(lambda v: (encode(v), False)),
    st.text(max_size=200).map(lambda t: (t.encode(), False)),
    st.binary(max_size=200).map(lambda b: (b, False)),  # mostly invalid UTF-8 as text
    st.binary(max_size=200).map(lambda b: (b, True)),
    requests.map(lambda r: (encode(r), True)),
    st.integers(1, 3000).map(lambda n: (b"[" * n + b"]" * n, False)),
    st.integers(1, 3000).map(lambda n: (b'{"a":' * n + b"1" + b"}" * n, False)),
)


# Request heads: mostly a WebSocket handshake with parts replaced or added,
# read first by the port's HeadReader and then by Autobahn (an Upgrade
# header) or twisted.web (none).
header_names = st.sampled_from(
    [
        b"Host",
        b"Upgrade",
        b"Connection",
        b"Sec-WebSocket-Key",
        b"Sec-WebSocket-Version",
        b"Origin",
        b"Sec-WebSocket-Protocol",
        b"Sec-WebSocket-Extensions",
        b"Content-Length",
        b"Transfer-Encoding",
        b"upgrade",
        b"UPGRADE",
        b"X-\xff\x00",
        b"",
        b" Upgrade",
    ]
)
header_values = st.one_of(
    st.sampled_from(
        [
            b"websocket",
            b"Upgrade",
            b"13",
            b"8",
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b"",
            b"x" * 300,
            b"https://evil.example",
            b"null",
            b"permessage-deflate; client_max_window_bits",
            b"chunked",
            b"-1",
            b"99999999999999999999",
            b"\xff\xfe",
            b"websocket, h2c",
        ]
    ),
    st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
request_lines = st.one_of(
    st.sampled_from(
        [
            b"GET / HTTP/1.1",
            b"GET /chat?token=x HTTP/1.1",
            b"POST / HTTP/1.1",
            b"GET / HTTP/1.0",
            b"GET / HTTP/2.0",
            b"GET /%00 HTTP/1.1",
            b"GET",
            b"",
            b"GET  HTTP/1.1",
            b"\xff\xfe / HTTP/1.1",
            b"GET /\xc3\x28 HTTP/1.1",
            b"GET http://x/ HTTP/1.1",
        ]
    ),
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
VALID_HANDSHAKE = [
    (b"Host", b"127.0.0.1"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
]


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    headers = list(VALID_HANDSHAKE)
    for _ in range(draw(st.integers(0, 4))):
        change = draw(st.sampled_from(["replace", "drop", "add", "duplicate"]))
        if change == "replace" and headers:
            i = draw(st.integers(0, len(headers) - 1))
            headers[i] = (headers[i][0], draw(header_values))
        elif change == "drop" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif change == "add":
            headers.append((draw(header_names), draw(header_values)))
        elif headers:
            headers.append(draw(st.sampled_from(headers)))
    lines = [draw(request_lines), *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Harness:
    """The server process, a fuzzing connection, and two well-behaved users.

    A plain blocking client (the websockets library) drives it: the server is
    another process, so nothing here shares its event loop.
    """

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.fuzzer: ClientConnection | None = None
        self.authorized = False
        self.alice = self._login("alice")
        self.bob = self._login("bob")
        self.sent = 0

    def _login(self, name: str) -> ClientConnection:
        client = ws_connect(self.server.url, open_timeout=REPLY_TIMEOUT, max_size=None, legacy=True)
        client.send(orjson.dumps({"type": "authorize", "data": {"name": name}, "id": 0}).decode())
        assert "error" not in orjson.loads(client.recv(REPLY_TIMEOUT))
        return client

    def fuzz_once(self, payload: bytes, is_binary: bool, authorize: bool) -> str:
        if self.fuzzer is None:
            self.fuzzer = ws_connect(
                self.server.url, open_timeout=REPLY_TIMEOUT, max_size=None, legacy=True
            )
            self.authorized = False
        if authorize and not self.authorized:
            self.fuzzer.send('{"type": "authorize", "data": {"name": "mallory"}, "id": 0}')
            assert "error" not in orjson.loads(self.fuzzer.recv(REPLY_TIMEOUT))
            self.authorized = True
        try:
            self.fuzzer.send(payload, text=not is_binary)
            # Exactly one answer: a reply (a frame without "type"), or a close.
            while True:
                frame = orjson.loads(self.fuzzer.recv(REPLY_TIMEOUT))
                if "type" not in frame:
                    return "reply"
        except ConnectionClosed as closed:
            self.fuzzer = None
            return f"closed {closed.rcvd.code if closed.rcvd else 'without a close frame'}"
        except TimeoutError:
            return "no answer"

    def still_chats(self) -> None:
        """alice → bob works: alice gets her ack, bob his push. The fuzzer may
        have sent them pushes of its own (it can message anyone): skip those."""
        self.sent += 1
        n = self.sent
        self.alice.send(
            orjson.dumps({"type": "create", "data": {"to": "bob", "n": n}, "id": n}), text=True
        )
        ack = self._next(self.alice, lambda f: f.get("id") == n and "type" not in f)
        assert ack["data"]["n"] == n, ack
        self._next(self.bob, lambda f: f.get("type") == "chatMessage" and f["data"].get("n") == n)

    @staticmethod
    def _next(client: ClientConnection, wanted: Callable[[dict], bool]) -> dict:
        for _ in range(100):
            frame = orjson.loads(client.recv(REPLY_TIMEOUT))
            if wanted(frame):
                return frame
        raise AssertionError("the expected frame never came")

    def close(self) -> None:
        for client in (self.fuzzer, self.alice, self.bob):
            if client is not None:
                client.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    server = ServerProcess.twistd(
        "--dev-auth",
        "--rate",
        "0",
        "--max-frame-bytes",
        "65536",
        "--max-request-bytes",
        "65536",
        cwd=tmp_path_factory.mktemp("fuzz"),
    )
    try:
        harness = Harness(server)
        yield harness
        harness.close()
    finally:
        alive = server.process.poll() is None
        server.stop()
        log = server.log.decode(errors="replace")
        assert alive, log
        assert "Unhandled Error" not in log, log
        assert "Traceback" not in log, log


def test_arbitrary_frames_never_hurt_the_server(harness):
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(frame=frames, authorize=st.booleans())
    def fuzz(frame, authorize):
        payload, is_binary = frame
        outcome = harness.fuzz_once(payload, is_binary, authorize)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert outcome in ("reply", "closed 1003", "closed 1007", "closed 1008", "closed 1009"), (
            payload[:200],
            is_binary,
        )
        harness.still_chats()

    fuzz()
    # Not a tautology: a strategy that stopped reaching a branch would show here.
    assert outcomes.get("reply", 0) > 0, outcomes
    assert outcomes.get("closed 1007", 0) > 0, outcomes
    assert outcomes.get("closed 1003", 0) > 0, outcomes


def answer_to(port: int, head: bytes) -> bytes:
    """Send ``head`` on a new connection; what the server answers before it
    closes (or before a WebSocket it accepted is closed by us)."""
    with socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


def test_arbitrary_request_heads_never_hurt_the_server(harness):
    """Every head gets an HTTP answer (101 for a valid handshake, an error
    status otherwise), never a traceback, and chat goes on."""
    port = harness.server.port
    statuses: dict[bytes, int] = {}

    @settings(
        max_examples=EXAMPLES // 3,
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(head=heads())
    def fuzz(head):
        answer = answer_to(port, head)
        assert answer[:7] == b"HTTP/1." and answer[8:9] == b" ", (head, answer[:200])
        status = answer[9:12]
        statuses[status] = statuses.get(status, 0) + 1
        # 101, the page (a head without an Upgrade header is plain HTTP), the
        # client's fault (4xx) or its HTTP version refused (505); never the
        # server's own failure (500).
        assert status[:1] in (b"1", b"2", b"4") or status == b"505", (head, answer[:200])
        harness.still_chats()

    fuzz()
    assert statuses.get(b"101", 0) > 0, statuses
    assert statuses.get(b"400", 0) > 0, statuses
