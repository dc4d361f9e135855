"""Storage back-ends shipped with chatserver, and the loader for ``--storage``."""

from chatserver.storage.combined import CombinedStorage
from chatserver.storage.memory import MemoryStorage

__all__ = ["CombinedStorage", "MemoryStorage"]
