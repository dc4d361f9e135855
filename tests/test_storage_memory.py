"""MemoryStorage, the reference store, passes the storage conformance suite."""

from chatserver.storage.memory import MemoryStorage
from chatserver.testing import StorageConformanceTests


class TestMemoryStorage(StorageConformanceTests):
    def make_storage(self):
        return MemoryStorage()

    def add_user(self, storage, user_id, token):
        storage.add_user({"id": user_id, "name": user_id}, token)

    def add_group(self, storage, group_id, member_ids):
        storage.add_group(group_id, member_ids)
