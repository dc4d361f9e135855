"""Build one :class:`IChatStorage` out of separately sourced parts."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from chatserver.interfaces import IAuthorizer, IChatStorage, IGroupDirectory, IMessageStore


@implementer(IChatStorage)
class CombinedStorage:
    """Delegates each method to the provider of its narrow interface.

    For example, tokens checked by your accounts service, messages kept in
    SQLite, and groups read from a directory::

        CombinedStorage(authorizer=MyTokenAuth(), messages=sqlite, groups=sqlite)
    """

    def __init__(
        self, authorizer: IAuthorizer, messages: IMessageStore, groups: IGroupDirectory
    ) -> None:
        self.authorizer = IAuthorizer(authorizer)
        self.messages = IMessageStore(messages)
        self.groups = IGroupDirectory(groups)

    def authorize(self, credentials: dict[str, Any]) -> object:
        return self.authorizer.authorize(credentials)

    def create(self, message: dict[str, Any]) -> object:
        return self.messages.create(message)

    def getMessages(self, query: dict[str, Any]) -> object:
        return self.messages.getMessages(query)

    def read(self, messageId: str, userId: str) -> object:
        return self.messages.read(messageId, userId)

    def getGroupUserIds(self, data: dict[str, Any]) -> object:
        return self.groups.getGroupUserIds(data)
