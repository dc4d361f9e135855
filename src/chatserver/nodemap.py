"""The cluster's presence map as one node mirrors it, and what follows from it.

:class:`NodeMap` knows which *other* nodes hold a session of which user (this
node's own users are in its :class:`~chatserver.delivery.SessionRegistry`).
From it follow the two decisions a node makes for the cluster:

- routing: a push goes to the local sessions directly and to each other node
  that holds at least one of its recipients, once, with the recipients there
  (:meth:`NodeMap.route`);
- presence: a user is online while some node, this one included, holds a
  session of theirs. Observers hear ``presence_changed(user, True)`` when the
  first such session appears and ``presence_changed(user, False)`` a short
  grace after the last one went, unless one came back meanwhile (a page
  reload, or a reconnection to another node after a node died, does not
  flicker).

A server without a cluster uses the same presence rules through
:class:`LocalPresence`, a map of no other nodes.

It does no I/O: :class:`~chatserver.cluster.RedisCluster` feeds it what the
other nodes announce and what Redis says of their heartbeats, and it needs
only a clock, so it runs as it is on ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chatserver.server import PRESENCE_GRACE, PresenceObserver

if TYPE_CHECKING:
    from chatserver.delivery import SessionRegistry


class LocalUsers(Protocol):
    """The users with a session on this node (the registry)."""

    def __contains__(self, user_id: str) -> bool: ...


class NodeMap:
    """Which other node holds which user, and the presence events it implies.

    Every method that changes the map reports the presence changes it causes
    to :attr:`observers` (arrivals at once, departures after the grace).
    """

    def __init__(
        self,
        local: LocalUsers,
        clock: IReactorTime,
        grace: float = PRESENCE_GRACE,
    ) -> None:
        """
        :param local: the users with a session on this node (the registry);
            its ``in`` must answer after a local arrival or departure is
            reported to :meth:`local_arrived` or :meth:`local_left`.
        :param clock: schedules the grace before "offline".
        :param grace: seconds between the last session going and "offline".
        """
        self._local = local
        self._clock = clock
        self._grace = grace
        self.observers: list[PresenceObserver] = []
        self._users_of: dict[str, set[str]] = {}  # other node → its users
        self._nodes_of: dict[str, set[str]] = {}  # user → the other nodes holding them
        # Node → until when it is not forgotten though its heartbeat is missing.
        self._spared_until: dict[str, float] = {}
        # User → the call that will report them offline once the grace is over.
        self._going: dict[str, IDelayedCall] = {}

    # -- what the rest of the server asks ----------------------------------

    def route(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """The other nodes that must get a push to ``user_ids``: node → the
        recipients there. Users only here, and users nowhere, need no node."""
        targets: dict[str, list[str]] = {}
        nodes_of = self._nodes_of
        for user_id in user_ids:
            nodes = nodes_of.get(user_id)
            if nodes:
                for node in nodes:
                    targets.setdefault(node, []).append(user_id)
        return targets

    def online(self, user_ids: Iterable[str]) -> dict[str, bool]:
        """Whether each user is online as observers were told: connected on
        some node, or gone for less than the grace."""
        return {u: self.present(u) or u in self._going for u in user_ids}

    def present(self, user_id: str) -> bool:
        """Whether ``user_id`` has a session on some node right now."""
        return user_id in self._local or user_id in self._nodes_of

    def nodes(self) -> list[str]:
        """The other nodes known to be alive."""
        return list(self._users_of)

    def users_on(self, node: str) -> frozenset[str]:
        """The users ``node`` holds, as far as this node knows."""
        return frozenset(self._users_of.get(node, ()))

    def remote_users(self) -> frozenset[str]:
        """The users with a session on some other node."""
        return frozenset(self._nodes_of)

    # -- this node's users ---------------------------------------------------

    def local_arrived(self, user_id: str) -> None:
        """``user_id``'s first session here authorized (already in ``local``)."""
        if user_id not in self._nodes_of:
            self._became(user_id, True)

    def local_left(self, user_id: str) -> None:
        """``user_id``'s last session here closed (already gone from ``local``)."""
        if user_id not in self._nodes_of:
            self._became(user_id, False)

    # -- what other nodes announce -------------------------------------------

    def announce(self, node: str, arrived: Iterable[str], left: Iterable[str]) -> None:
        """``node`` says these users arrived there and these left (and, by
        saying anything, that it is alive)."""
        arrived, left = list(arrived), list(left)
        if not arrived and node not in self._users_of:
            return  # departures from a node that left, or was forgotten: nothing to undo
        self._changing([*arrived, *left], lambda: self._apply(node, arrived, left), known=node)

    def replace(self, node: str, user_ids: Iterable[str]) -> None:
        """``node`` holds exactly ``user_ids`` (its full state)."""
        new = set(user_ids)
        old = self._users_of.get(node, set())
        self._changing(old ^ new, lambda: self._apply(node, new - old, old - new), known=node)

    def forget(self, node: str) -> int:
        """``node`` is gone (it stopped, or died): its users are no longer
        there. Returns how many users it held."""
        users = self._users_of.get(node)
        if users is None:
            return 0
        self._spared_until.pop(node, None)

        def drop() -> None:
            self._apply(node, (), list(users))
            del self._users_of[node]

        count = len(users)
        self._changing(list(users), drop)
        return count

    def expired(self, nodes: Iterable[str]) -> list[str]:
        """Redis says the heartbeats of ``nodes`` expired: forget those not
        spared (see :meth:`reconnected`); return the ones forgotten."""
        now = self._clock.seconds()
        forgotten = []
        for node in nodes:
            if node in self._users_of and self._spared_until.get(node, 0.0) <= now:
                self.forget(node)
                forgotten.append(node)
        return forgotten

    def reconnected(self, snapshot: Mapping[str, Iterable[str]], spare: float) -> None:
        """This node (re)connected to Redis and read the whole map.

        The nodes in ``snapshot`` hold exactly what it says. A node known
        here but missing from it may not have reconnected yet after an outage
        (it could not refresh its heartbeat either): it is spared for
        ``spare`` seconds, so its users do not go offline unless it stays
        away.
        """
        until = self._clock.seconds() + spare
        for node in self._users_of:
            if node not in snapshot:
                self._spared_until[node] = until
        for node, users in snapshot.items():
            self._spared_until.pop(node, None)
            self.replace(node, users)

    def stop(self) -> None:
        """Cancel the pending "offline" reports (the server is stopping)."""
        going, self._going = self._going, {}
        for call in going.values():
            if call.active():
                call.cancel()

    # -- inside ---------------------------------------------------------------

    def _apply(self, node: str, arrived: Iterable[str], left: Iterable[str]) -> None:
        users = self._users_of.setdefault(node, set())
        nodes_of = self._nodes_of
        for user_id in arrived:
            users.add(user_id)
            nodes_of.setdefault(user_id, set()).add(node)
        for user_id in left:
            users.discard(user_id)
            nodes = nodes_of.get(user_id)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del nodes_of[user_id]

    def _changing(
        self, user_ids: Iterable[str], change: Callable[[], None], known: str | None = None
    ) -> None:
        # Presence is a property of the whole map, not of one message: compare
        # each affected user before and after, so that a message that changes
        # nothing (a duplicate, a user also connected elsewhere) reports
        # nothing.
        users = set(user_ids)
        before = {u: self.present(u) for u in users}
        change()
        if known is not None:
            self._users_of.setdefault(known, set())
            self._spared_until.pop(known, None)
        for user_id in sorted(users):
            now = self.present(user_id)
            if now != before[user_id]:
                self._became(user_id, now)

    def _became(self, user_id: str, online: bool) -> None:
        if online:
            going = self._going.pop(user_id, None)
            if going is not None:
                if going.active():
                    going.cancel()
                return  # back within the grace: observers never saw them go
            self._tell(user_id, True)
        elif self._grace <= 0:
            self._tell(user_id, False)
        elif user_id not in self._going:
            self._going[user_id] = self._clock.callLater(self._grace, self._gone, user_id)

    def _gone(self, user_id: str) -> None:
        del self._going[user_id]
        if not self.present(user_id):
            self._tell(user_id, False)

    def _tell(self, user_id: str, online: bool) -> None:
        for observer in list(self.observers):
            observer.presence_changed(user_id, online)


class LocalPresence(NodeMap):
    """Presence for one node (no cluster): a map of no other nodes, following
    the registry.

    A user's first session is reported at once; their last session going is
    reported after the grace (:data:`~chatserver.server.PRESENCE_GRACE`), and
    not at all if they are back by then, so that a page reload does not
    flicker offline and online. Within the grace they count as online.
    """

    def __init__(
        self, registry: SessionRegistry, clock: IReactorTime, grace: float = PRESENCE_GRACE
    ) -> None:
        """
        :param registry: the sessions of this node, told to report to it.
        :param clock: schedules the grace before "offline".
        :param grace: seconds between the last session going and "offline".
        """
        super().__init__(registry, clock, grace)
        registry.observers.append(self)

    # The registry's observer: its users are this node's.
    user_arrived = NodeMap.local_arrived
    user_left = NodeMap.local_left
