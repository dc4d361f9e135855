"""Presence on one node: at once when a user arrives, after a grace when they go."""

from __future__ import annotations

from twisted.internet.task import Clock

from chatserver.delivery import SessionRegistry
from chatserver.nodemap import LocalPresence
from chatserver.protocol import text_frame
from chatserver.server import PRESENCE_GRACE
from chatserver.session import Session
from tests.unit.fakes import Link


class Watcher:
    def __init__(self) -> None:
        self.changes: list[tuple[str, bool]] = []

    def presence_changed(self, user_id: str, online: bool) -> None:
        self.changes.append((user_id, online))


def setup() -> tuple[Clock, SessionRegistry, LocalPresence, Watcher]:
    clock = Clock()
    registry = SessionRegistry(text_frame)
    presence = LocalPresence(registry, clock)
    watcher = Watcher()
    presence.observers.append(watcher)
    return clock, registry, presence, watcher


def test_offline_comes_after_the_grace():
    clock, registry, presence, watcher = setup()
    tab = Session(Link(), None)
    registry.add("bob", tab)
    assert watcher.changes == [("bob", True)]
    registry.remove("bob", tab)
    assert presence.online(["bob"]) == {"bob": True}  # still within the grace
    clock.advance(PRESENCE_GRACE - 0.1)
    assert watcher.changes == [("bob", True)]
    clock.advance(0.1)
    assert watcher.changes == [("bob", True), ("bob", False)]
    assert presence.online(["bob"]) == {"bob": False}


def test_a_reload_within_the_grace_is_not_seen():
    clock, registry, presence, watcher = setup()
    old, new = Session(Link(), None), Session(Link(), None)
    registry.add("bob", old)
    registry.remove("bob", old)
    clock.advance(PRESENCE_GRACE / 2)
    registry.add("bob", new)
    clock.advance(PRESENCE_GRACE * 2)
    assert watcher.changes == [("bob", True)]
    assert presence.online(["bob", "carol"]) == {"bob": True, "carol": False}
