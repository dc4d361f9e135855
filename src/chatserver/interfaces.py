"""The storage contract: what the chat server asks of the application.

The five methods mirror node-chat-server's storage callbacks, with Deferreds
instead of callbacks. They are split into three narrow interfaces so that an
application can take, say, authorization from one place and messages from
another (see :class:`chatserver.CombinedStorage`); :class:`IChatStorage` is all
three at once, and is what :class:`chatserver.ChatServerFactory` accepts.

A method may also return a plain value or a coroutine; the server wraps it.
Failing with :class:`chatserver.ChatError` sends that error code to the client;
any other failure is logged and reported to the client as ``storageError``.
"""

from __future__ import annotations

from zope.interface import Interface


class IAuthorizer(Interface):
    """Turns what a connecting client sent into a user."""

    def authorize(credentials: dict) -> object:
        """
        Find the user that ``credentials`` (the ``data`` of the client's
        ``authorize`` request, usually ``{"token": ...}``) identify.

        @return: a Deferred firing with the user object, a dict carrying
            ``id`` or ``_id``, or with C{None} to refuse.
        """


class IMessageStore(Interface):
    """Stores chat messages and answers questions about them."""

    def create(message: dict) -> object:
        """
        Store one message. The server has set ``from`` (the sender's id as a
        string), ``to`` (a string), ``createdAt`` (ISO 8601 UTC with
        milliseconds) and, for a group message, ``isGroup: True``.

        If the message carries ``clientMessageId``, storing it again for the
        same sender must not store a second copy: it fires with the message
        stored the first time.

        @return: a Deferred firing with the stored message, including its id
            as ``_id`` (or ``id``).
        """

    def getMessages(query: dict) -> object:
        """
        Fetch one conversation's messages, newest first.

        ``query["ids"]`` is ``[requester_id, other_id]``; ``query["isGroup"]``
        is true when ``other_id`` is a group (the server has checked that the
        requester is a member), in which case the conversation is every
        message sent to that group. ``skip`` and ``limit`` are non-negative
        integers; anything else the client sent is passed along.

        @return: a Deferred firing with a list of messages.
        """

    def read(messageId: str, userId: str) -> object:
        """
        Mark message ``messageId`` as read by ``userId``.

        Only a recipient may do so: the ``to`` of a direct message, or a
        member of the group (other than the sender) for a group message.

        @return: a Deferred firing with the updated message, or with C{None}
            when there is no such message or ``userId`` may not read it.
        """


class IGroupDirectory(Interface):
    """Knows who belongs to which group."""

    def getGroupUserIds(data: dict) -> object:
        """
        List the members of group ``data["groupId"]``.

        @return: a Deferred firing with a list of user ids (an unknown group
            has no members).
        """


class IChatStorage(IAuthorizer, IMessageStore, IGroupDirectory):
    """Everything the chat server needs from storage."""


class IUserDirectory(Interface):
    """Optional: lists the users and groups a store knows, for user
    interfaces such as the web demo's ``getUsersAndGroups`` action."""

    def list_users() -> object:
        """
        @return: a Deferred firing with every user as ``{"id", "name"}``.
        """

    def list_groups() -> object:
        """
        @return: a Deferred firing with every group as ``{"id", "members"}``.
        """
