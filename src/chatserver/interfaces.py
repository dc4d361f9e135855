"""The storage contract: what the chat server asks of the application.

The five methods of :class:`IChatStorage` mirror node-chat-server's storage
callbacks, with Deferreds instead of callbacks. They are split into three
narrow interfaces so that an application can take, say, authorization from one
place and messages from another (see :class:`chatserver.CombinedStorage`).

Everything else is optional: a store that also provides one of the interfaces
below unlocks what it describes, and a store that does not still runs every
other part of the server (the actions that need it answer ``notSupported``).

- :class:`IUserDirectory`: the ``getUsersAndGroups`` directory action and
  the names the web page shows.
- :class:`IConversationStore`: ``getConversations`` and history cursors
  (``before``/``after``), hence catch-up after a reconnect.
- :class:`IAccountStore`: the admin commands (``python -m chatserver users
  ...``) and, through :class:`ISessionRevocations`, ending a removed user's
  live sessions.
- :class:`IStorageStatus`: what ``/ready`` says while the store starts up.

Naming: methods the chat protocol calls mirror its wire names (camelCase, one
query dict, as the seed's five); administration methods are plain Python
(snake_case, keyword arguments).

A method may return a Deferred, a plain value or a coroutine; the server wraps
it. Failing with :class:`chatserver.ChatError` sends that error code to the
client; any other failure is logged and reported to the client as
``storageError``.

Ordering, everywhere: the messages of one conversation are ordered by
``createdAt`` and, for equal ``createdAt``, by insertion (the order in which
``create`` was called). "Newest first" is the reverse of that order.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface


class IAuthorizer(Interface):
    """Turns what a connecting client sent into a user."""

    def authorize(credentials: dict[str, Any]) -> object:
        """
        Find the user that ``credentials`` (the ``data`` of the client's
        ``authorize`` request, usually ``{"token": ...}``) identify.

        :return: a Deferred firing with the user object, a dict carrying
            ``id`` or ``_id``, or with ``None`` to refuse.
        """


class IMessageStore(Interface):
    """Stores chat messages and answers questions about them."""

    def create(message: dict[str, Any]) -> object:
        """
        Store one message. The server has set ``from`` (the sender's id as a
        string), ``to`` (a string), ``createdAt`` (ISO 8601 UTC with
        milliseconds) and, for a group message, ``isGroup: True``; it has
        dropped any ``_id``, ``id``, ``read`` and ``readBy`` the client sent,
        so a new message is unread by everyone.

        If the message carries ``clientMessageId``, storing it again for the
        same sender must not store a second copy: it fires with the message
        stored the first time (the server compares the two and refuses a
        reuse of the id for a different message).

        :return: a Deferred firing with the stored message, including its id
            as ``_id`` (or ``id``).
        """

    def getMessages(query: dict[str, Any]) -> object:
        """
        Fetch one conversation's messages, newest first.

        ``query["ids"]`` is ``[requester_id, other_id]``; ``query["isGroup"]``
        is true when ``other_id`` is a group (the server has checked that the
        requester is a member), in which case the conversation is every
        message sent to that group. ``skip`` and ``limit`` are non-negative
        integers; anything else the client sent is passed along.

        A store that provides :class:`IConversationStore` also honours the
        cursors ``before`` and ``after`` here (see there).

        :return: a Deferred firing with a list of messages.
        """

    def read(messageId: str, userId: str) -> object:
        """
        Mark message ``messageId`` as read by ``userId``.

        Only a recipient may do so: the ``to`` of a direct message, or a
        member of the group (other than the sender) for a group message.

        :return: a Deferred firing with the updated message, or with ``None``
            when there is no such message or ``userId`` may not read it.
        """


class IGroupDirectory(Interface):
    """Knows who belongs to which group."""

    def getGroupUserIds(data: dict[str, Any]) -> object:
        """
        List the members of group ``data["groupId"]``.

        :return: a Deferred firing with a list of user ids (an unknown group
            has no members).
        """


class IChatStorage(IAuthorizer, IMessageStore, IGroupDirectory):
    """Everything the chat server needs from storage."""


class IUserDirectory(Interface):
    """Optional: whom a user can talk to, a page at a time.

    Each method must be served from indexes: its cost grows with the page
    asked for (and the number of groups the user is in), never with the
    number of users or messages stored. Pages are ordered by id (string
    order, that is by code point, as Python compares ``str``) and start
    after the id ``query["after"]`` (``None``: from the start);
    ``query["limit"]`` is a positive integer (the server caps it). A page
    shorter than ``limit`` is the last one.
    """

    def listContacts(query: dict[str, Any]) -> object:
        """
        The contacts of ``query["userId"]``: every user who shares a group
        or a direct conversation with them (a message sent either way, ever),
        themselves excluded, each listed once. A contact the store keeps no
        account for (a group may name any id; an account may have been
        removed since the conversation) is listed with its id as name.

        :return: a Deferred firing with at most ``limit`` users as
            ``{"id": str, "name": str}``, ordered by id.
        """

    def listGroups(query: dict[str, Any]) -> object:
        """
        The groups ``query["userId"]`` belongs to.

        :return: a Deferred firing with at most ``limit`` groups as
            ``{"id": str, "name": str}`` (the name defaults to the id),
            ordered by id.
        """

    def listUsers(query: dict[str, Any]) -> object:
        """
        Every user the store keeps an account for (for ``--directory
        all``, meant for demos), regardless of ``query["userId"]``; a user's
        name defaults to their id.

        :return: a Deferred firing with at most ``limit`` users as
            ``{"id": str, "name": str}``, ordered by id.
        """

    def getUsers(userIds: list[str]) -> object:
        """
        The users among ``userIds`` that the store knows (at most the
        server's page size of ids per call).

        :return: a Deferred firing with a dict ``{id: {"id", "name"}}``;
            unknown ids are left out.
        """


class IConversationStore(Interface):
    """Optional: the conversation list and history cursors.

    A store providing it keeps a per-user conversation index, updated on
    ``create`` and ``read``, so that neither method scans messages.
    """

    def getConversations(query: dict[str, Any]) -> object:
        """
        The conversations ``query["userId"]`` is part of, ordered by their
        last message, newest first: a direct conversation once the user has
        sent or received a message in it, a group conversation once a
        message was sent to the group while the user was a member.

        The position of a conversation is that of its last message (see
        "Ordering" above: ``createdAt``, then insertion), so a message whose
        ``createdAt`` is older than the conversation's last does not move
        the conversation nor become its ``last``.

        ``query["limit"]`` is a positive integer (the server caps it);
        ``query["before"]`` is ``None`` or the ``next`` of an earlier page:
        the page then holds the conversations whose last message is older
        than the last one on that page (a conversation that got a newer
        message meanwhile has moved to the top, out of the rest of the
        walk). A ``before`` that the store did not make fails with
        ``ChatError("invalidQuery", ...)``.

        Group windows: a group message counts for the members of the group
        when it is stored, and only for them. A member added later sees the
        conversation once a message is sent after they joined, and its
        ``unread`` counts only such messages. A member who leaves the group
        (removed from it, or the group removed) keeps the conversation as it
        was, with ``unread`` reset to 0: they can no longer read it.

        :return: a Deferred firing with ``{"conversations": [...], "next":
            cursor or None}``. Each conversation is ``{"with": id,
            "isGroup": bool, "last": <the last message, as getMessages
            returns it>, "unread": n}``, where ``unread`` counts the
            messages to the user, not from the user, that the user has not
            read (direct: without ``read: true``; group: the user not in
            ``readBy``): each message counted goes down by one the first time
            :meth:`IMessageStore.read` marks it read by the user.
            ``next`` is an opaque string, ``None`` on the last page.
        """

    # And, in getMessages, the cursors:
    #
    # - ``query["before"]``: a message id of this conversation; the page
    #   holds the messages before it in the conversation's order, newest
    #   first (as without a cursor).
    # - ``query["after"]``: a message id of this conversation; the page holds
    #   the messages after it, **oldest first**, for catching up.
    #
    # The server never sends both, nor a cursor with ``skip`` (a store may
    # count ``skip`` from the cursor). A cursor that names no message of
    # this conversation (unknown, malformed, or a message of another
    # conversation) fails the call with ``ChatError("notFound", ...)``.


class ISessionRevocations(Interface):
    """Optional: lets the server end the live sessions of users whom an
    operator removed or disconnected, on every node (each node polls)."""

    def revocationsAfter(cursor: object) -> object:
        """
        The users whose sessions were revoked after ``cursor``.

        ``cursor`` is ``None`` on the first call: the store then fires with
        no users and the cursor of "now". Cursors are opaque to the server
        (any value the store can encode as JSON), and a cursor must keep
        working when passed back after a JSON round trip, in another process
        on the same store. The revocations of every process using the store
        count (an admin command revokes, every server node sees it).

        A store may answer with only the oldest of many revocations; the
        cursor it returns is then past those, and the next call gets more.

        :return: a Deferred firing with ``(user_ids, cursor)``: the ids
            revoked since ``cursor``, oldest first (duplicates allowed), and
            the cursor to pass next time.
        """


class IStorageStatus(Interface):
    """Optional: a store that starts up in the background (connects, builds
    indexes) says how far it got; ``/ready`` shows it."""

    def status() -> str:
        """
        :return: ``"ready"`` while the store serves requests; otherwise a
            short sentence for operators (``"building indexes"``,
            ``"unreachable"``, or what is wrong and how to fix it).
        """


class IAccountStore(Interface):
    """Optional: provisioning, for the admin commands and applications.

    Every method returns a Deferred. Ids, names and tokens are non-empty
    strings; a method given an empty one fails with ``ValueError``. Group
    members may be ids the store keeps no account for (an application may
    authorize users elsewhere). Removing a member from a group, by
    :meth:`remove_member`, :meth:`add_group`, :meth:`remove_group` or
    :meth:`remove_user`, makes them leave it as
    :meth:`IConversationStore.getConversations` describes.
    """

    def add_user(user_id: str, name: str | None = None, token: str | None = None) -> object:
        """
        Create a user who signs in with ``token`` (a new random one if
        ``None``); only a hash of the token is kept.

        :return: a Deferred firing with the token; failing with
            ``ValueError`` if the user exists or the token is taken.
        """

    def set_token(user_id: str, token: str | None = None) -> object:
        """
        Give an existing user a new token (random if ``None``); the old one
        stops working and the user's live sessions end.

        :return: a Deferred firing with the token; failing with
            ``LookupError`` for an unknown user, ``ValueError`` if another
            user has the token.
        """

    def get_user(user_id: str) -> object:
        """:return: a Deferred firing with ``{"id", "name"}`` or ``None``."""

    def remove_user(user_id: str) -> object:
        """
        Delete a user (their token stops working, their group memberships
        go, their messages stay) and revoke their live sessions.

        :return: a Deferred firing with whether the user existed.
        """

    def revoke_sessions(user_id: str) -> object:
        """
        End the user's live sessions on every node (they may sign in again).
        Works for any id, with or without an account (an application may
        authorize users elsewhere).

        :return: a Deferred firing with ``None``.
        """

    def list_all_users(after: str | None = None, limit: int = 100) -> object:
        """:return: a Deferred firing with a page of ``{"id", "name"}`` by id."""

    def add_group(group_id: str, member_ids: list[str], name: str | None = None) -> object:
        """
        Create group ``group_id`` with these members (in this order,
        duplicates dropped), or replace an existing group's members (and
        name, if given).

        :return: a Deferred firing with ``None``.
        """

    def get_group(group_id: str) -> object:
        """:return: a Deferred firing with ``{"id", "name", "members"}`` or ``None``."""

    def remove_group(group_id: str) -> object:
        """
        Delete a group and its memberships; its messages stay.

        :return: a Deferred firing with whether it existed.
        """

    def add_member(group_id: str, user_id: str) -> object:
        """
        Add ``user_id`` at the end of the group's members.

        :return: a Deferred firing with whether ``user_id`` was added (False:
            already a member); failing with ``LookupError`` for an unknown
            group.
        """

    def remove_member(group_id: str, user_id: str) -> object:
        """
        :return: a Deferred firing with whether ``user_id`` was a member (False
            for an unknown group).
        """

    def list_all_groups(after: str | None = None, limit: int = 100) -> object:
        """
        :return: a Deferred firing with a page of groups as ``{"id", "name",
            "members"}``, by id.
        """
