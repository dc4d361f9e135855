"""Who is connected, and pushes to them."""

from __future__ import annotations

from twisted.internet.task import Clock

from chatserver.delivery import LocalRouter, SessionRegistry
from chatserver.errors import Ending
from chatserver.events import EventEmitter
from chatserver.nodemap import LocalPresence
from chatserver.protocol import text_frame
from chatserver.server import ServerAPI
from chatserver.session import Session
from tests.unit.fakes import Link


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def user_arrived(self, user_id: str) -> None:
        self.seen.append(("arrived", user_id))

    def user_left(self, user_id: str) -> None:
        self.seen.append(("left", user_id))


def make():
    registry = SessionRegistry(text_frame)
    api = ServerAPI(
        LocalRouter(registry), registry, LocalPresence(registry, Clock()), EventEmitter()
    )
    return registry, api


def session(api) -> tuple[Session, Link]:
    link = Link()
    return Session(link, api), link


def test_observers_hear_first_arrivals_and_last_departures():
    registry, api = make()
    observer = Observer()
    registry.observers.append(observer)
    phone, laptop = session(api)[0], session(api)[0]
    assert registry.add("bob", phone) is True
    assert registry.add("bob", laptop) is False
    assert registry.remove("bob", phone) is False
    assert registry.remove("bob", laptop) is True
    assert registry.remove("bob", laptop) is False  # a no-op
    assert observer.seen == [("arrived", "bob"), ("left", "bob")]
    assert registry.session_count == 0


def test_a_push_is_framed_once_and_only_if_someone_is_here():
    registry, api = make()
    links = []
    for user in ("a", "b", "b"):
        s, link = session(api)
        registry.add(user, s)
        links.append(link)
    assert api.send("note", {"x": 1}, ["a", "b", "nobody"]) == 3
    assert registry.frames == 1
    assert links[0].frames[0] is links[1].frames[0] is links[2].frames[0]
    assert api.send("note", {}, ["nobody"]) == 0
    assert registry.frames == 1
    assert api.broadcast("all", 1) == 3


def test_online_and_ending_sessions():
    registry, api = make()
    s, link = session(api)
    registry.add("alice", s)
    assert api.online(["alice", "bob"]) == {"alice": True, "bob": False}
    assert api.end_sessions(["alice"], "bye") == 1
    assert link.ended == [(Ending.REVOKED, "bye")]
