"""Who is connected: the map from user id to that user's open connections."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol


class Pushable(Protocol):
    """What the registry needs of a connection."""

    def sendPreparedMessage(self, preparedMsg: Any) -> None: ...


class RegistryObserver(Protocol):
    """Told when a user comes online here, or goes offline (e.g. to follow
    them in a cluster)."""

    def user_arrived(self, user_id: str) -> None: ...

    def user_left(self, user_id: str) -> None: ...


class ConnectionRegistry:
    """User id → set of open, authorized connections.

    Looking up a recipient costs O(1) whatever the number of users, and a
    frame is prepared (encoded and framed) once however many connections it
    goes to.
    """

    def __init__(self, prepare: Callable[[bytes], Any]) -> None:
        """
        @param prepare: turns a payload into a prepared WebSocket message
            (Autobahn's C{WebSocketServerFactory.prepareMessage}).
        """
        self._prepare = prepare
        self._by_user: dict[str, set[Pushable]] = {}
        self.connection_count = 0
        self.pushes = 0
        self.observer: RegistryObserver | None = None

    def add(self, user_id: str, connection: Pushable) -> bool:
        """Register ``connection`` as ``user_id``'s.

        @return: whether it is the user's first connection here.
        """
        connections = self._by_user.get(user_id)
        first = connections is None
        if first:
            connections = self._by_user[user_id] = set()
            if self.observer is not None:
                self.observer.user_arrived(user_id)
        if connection not in connections:
            connections.add(connection)
            self.connection_count += 1
        return first

    def remove(self, user_id: str, connection: Pushable) -> bool:
        """Forget ``connection``; a no-op if it was not registered.

        @return: whether the user now has no connection here.
        """
        connections = self._by_user.get(user_id)
        if connections is None or connection not in connections:
            return False
        connections.remove(connection)
        self.connection_count -= 1
        if connections:
            return False
        del self._by_user[user_id]
        if self.observer is not None:
            self.observer.user_left(user_id)
        return True

    def connections(self, user_id: str) -> frozenset[Pushable]:
        """The open connections of ``user_id`` (possibly none)."""
        return frozenset(self._by_user.get(user_id, ()))

    @property
    def user_count(self) -> int:
        """How many users have a connection here."""
        return len(self._by_user)

    def user_ids(self) -> frozenset[str]:
        """The ids of every user with at least one connection."""
        return frozenset(self._by_user)

    def push(self, payload: bytes, user_ids: Iterable[str]) -> int:
        """Send ``payload`` to every connection of each of ``user_ids``.

        @return: the number of connections it was written to.
        """
        by_user = self._by_user
        prepared = None
        sent = 0
        for user_id in user_ids:
            connections = by_user.get(user_id)
            if not connections:
                continue
            if prepared is None:
                prepared = self._prepare(payload)
            for connection in connections:
                connection.sendPreparedMessage(prepared)
            sent += len(connections)
        self.pushes += sent
        return sent

    def push_all(self, payload: bytes) -> int:
        """Send ``payload`` to every registered connection."""
        return self.push(payload, tuple(self._by_user))
