"""Server events, as node-chat-server emits them."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

SOCKET_CONNECTED = "socketConnected"
SOCKET_AUTHORIZED = "socketAuthorized"
SOCKET_CLOSED = "socketClosed"

EVENTS = (SOCKET_CONNECTED, SOCKET_AUTHORIZED, SOCKET_CLOSED)

Listener = Callable[..., object]


class EventEmitter:
    """Calls listeners by event name; a failing listener is logged, never fatal."""

    log = Logger()

    def __init__(self, names: tuple[str, ...] = EVENTS) -> None:
        self._listeners: dict[str, list[Listener]] = {name: [] for name in names}

    def on(self, name: str, listener: Listener) -> Listener:
        """Call ``listener(connection)`` whenever event ``name`` happens.

        @return: ``listener``, so that this can be used as a decorator.
        @raise KeyError: for an event that does not exist.
        """
        self._listeners[name].append(listener)
        return listener

    def off(self, name: str, listener: Listener) -> None:
        """Stop calling ``listener`` for ``name``; a no-op if it was not added."""
        listeners = self._listeners[name]
        if listener in listeners:
            listeners.remove(listener)

    def emit(self, name: str, *args: object) -> None:
        """Call every listener of ``name`` with ``args``."""
        for listener in tuple(self._listeners[name]):
            try:
                listener(*args)
            except Exception:
                self.log.failure(
                    "listener {listener!r} for {event} failed", listener=listener, event=name
                )
