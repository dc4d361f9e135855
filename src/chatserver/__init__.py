"""chatserver: a storage-agnostic WebSocket chat server for Twisted.

It speaks node-chat-server's protocol, so the ``chat-client`` browser package
works against it unchanged. Build one with :func:`build_server` over any
store providing :class:`IChatStorage`.

Importing this package installs no reactor and imports neither txmongo nor
txredisapi: the MongoDB store and the Redis cluster are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatserver._version import __version__
from chatserver.errors import ChatError, Ending, SessionRefused
from chatserver.events import SOCKET_AUTHORIZED, SOCKET_CLOSED, SOCKET_CONNECTED
from chatserver.interfaces import (
    IAccountStore,
    IAuthorizer,
    IChatStorage,
    IConversationStore,
    IGroupDirectory,
    IMessageStore,
    ISessionRevocations,
    IStorageStatus,
    IUserDirectory,
)
from chatserver.limits import Limits
from chatserver.server import ServerAPI
from chatserver.session import Session
from chatserver.storage.combined import CombinedStorage
from chatserver.storage.devauth import ClaimedIdAuthorizer
from chatserver.storage.memory import MemoryStorage
from chatserver.storage.override import AuthorizerOverride

if TYPE_CHECKING:
    from chatserver.cluster import RedisCluster
    from chatserver.storage.jwtauth import JWTAuthorizer
    from chatserver.storage.mongo import MongoStorage
    from chatserver.storage.sqlite import SQLiteStorage
    from chatserver.wiring import ChatServer, build_server

# Loaded on first use: each pulls in Autobahn, txmongo/pymongo, txredisapi,
# PyJWT and cryptography, or sqlite3 and a thread pool, which an application
# may never need.
_LAZY = {
    "ChatServer": "chatserver.wiring",
    "build_server": "chatserver.wiring",
    "MongoStorage": "chatserver.storage.mongo",
    "JWTAuthorizer": "chatserver.storage.jwtauth",
    "SQLiteStorage": "chatserver.storage.sqlite",
    "RedisCluster": "chatserver.cluster",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chatserver' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "SOCKET_AUTHORIZED",
    "SOCKET_CLOSED",
    "SOCKET_CONNECTED",
    "AuthorizerOverride",
    "ChatError",
    "ChatServer",
    "ClaimedIdAuthorizer",
    "CombinedStorage",
    "Ending",
    "IAccountStore",
    "IAuthorizer",
    "IChatStorage",
    "IConversationStore",
    "IGroupDirectory",
    "IMessageStore",
    "ISessionRevocations",
    "IStorageStatus",
    "IUserDirectory",
    "JWTAuthorizer",
    "Limits",
    "MemoryStorage",
    "MongoStorage",
    "RedisCluster",
    "SQLiteStorage",
    "ServerAPI",
    "Session",
    "SessionRefused",
    "__version__",
    "build_server",
]
