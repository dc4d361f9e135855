"""chatserver: a storage-agnostic WebSocket chat server for Twisted.

It speaks node-chat-server's protocol, so the ``chat-client`` browser package
works against it unchanged.
"""

from chatserver._version import __version__
from chatserver.errors import ChatError, ConnectionRefused
from chatserver.events import SOCKET_AUTHORIZED, SOCKET_CLOSED, SOCKET_CONNECTED
from chatserver.factory import ChatServerFactory
from chatserver.handlers import ChatHandler
from chatserver.interfaces import IAuthorizer, IChatStorage, IGroupDirectory, IMessageStore
from chatserver.limits import Limits
from chatserver.protocol import ChatServerProtocol
from chatserver.registry import ConnectionRegistry
from chatserver.storage.combined import CombinedStorage
from chatserver.storage.devauth import ClaimedIdAuthorizer
from chatserver.storage.memory import MemoryStorage
from chatserver.storage.mongo import MongoStorage
from chatserver.storage.sqlite import SQLiteStorage

__all__ = [
    "SOCKET_AUTHORIZED",
    "SOCKET_CLOSED",
    "SOCKET_CONNECTED",
    "ChatError",
    "ChatHandler",
    "ChatServerFactory",
    "ChatServerProtocol",
    "ClaimedIdAuthorizer",
    "CombinedStorage",
    "ConnectionRefused",
    "ConnectionRegistry",
    "IAuthorizer",
    "IChatStorage",
    "IGroupDirectory",
    "IMessageStore",
    "Limits",
    "MemoryStorage",
    "MongoStorage",
    "SQLiteStorage",
    "__version__",
]
