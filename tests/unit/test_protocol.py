"""The network layer on a fake clock: budgets, deadlines, one reply per
request, batched writes. A real protocol fed bytes through StringTransport."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserver import IChatStorage, Limits, MemoryStorage
from tests.rawws import CONTINUATION, PING, PONG, TEXT
from tests.unit.fakes import Connection, demo_storage, server


def signed_in(app, clock, user="alice") -> Connection:
    connection = Connection(app, clock)
    connection.request("authorize", {"token": f"{user}-token"})
    [reply] = connection.messages()
    assert reply["data"]["id"] == user
    return connection


def test_authorize_deadline():
    app, clock = server(limits=Limits(rate=0, authorize_timeout=10))
    slow = Connection(app, clock)
    prompt = signed_in(app, clock)
    clock.advance(9.9)
    assert slow.close_frame() is None
    clock.advance(0.2)
    assert slow.close_frame() == (1008, "authorize timeout")
    assert prompt.close_frame() is None


def test_rate_limit_then_strikes_close_the_connection():
    app, clock = server(limits=Limits(rate=10, burst=5, max_strikes=20))
    client = signed_in(app, clock)
    for n in range(4):
        client.request("serverInfo", request_id=n)
    assert all("data" in m for m in client.messages())
    for n in range(10):
        client.request("serverInfo", request_id=100 + n)
    replies = client.messages()
    assert [m["error"] for m in replies[-9:]] == ["rateLimited"] * 9
    clock.advance(1)  # ten tokens back
    client.request("serverInfo", request_id=7)
    assert "data" in client.messages()[0]
    for n in range(30):
        client.request("serverInfo", request_id=200 + n)
    assert client.close_frame() == (1008, "rate limit exceeded")


def test_pings_cost_a_request_each_and_floods_are_closed():
    app, clock = server(limits=Limits(rate=10, burst=5, max_strikes=10))
    client = Connection(app, clock)  # before authorize, too
    for _ in range(5):
        client.send(PING, b"hi")
    assert [op for op, _ in client.received()] == [PONG] * 5
    for _ in range(20):
        client.send(PING, b"hi")
    assert client.close_frame() == (1008, "rate limit exceeded")


def test_unsolicited_pongs_are_counted():
    app, clock = server(limits=Limits(rate=10, burst=5, max_strikes=10))
    client = Connection(app, clock)
    for _ in range(30):
        client.send(PONG, b"x")
    assert client.close_frame() == (1008, "rate limit exceeded")


@implementer(IChatStorage)
class Waiting(MemoryStorage):
    """Creates wait until the test fires them."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Deferred] = []
        for user in ("alice", "bob"):
            self.add_user(user, token=f"{user}-token")

    def create(self, message):
        d = Deferred()
        self.waiting.append(d)
        return d.addCallback(lambda _: MemoryStorage.create(self, message))


def test_requests_in_flight_are_capped_and_each_gets_one_reply():
    storage = Waiting()
    app, clock = server(storage=storage, limits=Limits(rate=0, max_in_flight=3))
    client = signed_in(app, clock)
    for n in range(5):
        client.request("create", {"to": "bob", "text": f"{n}"}, request_id=n)
    refused = client.messages()
    assert [(m["id"], m["error"]) for m in refused] == [(3, "rateLimited"), (4, "rateLimited")]
    storage.waiting[0].callback(None)
    client.request("create", {"to": "bob", "text": "again"}, request_id=9)  # room for one
    for d in storage.waiting[1:]:
        d.callback(None)
    answered = [m for m in client.messages() if "id" in m]
    assert sorted(m["id"] for m in answered) == [0, 1, 2, 9]
    assert all("data" in m for m in answered)


def test_fragments_are_counted_and_capped():
    app, clock = server(limits=Limits(rate=0, max_fragments=4))
    client = signed_in(app, clock)
    payload = b'{"type": "serverInfo", "data": {}, "id": 1}'
    client.send(TEXT, payload[:10], fin=False)
    client.send(CONTINUATION, payload[10:20], fin=False)
    client.send(CONTINUATION, payload[20:], fin=True)
    assert client.messages()[0]["id"] == 1
    client.send(TEXT, b"{", fin=False)
    for _ in range(4):
        client.send(CONTINUATION, b"", fin=False)
    assert client.close_frame() == (1009, "a message may have at most 4 fragments")


def test_a_fragmented_message_must_complete_in_time():
    app, clock = server(limits=Limits(rate=0, message_timeout=10))
    client = signed_in(app, clock)
    client.send(TEXT, b"{", fin=False)
    client.send(CONTINUATION, b'"type"', fin=False)
    clock.advance(9)
    assert client.close_frame() is None
    clock.advance(1)
    assert client.close_frame() == (1008, "message not completed in time")


def test_an_abusers_connection_is_failed_and_what_it_sends_next_is_not_parsed():
    app, clock = server(limits=Limits(rate=0, max_fragments=2))
    client = signed_in(app, clock)
    client.send(TEXT, b"{", fin=False)
    client.send(CONTINUATION, b"", fin=False)
    client.send(CONTINUATION, b"", fin=False)
    assert client.close_frame()[0] == 1009
    assert client.transport.disconnecting  # closed after our Close, not waiting for theirs
    client.request("serverInfo")
    assert client.received() == []


def test_frames_of_one_turn_go_out_in_one_write():
    app, clock = server()
    alice = signed_in(app, clock)
    bob = signed_in(app, clock, "bob")
    writes: list[bytes] = []
    bob.transport.write = writes.append  # count the writes, not their content
    for n in range(3):
        alice.request("create", {"to": "bob", "text": f"{n}"})
    assert writes == []  # nothing before the end of the turn
    clock.advance(0)
    assert len(writes) == 1 and writes[0].count(b'"chatMessage"') == 3


def test_a_reply_that_cannot_be_encoded_is_answered_with_internal_error():
    def bad(session, data):
        return {"n": 2**70}

    app, clock = server(actions={"bad": bad})
    client = signed_in(app, clock)
    client.request("bad", request_id=5)
    assert client.messages() == [{"id": 5, "error": "internalError", "message": "internal error"}]
    client.request("serverInfo", request_id=6)
    assert client.messages()[0]["id"] == 6


def test_an_error_message_that_cannot_be_encoded_still_answers():
    from chatserver import ChatError

    def bad(session, data):
        raise ChatError("oops", "\ud800")

    app, clock = server(actions={"bad": bad})
    client = signed_in(app, clock)
    client.request("bad", request_id=5)
    assert client.messages() == [{"id": 5, "error": "internalError", "message": "internal error"}]


def test_requests_before_authorize_close_with_1008():
    app, clock = server()
    client = Connection(app, clock)
    client.request("create", {"to": "bob"})
    assert client.close_frame() == (1008, "not authorized: send authorize first")


def test_sessions_reach_the_registry_and_leave_it():
    app, clock = server(storage=demo_storage())
    alice = signed_in(app, clock)
    assert len(app.registry.sessions("alice")) == 1
    alice.protocol.connectionLost(Failure(ConnectionDone()))
    assert app.registry.sessions("alice") == frozenset()
    assert not app.factory.connections
