"""Malformed and unauthorized requests: each gets a reply or a coded close, and
the server keeps serving everyone else."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from chatserver import IChatStorage, MemoryStorage
from chatserver.client import RequestFailed
from tests.conftest import add_demo_users


async def assert_others_still_chat(server, sender: str = "alice", to: str = "bob") -> None:
    one = await server.login(sender)
    other = await server.login(to)
    stored = await one.send({"to": to, "text": "still here"})
    assert (await other.next_push("chatMessage"))["_id"] == stored["_id"]


async def raw_reply(client, payload: bytes, is_binary: bool = False) -> dict:
    client.send_raw(payload, is_binary)
    return await client.next_unmatched()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b'{"id": 1, "data": {}}', "invalidRequest"),  # no type
        (b'{"id": 1, "type": 5, "data": {}}', "invalidRequest"),
        (b'{"id": 1, "type": "", "data": {}}', "invalidRequest"),
        (b'{"id": 1, "type": "nope", "data": {}}', "unknownAction"),
        (b'{"id": 1, "type": "create", "data": "text"}', "invalidMessage"),
        (b'{"id": 1, "type": "create", "data": {"text": "no to"}}', "invalidMessage"),
        (b'{"id": 1, "type": "create", "data": {"to": {"$ne": 1}}}', "invalidMessage"),
        (b'{"id": 1, "type": "getMessages", "data": [1]}', "invalidQuery"),
        (b'{"id": 1, "type": "read", "data": {}}', "invalidRequest"),
        (b'{"id": 1, "type": "authorize", "data": "token"}', "invalidRequest"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_an_error_reply_with_their_id(server, frame, code):
    client = await server.login("dave")
    client.send_raw(frame.replace(b'"id": 1', b'"id": 900'))
    reply = await client.next_unmatched()
    assert reply["id"] == 900
    assert reply["error"] == code
    assert isinstance(reply["message"], str)
    assert "Traceback" not in reply["message"]
    await assert_others_still_chat(server)


@pytest_twisted.ensureDeferred
async def test_numbers_beyond_what_javascript_can_hold_are_refused_by_id(server):
    client = await server.login("alice")
    frame = b'{"id": 12345678901234567890123, "type": "create", "data": {"to": "bob", "n": 1e400}}'
    reply = await raw_reply(client, frame)
    assert reply["id"] is None  # such an id is not an integer a client can match
    assert reply["error"] == "invalidId"
    frame = b'{"id": 5, "type": "create", "data": {"to": "bob", "big": 123456789012345678901234}}'
    reply = await raw_reply(client, frame)
    assert reply["id"] == 5
    # A JavaScript client could not read it back: refused before storage sees it.
    assert reply["error"] == "invalidRequest"


@pytest.mark.parametrize(
    "request_id", [b"null", b"[1]", b"{}", b"true", b"1.5", b'"' + b"x" * 500 + b'"']
)
@pytest_twisted.ensureDeferred
async def test_a_request_with_an_unusable_id_is_answered_with_a_null_id(server, request_id):
    client = await server.login("dave")
    reply = await raw_reply(client, b'{"type": "create", "data": {}, "id": ' + request_id + b"}")
    assert reply == {"id": None, "error": "invalidId", "message": reply["message"]}
    await assert_others_still_chat(server)


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"a string"', b"{", b"[" * 5000])
@pytest_twisted.ensureDeferred
async def test_a_frame_that_is_not_a_json_object_closes_with_1007(server, payload):
    client = await server.login("dave")
    client.send_raw(payload)
    code, reason = await client.closed
    assert code == 1007
    assert reason
    await assert_others_still_chat(server)


@pytest_twisted.ensureDeferred
async def test_a_binary_frame_is_answered_by_id_or_closed_with_1003(server):
    client = await server.login("dave")
    reply = await raw_reply(client, b'{"id": 4, "type": "getMessages", "data": {}}', True)
    assert reply["id"] == 4
    assert reply["error"] == "invalidRequest"
    client.send_raw(b"\x00\xff\x10", is_binary=True)
    code, reason = await client.closed
    assert code == 1003
    assert "binary" in reason
    await assert_others_still_chat(server)


@pytest.mark.parametrize("action", ["getMessages", "create", "read", "nope"])
@pytest_twisted.ensureDeferred
async def test_requests_before_authorize_close_with_1008(server, action):
    client = await server.connect()
    with pytest.raises(Exception):  # noqa: B017 - the request dies with the connection
        await client.request(action, {"with": "bob", "to": "bob"})
    code, reason = await client.closed
    assert code == 1008
    assert "authorize" in reason
    await assert_others_still_chat(server)


@implementer(IChatStorage)
class FlakyStorage(MemoryStorage):
    """A store whose calls fail whenever the message or query says so."""

    def create(self, message):
        if message.get("text") == "explode":
            raise RuntimeError("disk on fire")
        if message.get("text") == "fail":
            return fail(OSError("connection reset"))
        return super().create(message)

    def getMessages(self, query):
        if query.get("boom"):
            return fail(RuntimeError("query failed"))
        return super().getMessages(query)

    def authorize(self, credentials):
        if credentials.get("token") == "no-id":
            return succeed({"name": "nameless"})
        return super().authorize(credentials)


@pytest_twisted.ensureDeferred
async def test_storage_failures_give_storage_error_and_nothing_is_pushed(serve, make_server):
    storage = add_demo_users(FlakyStorage())
    server = await serve(make_server(storage))
    alice = await server.login("alice")
    bob = await server.login("bob")
    for text in ("explode", "fail"):
        with pytest.raises(RequestFailed) as info:
            await alice.send({"to": "bob", "text": text})
        assert info.value.code == "storageError"
        assert "fire" not in info.value.message
    with pytest.raises(RequestFailed) as info:
        await alice.get_messages(**{"with": "bob", "boom": True})
    assert info.value.code == "storageError"
    with pytest.raises(RequestFailed) as info:
        await (await server.connect()).authorize(token="no-id")
    assert info.value.code == "storageError"
    # The same connection carries on; bob saw none of the failed messages.
    stored = await alice.send({"to": "bob", "text": "fine"})
    assert (await bob.next_push("chatMessage"))["text"] == "fine"
    assert [m["_id"] for m in await bob.get_messages(**{"with": "alice"})] == [stored["_id"]]
