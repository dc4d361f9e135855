"""What each action does: the one place that decides.

Handlers get a :class:`~chatserver.session.Session` and a request's ``data``,
talk to storage, ask the router to push, and return the reply's ``data`` or
fail with :class:`~chatserver.errors.ChatError` (an error reply) or
:class:`~chatserver.errors.SessionRefused` (the session ends). They never see
a socket, a frame or the WebSocket factory.
"""

from chatserver.handlers.chat import Action, ChatHandler

__all__ = ["Action", "ChatHandler"]
