"""The :class:`~chatserver.interfaces.IUserDirectory` contract, as pytest tests."""

from __future__ import annotations

import random
from typing import Any

import pytest
import pytest_twisted

from chatserver.interfaces import IAccountStore, IUserDirectory
from chatserver.testing.conformance import ConformanceHooks, _call

# Ids chosen so that string order differs from what a careless sort gives:
# upper case before lower case, digits compared as text, accents after "z".
AWKWARD_IDS = ("Zoe", "amy", "u10", "u9", "émile", "zed", "u1", "Ötzi", "b-c", "b")


class DirectoryConformanceTests(ConformanceHooks):
    """Tests for a store that provides :class:`IUserDirectory`.

    A mixin: add it to the bases of your :class:`StorageConformanceTests`
    subclass, whose hooks it uses to provision users and groups. Names are
    checked exactly when the store also provides :class:`IAccountStore`
    (through which names can be given); otherwise they only have to be
    non-empty strings.
    """

    async def list_users(self, storage: Any, **query: Any) -> list[dict[str, Any]]:
        return await self._directory_page(storage.listUsers, query)

    async def list_groups(self, storage: Any, user_id: str, **query: Any) -> list[dict[str, Any]]:
        return await self._directory_page(storage.listGroups, {"userId": user_id, **query})

    async def list_contacts(self, storage: Any, user_id: str, **query: Any) -> list[dict[str, Any]]:
        return await self._directory_page(storage.listContacts, {"userId": user_id, **query})

    async def _directory_page(self, method: Any, query: dict[str, Any]) -> list[dict[str, Any]]:
        query = {"userId": None, "after": None, "limit": 100, **query}
        page = list(await _call(method, query))
        assert len(page) <= query["limit"], (
            f"a directory page must hold at most limit={query['limit']} entries, got {len(page)}"
        )
        for entry in page:
            assert isinstance(entry, dict) and isinstance(entry.get("id"), str), (
                f"a directory entry must be a dict with a string id, got {entry!r}"
            )
            assert isinstance(entry.get("name"), str) and entry["name"], (
                f"a directory entry must have a non-empty string name, got {entry!r}"
            )
        return page

    async def walk(self, list_page: Any, limit: int, *args: Any) -> list[str]:
        """Every id of a paged listing, read ``limit`` at a time with ``after``."""
        ids: list[str] = []
        after = None
        while True:
            page = await list_page(*args, after=after, limit=limit)
            ids.extend(entry["id"] for entry in page)
            if len(page) < limit:
                return ids
            after = page[-1]["id"]
            assert len(ids) < 100_000, "a directory walk with after must come to an end"

    def names_are_settable(self, storage: Any) -> bool:
        return IAccountStore.providedBy(storage)

    # The tests

    @pytest_twisted.ensureDeferred
    async def test_store_declares_the_user_directory(self, storage: Any) -> None:
        """The store declares IUserDirectory (``@implementer(IUserDirectory)``)."""
        assert IUserDirectory.providedBy(storage), (
            "the store must declare IUserDirectory, or the server will not use its directory"
        )

    @pytest_twisted.ensureDeferred
    async def test_list_users_pages_by_id(self, storage: Any) -> None:
        """listUsers lists every user, ordered by id (string order), a page at a
        time: at most ``limit``, starting after ``after``."""
        ids = [*AWKWARD_IDS, *(f"user{i:02}" for i in range(15))]
        for user_id in random.Random(7).sample(ids, len(ids)):
            await self.user(storage, user_id)
        expected = sorted(ids)
        first = await self.list_users(storage, limit=4)
        assert [u["id"] for u in first] == expected[:4], (
            "listUsers must return the first `limit` users in id order (Python string order)"
        )
        for limit in (1, 4, 7, len(ids), 100):
            assert await self.walk(self.list_users, limit, storage) == expected, (
                f"listUsers, read {limit} at a time with `after`, must list every user once, "
                "in id order"
            )
        middle = await self.list_users(storage, after="u", limit=3)
        assert [u["id"] for u in middle] == [i for i in expected if i > "u"][:3], (
            "listUsers must start after `after` even when no user has that id"
        )
        assert await self.list_users(storage, after=expected[-1]) == [], (
            "listUsers after the last id must be empty"
        )

    @pytest_twisted.ensureDeferred
    async def test_list_users_ignores_user_id(self, storage: Any) -> None:
        """listUsers lists the same users whoever asks."""
        for user_id in ("alice", "bob", "carol"):
            await self.user(storage, user_id)
        for asker in (None, "alice", "nobody"):
            page = await self.list_users(storage, userId=asker)
            assert [u["id"] for u in page] == ["alice", "bob", "carol"], (
                "listUsers must list every user regardless of userId"
            )

    @pytest_twisted.ensureDeferred
    async def test_list_groups_pages_the_users_groups(self, storage: Any) -> None:
        """listGroups lists the groups the user belongs to, and only those, by
        id, a page at a time."""
        mine = [f"g{i:02}" for i in range(11)] + ["Zeta", "éclair"]
        for group_id in random.Random(3).sample(mine, len(mine)):
            await self.group(storage, group_id, ["bob", "alice", "carol"])
        await self.group(storage, "others", ["bob", "carol"])
        expected = sorted(mine)
        for limit in (1, 5, 13, 50):
            assert await self.walk(self.list_groups, limit, storage, "alice") == expected, (
                f"listGroups, read {limit} at a time with `after`, must list each of the "
                "user's groups once, in id order, and no other group"
            )
        assert await self.list_groups(storage, "dave") == [], (
            "listGroups of a user in no group must be empty"
        )

    @pytest_twisted.ensureDeferred
    async def test_contacts_share_a_group(self, storage: Any) -> None:
        """listContacts lists everyone who shares a group with the user, once
        each, by id, without the user."""
        await self.group(storage, "team", ["alice", "carol", "bob"])
        await self.group(storage, "pair", ["dave", "alice", "bob"])
        await self.group(storage, "others", ["erin", "frank"])
        contacts = await self.list_contacts(storage, "alice")
        assert [c["id"] for c in contacts] == ["bob", "carol", "dave"], (
            "listContacts must list the members of the user's groups, once each, in id "
            "order, without the user and without members of other groups"
        )
        assert [c["id"] for c in await self.list_contacts(storage, "erin")] == ["frank"]

    @pytest_twisted.ensureDeferred
    async def test_contacts_share_a_direct_conversation(self, storage: Any) -> None:
        """listContacts lists everyone the user has sent a direct message to or
        received one from."""
        await self.create(storage, self.message("alice", "dave"))
        await self.create(storage, self.message("erin", "alice"))
        await self.create(storage, self.message("alice", "alice"))  # to oneself
        await self.create(storage, self.message("frank", "gina"))
        assert [c["id"] for c in await self.list_contacts(storage, "alice")] == [
            "dave",
            "erin",
        ], (
            "listContacts must list the people the user wrote to and those who wrote to "
            "the user (never the user), and no one else"
        )
        for user_id, other in (("dave", "alice"), ("erin", "alice"), ("gina", "frank")):
            assert [c["id"] for c in await self.list_contacts(storage, user_id)] == [other], (
                "listContacts must work both ways: the recipient of a message has the "
                "sender as a contact"
            )

    @pytest_twisted.ensureDeferred
    async def test_a_group_message_makes_no_contact_outside_the_group(self, storage: Any) -> None:
        """Posting to a group does not make anyone a contact but its members."""
        await self.group(storage, "team", ["alice", "bob"])
        await self.create(storage, self.message("alice", "team", group=True))
        assert [c["id"] for c in await self.list_contacts(storage, "alice")] == ["bob"]
        assert await self.list_contacts(storage, "team") == [], (
            "a group id must not become anyone's contact, nor get contacts, by a group message"
        )

    @pytest_twisted.ensureDeferred
    async def test_contacts_page_across_groups_and_conversations(self, storage: Any) -> None:
        """listContacts pages (``after``, ``limit``) through the union of the
        user's groups and conversations, in id order, each contact once."""
        rng = random.Random(11)
        people = [f"p{i:03}" for i in range(90)]
        contacts: set[str] = set()
        for g in range(6):
            members = rng.sample(people, 25)
            contacts.update(members)
            await self.group(storage, f"group{g}", ["alice", *members])
        for other in [*rng.sample(people, 20), "zz-direct", "Zz-direct"]:
            contacts.add(other)
            await self.create(storage, self.message(other, "alice"))
        expected = sorted(contacts)
        for limit in (1, 7, 25, 200):
            assert await self.walk(self.list_contacts, limit, storage, "alice") == expected, (
                f"listContacts, read {limit} at a time with `after`, must list every contact "
                "once, in id order"
            )

    @pytest_twisted.ensureDeferred
    async def test_a_user_alone_has_no_contacts(self, storage: Any) -> None:
        """listContacts of a user with no group and no conversation is empty."""
        await self.user(storage, "alice")
        await self.group(storage, "team", ["bob", "carol"])
        assert await self.list_contacts(storage, "alice") == []
        await self.group(storage, "solo", ["alice"])
        assert await self.list_contacts(storage, "alice") == [], (
            "being alone in a group must not make the user their own contact"
        )

    @pytest_twisted.ensureDeferred
    async def test_get_users_answers_the_known_ones(self, storage: Any) -> None:
        """getUsers answers ``{id: {"id", "name"}}`` for the known ids and
        leaves unknown ones out."""
        for user_id in ("alice", "bob", "carol"):
            await self.user(storage, user_id)
        users = await _call(storage.getUsers, ["carol", "nobody", "alice"])
        assert isinstance(users, dict) and sorted(users) == ["alice", "carol"], (
            f"getUsers must answer a dict keyed by the known ids only, got {users!r}"
        )
        for user_id, user in users.items():
            assert user["id"] == user_id and isinstance(user["name"], str) and user["name"]
        assert dict(await _call(storage.getUsers, [])) == {}

    @pytest_twisted.ensureDeferred
    async def test_names(self, storage: Any) -> None:
        """A user's and a group's name show in the directory; without one, it
        is their id."""
        if not self.names_are_settable(storage):
            pytest.skip("names can be given only through IAccountStore, which the store lacks")
        await _call(storage.add_user, "alice", "Alice Liddell")
        await _call(storage.add_user, "bob")
        await _call(storage.add_group, "team", ["alice", "bob"], "The Team")
        await _call(storage.add_group, "pair", ["alice", "bob"])
        assert await self.list_users(storage) == [
            {"id": "alice", "name": "Alice Liddell"},
            {"id": "bob", "name": "bob"},
        ], "listUsers must give each user's name, their id when they have none"
        assert await self.list_contacts(storage, "bob") == [
            {"id": "alice", "name": "Alice Liddell"}
        ], "listContacts must give each contact's name"
        assert await self.list_groups(storage, "alice") == [
            {"id": "pair", "name": "pair"},
            {"id": "team", "name": "The Team"},
        ], "listGroups must give each group's name, its id when it has none"
        users = await _call(storage.getUsers, ["alice"])
        assert users == {"alice": {"id": "alice", "name": "Alice Liddell"}}, (
            "getUsers must give each user's name"
        )

    @pytest_twisted.ensureDeferred
    async def test_a_contact_without_an_account_is_listed_by_id(self, storage: Any) -> None:
        """A group member the store keeps no account for is a contact all the
        same, named by their id."""
        await self.user(storage, "alice")
        await self.group(storage, "team", ["alice", "ghost"])
        contacts = await self.list_contacts(storage, "alice")
        assert [c["id"] for c in contacts] == ["ghost"], (
            "listContacts must list a group member even without an account"
        )
        if self.names_are_settable(storage):
            assert contacts[0]["name"] == "ghost", (
                "a contact without an account must be named by their id"
            )
