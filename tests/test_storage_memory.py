"""MemoryStorage, the reference store, passes every conformance suite."""

from chatserver.storage.memory import MemoryStorage
from chatserver.testing import (
    AccountConformanceTests,
    ConversationConformanceTests,
    DirectoryConformanceTests,
    RevocationConformanceTests,
    StorageConformanceTests,
)


class TestMemoryStorage(
    DirectoryConformanceTests,
    ConversationConformanceTests,
    AccountConformanceTests,
    RevocationConformanceTests,
    StorageConformanceTests,
):
    def make_storage(self):
        return MemoryStorage()

    def add_user(self, storage, user_id, token):
        return storage.add_user(user_id, token=token)

    def add_group(self, storage, group_id, member_ids):
        return storage.add_group(group_id, member_ids)
