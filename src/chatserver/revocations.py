"""Ending the live sessions of users an operator removed or disconnected.

The store records revocations (:class:`~chatserver.interfaces.ISessionRevocations`);
every node polls it and ends the revoked users' sessions it holds. Polling the
store needs no cluster and works whichever process made the change (the admin
command runs in its own process).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from chatserver.delivery import SessionRegistry
from chatserver.errors import Ending
from chatserver.interfaces import ISessionRevocations, IStorageStatus
from chatserver.logs import Throttle

DEFAULT_INTERVAL = 2.0
REASON = "session revoked"


class RevocationWatcher(Service):
    """Polls the store every ``interval`` seconds and ends revoked sessions here."""

    def __init__(
        self,
        store: ISessionRevocations,
        registry: SessionRegistry,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock
        self.interval = interval
        self._cursor: Any = None
        self._started = False
        self._loop: LoopingCall | None = None
        self._throttle = Throttle(clock)
        self.ended = 0

    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self.poll)
        loop.clock = self._clock
        loop.start(self.interval, now=True).addErrback(
            lambda f: self._throttle.failure("revocations-loop", "revocation polling stopped", f)
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return None

    def poll(self) -> Deferred[None]:
        """Ask the store once; end the sessions it names. Never fails."""
        d: Deferred[Any] = maybeDeferred(self._store.revocationsAfter, self._cursor)
        d.addCallback(self._revoked)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        status = IStorageStatus(self._store, None)
        if status is not None and status.status() != "ready":
            return  # the store says itself why it cannot answer (starting, unreachable)
        self._throttle.failure("revocations", "could not read revocations", failure)

    def _revoked(self, result: Any) -> None:
        user_ids, cursor = result
        first = not self._started
        self._started = True
        self._cursor = cursor
        if first:
            return  # what was revoked before we started ended with its process
        ids = {str(u) for u in user_ids}
        if ids:
            self.ended += self._registry.end(ids, Ending.REVOKED, REASON)
