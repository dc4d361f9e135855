"""Sessions whose user carries ``exp`` end at that time (close 4001 "token
expired"); a later ``authorize`` replaces the deadline. On a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import succeed
from zope.interface import implementer

from chatserver import AuthorizerOverride, ChatError, IAuthorizer
from chatserver.errors import Ending
from chatserver.events import SOCKET_CLOSED
from chatserver.protocol import CLOSE_TOKEN_EXPIRED
from tests.unit.fakes import Connection, demo_storage, server
from tests.unit.test_handler import World, outcome


@implementer(IAuthorizer)
class Passes:
    """An application's authorizer: each token names a user object."""

    def __init__(self, users: dict) -> None:
        self.users = users

    def authorize(self, credentials):
        return succeed(self.users.get(credentials.get("token")))


def world_with(users: dict) -> World:
    return World(AuthorizerOverride(demo_storage(), Passes(users)))


def sign_in(world: World, session, token: str):
    _, result = world.run(session, "authorize", {"token": token})
    return outcome(result)


def test_a_session_ends_when_its_users_exp_passes():
    world = world_with({"t": {"id": "alice", "exp": 100}})
    session, link = world.session()
    world.clock.advance(40)
    assert sign_in(world, session, "t")["id"] == "alice"
    world.clock.advance(59.9)
    assert link.ended == []
    world.clock.advance(0.1)
    assert link.ended == [(Ending.EXPIRED, "token expired")]
    assert world.handler.sessions_expiring() == 0


def test_a_fresh_authorize_replaces_the_deadline():
    world = world_with(
        {
            "short": {"id": "alice", "exp": 10},
            "long": {"id": "alice", "exp": 30},
            "forever": {"id": "alice"},
        }
    )
    session, link = world.session()
    sign_in(world, session, "short")
    world.clock.advance(5)
    sign_in(world, session, "long")
    world.clock.advance(10)  # past the first exp
    assert link.ended == []
    world.clock.advance(15)
    assert link.ended == [(Ending.EXPIRED, "token expired")]

    session, link = world.session()
    sign_in(world, session, "long")
    sign_in(world, session, "forever")  # no exp: no deadline any more
    world.clock.advance(1000)
    assert link.ended == []
    assert world.clock.getDelayedCalls() == []


def test_a_refused_renewal_keeps_the_deadline_it_had():
    world = world_with({"t": {"id": "alice", "exp": 10}, "stale": {"id": "alice", "exp": 1}})
    session, link = world.session()
    sign_in(world, session, "t")
    world.clock.advance(5)
    error = sign_in(world, session, "stale")
    assert isinstance(error, ChatError) and error.code == "authorizationFailed"
    assert session.user_id == "alice"
    world.clock.advance(5)
    assert link.ended == [(Ending.EXPIRED, "token expired")]


def test_an_exp_already_past_refuses_the_authorize():
    world = world_with({"t": {"id": "alice", "exp": 10}, "now": {"id": "alice", "exp": 20}})
    world.clock.advance(20)
    for token in ("t", "now"):
        session, _ = world.session()
        error = sign_in(world, session, token)
        assert isinstance(error, ChatError) and error.code == "authorizationFailed"
        assert "expired" in error.message
        assert session.user is None
    assert "alice" not in world.registry


@pytest.mark.parametrize("exp", ["100", True, float("nan"), float("inf"), [1]])
def test_an_exp_that_is_not_a_number_is_a_storage_error(exp):
    world = world_with({"t": {"id": "alice", "exp": exp}})
    session, _ = world.session()
    error = sign_in(world, session, "t")
    assert isinstance(error, ChatError) and error.code == "storageError"
    assert session.user is None


def test_a_closed_session_forgets_its_deadline():
    world = world_with({"t": {"id": "alice", "exp": 3600}})
    session, _link = world.session()
    sign_in(world, session, "t")
    assert len(world.clock.getDelayedCalls()) == 1
    session.closed = True
    world.events.emit(SOCKET_CLOSED, session)
    assert world.clock.getDelayedCalls() == []
    assert world.handler.sessions_expiring() == 0


def test_users_without_exp_never_expire():
    world = World()
    _session, link = world.signed_in("alice")
    assert world.clock.getDelayedCalls() == []
    world.clock.advance(10**9)
    assert link.ended == []


def test_the_client_sees_a_close_4001_token_expired():
    storage = AuthorizerOverride(demo_storage(), Passes({"t": {"id": "alice", "exp": 50}}))
    app, clock = server(storage=storage)
    connection = Connection(app, clock)
    connection.request("authorize", {"token": "t"})
    [reply] = connection.messages()
    assert reply["data"]["id"] == "alice"
    clock.advance(49)
    assert connection.close_frame() is None
    clock.advance(1)
    assert connection.close_frame() == (CLOSE_TOKEN_EXPIRED, "token expired")
