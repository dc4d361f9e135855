"""One client's session, as the handlers see it: no socket, no frames.

The protocol opens a :class:`Session` for every WebSocket connection and hands
it to the handlers with each request. A session carries who the user is and
two ways back to the client — push an event to this connection, end the
session with a reason — through a :class:`SessionLink` that the network layer
provides. Handlers and custom actions get this object and the
:class:`~chatserver.server.ServerAPI`; never the protocol, the transport or the
factory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from chatserver import wire
from chatserver.errors import Ending

if TYPE_CHECKING:
    from chatserver.server import ServerAPI


class SessionLink(Protocol):
    """What a session needs of its connection (the protocol provides it)."""

    def write_frame(self, frame: bytes) -> None:
        """Send an already framed WebSocket message to this connection."""

    def send_payload(self, payload: bytes) -> None:
        """Frame one JSON document and send it to this connection."""

    def end_session(self, ending: Ending, reason: str) -> None:
        """Close the connection, saying why."""


class Session:
    """A client connection's state as the chat sees it.

    :ivar user: the authorized user object, or ``None`` before ``authorize``.
    :ivar user_id: the user's id as a string, or ``None``.
    :ivar server: the :class:`~chatserver.server.ServerAPI`, for custom actions.
    :ivar peer: the client's address, for logs.
    :ivar closed: whether the connection has closed.
    """

    __slots__ = (
        "__weakref__",
        "_link",
        "closed",
        "peer",
        "server",
        "user",
        "user_id",
        "write_frame",
    )

    def __init__(self, link: SessionLink, server: ServerAPI, peer: str = "") -> None:
        self._link = link
        self.server = server
        self.peer = peer
        self.user: dict[str, Any] | None = None
        self.user_id: str | None = None
        self.closed = False
        # Bound once: the delivery layer calls it for every push.
        self.write_frame = link.write_frame

    def __repr__(self) -> str:
        return f"<Session {self.user_id or 'unauthorized'} from {self.peer}>"

    def push(self, event_type: str, data: object) -> None:
        """Send ``{"type": event_type, "data": data}`` to this connection only."""
        if not self.closed:
            self._link.send_payload(wire.push(event_type, data))

    def end(self, reason: str, ending: Ending = Ending.POLICY) -> None:
        """End the session: the client sees a close with ``reason``."""
        if not self.closed:
            self._link.end_session(ending, reason)
