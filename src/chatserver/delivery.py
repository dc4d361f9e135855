"""Delivery: who is connected here, and getting pushes to them.

:class:`SessionRegistry` maps a user id to that user's authorized sessions on
this node. A :class:`Router` delivers pushes wherever the recipients are
connected: :class:`LocalRouter` on one node, the Redis cluster router across
several. A push is encoded once and framed once, however many sessions it goes
to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from chatserver import wire
from chatserver.errors import Ending
from chatserver.session import Session

#: Frames a JSON payload as a WebSocket text message (the network layer's).
Framer = Callable[[bytes], bytes]


class RegistryObserver(Protocol):
    """Told when a user comes online here, or goes offline (e.g. to follow
    them in a cluster)."""

    def user_arrived(self, user_id: str) -> None: ...

    def user_left(self, user_id: str) -> None: ...


class SessionRegistry:
    """User id → the authorized sessions of that user on this node.

    Looking up a recipient costs O(1) whatever the number of users.
    """

    def __init__(self, framer: Framer) -> None:
        """
        :param framer: frames a JSON payload as a WebSocket text message.
        """
        self._framer = framer
        self._by_user: dict[str, set[Session]] = {}
        self.session_count = 0
        self.pushes = 0
        self.frames = 0
        self.observers: list[RegistryObserver] = []

    def add(self, user_id: str, session: Session) -> bool:
        """Register ``session`` as ``user_id``'s.

        :return: whether it is the user's first session here.
        """
        sessions = self._by_user.get(user_id)
        first = sessions is None
        if sessions is None:
            sessions = self._by_user[user_id] = set()
        if session not in sessions:
            sessions.add(session)
            self.session_count += 1
        if first:
            for observer in self.observers:
                observer.user_arrived(user_id)
        return first

    def remove(self, user_id: str, session: Session) -> bool:
        """Forget ``session``; a no-op if it was not registered.

        :return: whether the user now has no session here.
        """
        sessions = self._by_user.get(user_id)
        if sessions is None or session not in sessions:
            return False
        sessions.remove(session)
        self.session_count -= 1
        if sessions:
            return False
        del self._by_user[user_id]
        for observer in self.observers:
            observer.user_left(user_id)
        return True

    def sessions(self, user_id: str) -> frozenset[Session]:
        """The sessions of ``user_id`` here (possibly none)."""
        return frozenset(self._by_user.get(user_id, ()))

    def count(self, user_id: str) -> int:
        """How many sessions ``user_id`` has here."""
        sessions = self._by_user.get(user_id)
        return len(sessions) if sessions else 0

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._by_user

    @property
    def user_count(self) -> int:
        """How many users have a session here."""
        return len(self._by_user)

    def user_ids(self) -> frozenset[str]:
        """The ids of every user with at least one session here."""
        return frozenset(self._by_user)

    def deliver(self, payload: bytes, user_ids: Iterable[str]) -> int:
        """Send the JSON ``payload`` to every session of each of ``user_ids``,
        framed once for all of them (and not at all if none is here).

        :return: the number of sessions it was written to.
        """
        by_user = self._by_user
        frame = None
        sent = 0
        for user_id in user_ids:
            sessions = by_user.get(user_id)
            if sessions:
                if frame is None:
                    frame = self._framer(payload)
                    self.frames += 1
                for session in sessions:
                    session.write_frame(frame)
                sent += len(sessions)
        self.pushes += sent
        return sent

    def push_sessions(self, event_type: str, data: object, sessions: Iterable[Session]) -> int:
        """Push ``{"type", "data"}`` to these sessions, encoded and framed once."""
        frame = None
        sent = 0
        for session in sessions:
            if frame is None:
                frame = self._framer(wire.push(event_type, data))
                self.frames += 1
            if not session.closed:
                session.write_frame(frame)
                sent += 1
        self.pushes += sent
        return sent

    def deliver_all(self, payload: bytes) -> int:
        """Send ``payload`` to every registered session."""
        return self.deliver(payload, tuple(self._by_user))

    def end(self, user_ids: Iterable[str], ending: Ending, reason: str) -> int:
        """End every session of ``user_ids`` here; return how many."""
        ended = 0
        for user_id in user_ids:
            for session in tuple(self._by_user.get(user_id, ())):
                session.end(reason, ending)
                ended += 1
        return ended

    def collect(self) -> Iterator[Metric]:
        """Metrics, for prometheus_client."""
        yield GaugeMetricFamily(
            "chat_connections_authorized",
            "Open connections that have authorized.",
            self.session_count,
        )
        yield GaugeMetricFamily(
            "chat_users_online", "Users with a connection here.", self.user_count
        )
        yield CounterMetricFamily("chat_pushes", "Frames pushed to connections here.", self.pushes)
        yield CounterMetricFamily(
            "chat_push_frames", "Pushes framed (once for all their recipients here).", self.frames
        )


class Router(Protocol):
    """Delivers pushes to users wherever they are connected."""

    def push(self, event_type: str, data: object, user_ids: Iterable[str]) -> int:
        """Push ``{"type", "data"}`` to every session of ``user_ids``;
        return how many sessions here it was written to."""

    def push_all(self, event_type: str, data: object) -> int:
        """Push to every authorized session; return how many here."""

    def end_sessions(self, user_ids: Iterable[str], ending: Ending, reason: str) -> int:
        """End every session of ``user_ids``; return how many here."""


class LocalRouter:
    """A :class:`Router` for one node: delivers through the registry."""

    def __init__(self, registry: SessionRegistry) -> None:
        self._registry = registry

    def push(self, event_type: str, data: object, user_ids: Iterable[str]) -> int:
        return self._registry.deliver(wire.push(event_type, data), user_ids)

    def push_all(self, event_type: str, data: object) -> int:
        return self._registry.deliver_all(wire.push(event_type, data))

    def end_sessions(self, user_ids: Iterable[str], ending: Ending, reason: str) -> int:
        return self._registry.end(user_ids, ending, reason)
