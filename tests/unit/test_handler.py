"""The one place that decides, on a fake clock with an in-memory store and
sessions whose link records what the handler sends."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from chatserver import ChatError, CombinedStorage, IChatStorage, MemoryStorage, SessionRefused
from chatserver.delivery import LocalRouter, SessionRegistry
from chatserver.events import EventEmitter
from chatserver.handlers import ChatHandler
from chatserver.nodemap import LocalPresence
from chatserver.protocol import text_frame
from chatserver.server import ServerAPI
from chatserver.session import Session
from tests.unit.fakes import Link, demo_storage


class World:
    def __init__(self, storage=None, **kwargs) -> None:
        self.clock = Clock()
        self.registry = SessionRegistry(text_frame)
        self.router = LocalRouter(self.registry)
        self.events = EventEmitter()
        self.api = ServerAPI(
            self.router, self.registry, LocalPresence(self.registry, self.clock), self.events
        )
        self.storage = storage or demo_storage()
        self.handler = ChatHandler(
            self.storage, self.registry, self.router, self.events, self.clock, **kwargs
        )

    def session(self) -> tuple[Session, Link]:
        link = Link()
        return Session(link, self.api, "test"), link

    def run(self, session, action, data):
        d = self.handler.handle(session, action, data)
        results = []
        d.addBoth(results.append)
        return d, results

    def signed_in(self, user):
        session, link = self.session()
        _, [result] = self.run(session, "authorize", {"token": f"{user}-token"})
        assert result["id"] == user
        return session, link


def outcome(result):
    [value] = result
    if hasattr(value, "value"):
        return value.value
    return value


def test_authorize_registers_the_session():
    world = World()
    session, _ = world.signed_in("alice")
    assert session.user_id == "alice"
    assert world.registry.sessions("alice") == {session}


def test_a_user_may_hold_a_bounded_number_of_sessions():
    world = World(max_connections_per_user=2)
    world.signed_in("alice")
    world.signed_in("alice")
    session, _ = world.session()
    _, result = world.run(session, "authorize", {"token": "alice-token"})
    assert isinstance(outcome(result), SessionRefused)
    assert "too many connections" in outcome(result).message


@implementer(IChatStorage)
class Silent(MemoryStorage):
    """A store whose create never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.hung: list[Deferred] = []

    def create(self, message):
        self.hung.append(Deferred())
        return self.hung[-1]


def test_a_storage_call_that_never_answers_times_out_on_the_clock():
    storage = Silent()
    storage.add_user("alice", token="alice-token")
    world = World(storage, storage_timeout=15)
    session, _ = world.signed_in("alice")
    _, result = world.run(session, "create", {"to": "bob"})
    world.clock.advance(14.9)
    assert result == []
    world.clock.advance(0.2)
    assert outcome(result).code == "storageTimeout"
    assert storage.hung[0].called  # cancelled, so the store can give up too


def test_a_message_is_pushed_to_both_sides_once_stored():
    world = World()
    alice, alice_link = world.signed_in("alice")
    _, bob_link = world.signed_in("bob")
    _, result = world.run(alice, "create", {"to": "bob", "text": "hi", "from": "mallory"})
    stored = outcome(result)
    assert stored["from"] == "alice"
    assert len(alice_link.frames) == len(bob_link.frames) == 1
    assert alice_link.frames[0] is bob_link.frames[0]  # framed once for both


def test_a_reused_client_message_id_must_mean_the_same_message():
    world = World()
    alice, _ = world.signed_in("alice")
    _, bob_link = world.signed_in("bob")
    _, carol_link = world.signed_in("carol")
    first = {"to": "bob", "text": "hi", "clientMessageId": "k"}
    stored = outcome(world.run(alice, "create", first)[1])
    again = outcome(world.run(alice, "create", dict(first))[1])
    assert again["_id"] == stored["_id"]
    for other in ({"to": "carol"}, {"text": "changed"}, {"isGroup": True, "to": "team"}, {"x": 1}):
        error = outcome(world.run(alice, "create", {**first, **other})[1])
        assert isinstance(error, ChatError) and error.code == "conflict", other
    assert carol_link.frames == []
    assert len(bob_link.frames) == 2  # the message, and its retry


def test_group_messages_need_membership():
    world = World()
    carol, _ = world.signed_in("carol")
    error = outcome(world.run(carol, "create", {"to": "team", "isGroup": True})[1])
    assert error.code == "notGroupMember"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"with": "bob", "before": "1", "after": "2"}, "invalidQuery"),
        ({"with": "bob", "before": "1", "skip": 2}, "invalidQuery"),
        ({"with": "bob", "after": {"$gt": 1}}, "invalidQuery"),
        ({"with": "bob", "skip": -1}, "invalidQuery"),
        ({"with": "bob", "limit": "10"}, "invalidQuery"),
        ({"with": ["bob"]}, "invalidQuery"),
    ],
)
def test_history_queries_are_checked(query, code):
    world = World()
    alice, _ = world.signed_in("alice")
    assert outcome(world.run(alice, "getMessages", query)[1]).code == code


def test_cursors_need_a_store_that_has_them():
    store = MemoryStorage()
    store.add_user("alice", token="alice-token")
    # Only the five methods of IChatStorage: no IConversationStore.
    world = World(CombinedStorage(store, store, store))
    alice, _ = world.signed_in("alice")
    error = outcome(world.run(alice, "getMessages", {"with": "bob", "after": "1"})[1])
    assert error.code == "notSupported"


def test_custom_actions_get_the_session_and_the_server_api():
    seen = []

    def action(session, data):
        seen.append((session.user_id, session.server))
        return {"ok": data}

    world = World(actions={"mine": action})
    alice, _ = world.signed_in("alice")
    assert outcome(world.run(alice, "mine", 5)[1]) == {"ok": 5}
    assert seen == [("alice", world.api)]


def test_a_failing_custom_action_is_answered_action_failed():
    def crash(session, data):
        raise ZeroDivisionError("secret")

    world = World(actions={"crash": crash})
    alice, _ = world.signed_in("alice")
    error = outcome(world.run(alice, "crash", {})[1])
    assert error.code == "actionFailed" and "secret" not in error.message


def test_unknown_actions_and_requests_before_authorize():
    world = World()
    guest, _ = world.session()
    assert isinstance(outcome(world.run(guest, "create", {})[1]), SessionRefused)
    assert outcome(world.run(guest, "serverInfo", {})[1])["version"]
    alice, _ = world.signed_in("alice")
    assert outcome(world.run(alice, "nope", {})[1]).code == "unknownAction"


@pytest_twisted.ensureDeferred
async def test_reading_tells_the_sender():
    world = World()
    alice, alice_link = world.signed_in("alice")
    bob, _ = world.signed_in("bob")
    stored = outcome(world.run(alice, "create", {"to": "bob"})[1])
    alice_link.frames.clear()
    read = outcome(world.run(bob, "read", stored["_id"])[1])
    assert read["read"] is True
    assert b'"messageRead"' in alice_link.frames[0]
    assert outcome(world.run(alice, "read", stored["_id"])[1]).code == "notFound"
