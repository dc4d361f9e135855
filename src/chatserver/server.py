"""The server API: what an application and its custom actions may do.

:class:`ServerAPI` is handed to custom actions as ``session.server`` and is
``ChatServer.api`` for the application that built the server. It reaches users
on every node (through the :class:`~chatserver.delivery.Router`), and knows
nothing of sockets or frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from chatserver.delivery import Router, SessionRegistry
from chatserver.errors import Ending
from chatserver.events import EventEmitter, Listener
from chatserver.session import Session

# Seconds between a user's last session going and "offline": a page reload
# (or a reconnection to another node) must not flicker offline and online.
PRESENCE_GRACE = 2.0


class PresenceObserver(Protocol):
    """Told when a user comes online anywhere, or goes offline everywhere."""

    def presence_changed(self, user_id: str, online: bool) -> None: ...


class Presence(Protocol):
    """Who is online: on this node, or across a cluster."""

    observers: list[PresenceObserver]

    def online(self, user_ids: Iterable[str]) -> dict[str, bool]:
        """Whether each of ``user_ids`` has a session anywhere."""


class ServerAPI:
    """Push to users, see who is online, end sessions, follow events."""

    def __init__(
        self,
        router: Router,
        registry: SessionRegistry,
        presence: Presence,
        events: EventEmitter,
    ) -> None:
        self._router = router
        self._registry = registry
        self._presence = presence
        self._events = events

    def send(self, event_type: str, data: Any, user_ids: Iterable[object]) -> int:
        """Push ``{"type": event_type, "data": data}`` to every session of
        each of ``user_ids``, on this node and, in a cluster, on the others.

        :return: the number of sessions it was written to on this node.
        """
        return self._router.push(event_type, data, [str(u) for u in user_ids])

    def broadcast(self, event_type: str, data: Any) -> int:
        """Push ``{"type": event_type, "data": data}`` to every authorized
        session, on every node.

        :return: the number of sessions it was written to on this node.
        """
        return self._router.push_all(event_type, data)

    def online(self, user_ids: Iterable[object]) -> dict[str, bool]:
        """Whether each of ``user_ids`` (as strings) is connected anywhere."""
        return self._presence.online([str(u) for u in user_ids])

    def sessions(self, user_id: object) -> frozenset[Session]:
        """The sessions ``user_id`` holds on this node."""
        return self._registry.sessions(str(user_id))

    def end_sessions(
        self, user_ids: Iterable[object], reason: str = "session ended by the server"
    ) -> int:
        """End every session of ``user_ids`` on every node; the clients see
        a close with code 4000 and ``reason``.

        :return: how many sessions ended on this node.
        """
        return self._router.end_sessions([str(u) for u in user_ids], Ending.REVOKED, reason)

    def on(self, event: str, listener: Listener | None = None) -> Any:
        """Call ``listener(session)`` on ``socketConnected``,
        ``socketAuthorized`` or ``socketClosed``.

        Without ``listener``, returns a decorator: ``@api.on("socketClosed")``.
        """
        if listener is None:
            return self._decorator(event)
        return self._events.on(event, listener)

    def _decorator(self, event: str) -> Callable[[Listener], Listener]:
        return lambda listener: self._events.on(event, listener)

    def off(self, event: str, listener: Listener) -> None:
        """Stop calling ``listener`` for ``event``."""
        self._events.off(event, listener)
