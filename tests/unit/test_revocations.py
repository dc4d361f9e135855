"""Polling the store for revoked sessions."""

from __future__ import annotations

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from chatserver.delivery import SessionRegistry
from chatserver.errors import Ending
from chatserver.protocol import text_frame
from chatserver.revocations import RevocationWatcher
from chatserver.session import Session
from tests.unit.fakes import Link


class Store:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.broken = False

    def revocationsAfter(self, cursor):
        if self.broken:
            return fail(OSError("database gone"))
        start = 0 if cursor is None else cursor
        if cursor is None:
            return succeed(([], len(self.log)))
        return succeed((self.log[start:], len(self.log)))


def test_revoked_users_lose_their_sessions_here_within_an_interval():
    clock = Clock()
    registry = SessionRegistry(text_frame)
    store = Store()
    store.log.append("alice")  # before the server started: not ours to end
    link = Link()
    registry.add("alice", Session(link, None))  # type: ignore[arg-type]
    watcher = RevocationWatcher(store, registry, clock, interval=2)
    watcher.startService()
    assert link.ended == []
    store.log.append("alice")
    store.broken = True
    clock.advance(2)  # a failing poll is logged and retried
    store.broken = False
    clock.advance(2)
    assert link.ended == [(Ending.REVOKED, "session revoked")]
    watcher.stopService()
