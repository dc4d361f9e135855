"""examples/custom_storage.py keeps the storage contract and the directory's."""

import pytest_twisted
from examples.custom_storage import DemoStorage

from chatserver.testing import DirectoryConformanceTests, StorageConformanceTests


class TestDemoStorage(DirectoryConformanceTests, StorageConformanceTests):
    def make_storage(self):
        return DemoStorage(users={}, groups={})

    def add_user(self, storage, user_id, token):
        storage.add_user(token, {"id": user_id, "name": user_id})

    def add_group(self, storage, group_id, member_ids):
        storage.set_group(group_id, member_ids)


@pytest_twisted.ensureDeferred
async def test_the_demo_people_and_group():
    storage = DemoStorage()
    assert await storage.authorize({"token": "carol-token"}) == {"id": "carol", "name": "Carol"}
    page = {"userId": "alice", "after": None, "limit": 10}
    assert await storage.listContacts(page) == [{"id": "bob", "name": "Bob"}]
    assert await storage.listGroups(page) == [{"id": "team", "name": "team"}]
    assert [u["id"] for u in await storage.listUsers(page)] == ["alice", "bob", "carol"]
