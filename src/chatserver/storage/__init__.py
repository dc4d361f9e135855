"""Storage back-ends shipped with chatserver, and the loader for ``--storage``."""

from chatserver.storage.combined import CombinedStorage
from chatserver.storage.memory import MemoryStorage
from chatserver.storage.mongo import MongoStorage
from chatserver.storage.sqlite import SQLiteStorage

__all__ = ["CombinedStorage", "MemoryStorage", "MongoStorage", "SQLiteStorage"]
