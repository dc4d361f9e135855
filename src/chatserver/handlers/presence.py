"""``watchPresence``: hear when the users one cares about come and go.

Request ``{"ids": [userId, ...]}`` (at most :data:`MAX_WATCHED`; it replaces
the session's watch list; ``[]`` unwatches); reply ``{"<id>": true|false}``,
the state across the whole cluster. Then the session gets ``{"type":
"presence", "data": {"id", "online"}}`` whenever a watched user's first
session anywhere authorizes or their last one closes (the presence layer
waits a short grace before "offline", so a page reload does not flicker).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from chatserver import errors
from chatserver.delivery import SessionRegistry
from chatserver.errors import ChatError
from chatserver.events import SOCKET_CLOSED, EventEmitter
from chatserver.handlers.chat import as_id
from chatserver.server import Presence
from chatserver.session import Session

MAX_WATCHED = 1000


class PresenceWatch:
    """The ``watchPresence`` action, and the pushes it asks for."""

    def __init__(self, registry: SessionRegistry, presence: Presence, events: EventEmitter) -> None:
        self._registry = registry
        self._presence = presence
        # Watched user → the sessions watching them, and the reverse.
        self._watchers: dict[str, set[Session]] = {}
        self._watching: dict[Session, frozenset[str]] = {}
        events.on(SOCKET_CLOSED, self._closed)

    def __call__(self, session: Session, data: object) -> Deferred[Any]:
        ids = data.get("ids") if type(data) is dict else None
        if type(ids) is not list:
            raise ChatError(errors.INVALID_REQUEST, "watchPresence needs `ids`: a list of user ids")
        if len(ids) > MAX_WATCHED:
            raise ChatError(errors.TOO_LARGE, f"at most {MAX_WATCHED} users may be watched")
        watched = []
        for value in ids:
            user_id = as_id(value)
            if user_id is None:
                raise ChatError(errors.INVALID_REQUEST, "`ids` must hold user ids")
            watched.append(user_id)
        self._watch(session, frozenset(watched))
        return succeed(self._presence.online(watched))

    def _watch(self, session: Session, watched: frozenset[str]) -> None:
        self._unwatch(session)
        if session.closed or not watched:
            return
        self._watching[session] = watched
        for user_id in watched:
            self._watchers.setdefault(user_id, set()).add(session)

    def _unwatch(self, session: Session) -> None:
        for user_id in self._watching.pop(session, ()):
            sessions = self._watchers.get(user_id)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._watchers[user_id]

    def _closed(self, session: Session) -> None:
        self._unwatch(session)

    def presence_changed(self, user_id: str, online: bool) -> None:
        """The presence layer says ``user_id`` came online or went offline."""
        sessions = self._watchers.get(user_id)
        if sessions:
            self._registry.push_sessions("presence", {"id": user_id, "online": online}, sessions)

    @property
    def watched_users(self) -> int:
        """How many users some session watches (for metrics and tests)."""
        return len(self._watchers)
