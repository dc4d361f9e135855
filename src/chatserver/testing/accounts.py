"""The :class:`~chatserver.interfaces.IAccountStore` and
:class:`~chatserver.interfaces.ISessionRevocations` contracts, as pytest tests."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import pytest_twisted

from chatserver.interfaces import IAccountStore, ISessionRevocations
from chatserver.testing.conformance import ConformanceHooks, _call, exception_of


def _named(exception: BaseException | None) -> str:
    return f"a {type(exception).__name__} ({exception})" if exception else "success"


class AccountConformanceTests(ConformanceHooks):
    """Tests for a store that provides :class:`IAccountStore`.

    A mixin: add it to the bases of your :class:`StorageConformanceTests`
    subclass. It provisions through the store's own methods.
    """

    async def fails_with(self, kind: type, rule: str, method: Any, *args: Any) -> None:
        error = await exception_of(method, *args)
        assert isinstance(error, kind), f"{rule}: expected a {kind.__name__}, got {_named(error)}"

    async def walk_all(self, list_page: Any, limit: int) -> list[str]:
        ids: list[str] = []
        after = None
        while True:
            page = list(await _call(list_page, after, limit))
            assert len(page) <= limit, f"a page must hold at most limit={limit} entries"
            ids.extend(entry["id"] for entry in page)
            if len(page) < limit:
                return ids
            after = page[-1]["id"]

    # The tests

    @pytest_twisted.ensureDeferred
    async def test_store_declares_the_account_store(self, storage: Any) -> None:
        """The store declares IAccountStore (``@implementer(IAccountStore)``)."""
        assert IAccountStore.providedBy(storage), "the store must declare IAccountStore"

    @pytest_twisted.ensureDeferred
    async def test_add_user_gives_a_token_that_signs_in(self, storage: Any) -> None:
        """add_user fires with a token that authorizes as the new user: the
        one given, or a new random one."""
        given = await _call(storage.add_user, "alice", None, "alice's own token")
        assert given == "alice's own token", "add_user must fire with the token it was given"
        made = [await _call(storage.add_user, user_id) for user_id in ("bob", "carol")]
        assert all(isinstance(t, str) and len(t) >= 16 for t in made), (
            "add_user without a token must make a random one of at least 16 characters"
        )
        assert made[0] != made[1], "random tokens must differ"
        for user_id, token in zip(("alice", "bob", "carol"), (given, *made), strict=True):
            user = await _call(storage.authorize, {"token": token})
            assert user is not None and user.get("id", user.get("_id")) == user_id, (
                "the token add_user fires with must authorize as that user"
            )

    @pytest_twisted.ensureDeferred
    async def test_add_user_refuses_duplicates_and_empty_values(self, storage: Any) -> None:
        """add_user fails with ValueError for an existing user, a token
        already in use, or an empty id, name or token."""
        token = await _call(storage.add_user, "alice")
        await self.fails_with(ValueError, "add_user of an existing user", storage.add_user, "alice")
        await self.fails_with(
            ValueError, "add_user with a token in use", storage.add_user, "bob", None, token
        )
        for args in (("",), ("bob", ""), ("bob", None, "")):
            await self.fails_with(ValueError, f"add_user{args!r}", storage.add_user, *args)
        assert await _call(storage.get_user, "bob") is None, "a refused add_user must add no one"
        user = await _call(storage.authorize, {"token": token})
        assert user.get("id", user.get("_id")) == "alice", "a refused add_user must change nothing"

    @pytest_twisted.ensureDeferred
    async def test_get_user(self, storage: Any) -> None:
        """get_user fires with ``{"id", "name"}`` (the name defaults to the
        id), or None for an unknown user."""
        await _call(storage.add_user, "alice", "Alice")
        await _call(storage.add_user, "bob")
        assert await _call(storage.get_user, "alice") == {"id": "alice", "name": "Alice"}
        assert await _call(storage.get_user, "bob") == {"id": "bob", "name": "bob"}, (
            "a user added without a name must be named by their id"
        )
        assert await _call(storage.get_user, "carol") is None

    @pytest_twisted.ensureDeferred
    async def test_set_token(self, storage: Any) -> None:
        """set_token replaces a user's token: the old one stops working."""
        old = await _call(storage.add_user, "alice")
        other = await _call(storage.add_user, "bob")
        new = await _call(storage.set_token, "alice")
        assert isinstance(new, str) and new and new != old
        assert await _call(storage.authorize, {"token": old}) is None, (
            "after set_token the old token must stop working"
        )
        user = await _call(storage.authorize, {"token": new})
        assert user is not None and user.get("id", user.get("_id")) == "alice"
        assert await _call(storage.set_token, "alice", "chosen") == "chosen"
        assert (await _call(storage.authorize, {"token": "chosen"}))["id"] == "alice"
        await self.fails_with(LookupError, "set_token of an unknown user", storage.set_token, "x")
        await self.fails_with(
            ValueError, "set_token to another user's token", storage.set_token, "alice", other
        )
        assert (await _call(storage.authorize, {"token": other}))["id"] == "bob"

    @pytest_twisted.ensureDeferred
    async def test_remove_user(self, storage: Any) -> None:
        """remove_user deletes the user (their token stops working) and their
        group memberships, but not their messages; it fires with whether
        the user existed."""
        token = await _call(storage.add_user, "alice")
        await _call(storage.add_group, "team", ["alice", "bob"])
        await self.create(storage, self.message("alice", "bob", "stays"))
        assert await _call(storage.remove_user, "alice") is True
        assert await _call(storage.remove_user, "alice") is False, (
            "remove_user of an unknown user must fire with False"
        )
        assert await _call(storage.authorize, {"token": token}) is None, (
            "a removed user's token must stop working"
        )
        assert await _call(storage.get_user, "alice") is None
        assert list(await _call(storage.getGroupUserIds, {"groupId": "team"})) == ["bob"], (
            "a removed user must leave their groups"
        )
        assert [m["text"] for m in await self.history(storage, "bob", "alice")] == ["stays"], (
            "a removed user's messages must stay"
        )

    @pytest_twisted.ensureDeferred
    async def test_list_all_users_pages_by_id(self, storage: Any) -> None:
        """list_all_users pages through every user by id, ``after`` and ``limit``."""
        ids = ["b", "Zoe", "a", "émile", *(f"u{i}" for i in range(12))]
        for user_id in ids:
            await _call(storage.add_user, user_id)
        for limit in (1, 5, 16, 100):
            assert await self.walk_all(storage.list_all_users, limit) == sorted(ids), (
                f"list_all_users, {limit} at a time with after, must list every user by id"
            )
        page = await _call(storage.list_all_users, "u", 2)
        assert page == [{"id": "u0", "name": "u0"}, {"id": "u1", "name": "u1"}]

    @pytest_twisted.ensureDeferred
    async def test_groups(self, storage: Any) -> None:
        """add_group creates a group (members in order, duplicates dropped) or
        replaces its members, and its name if one is given; get_group reads it."""
        await _call(storage.add_group, "team", ["carol", "alice", "carol", "bob"], "The Team")
        assert await _call(storage.get_group, "team") == {
            "id": "team",
            "name": "The Team",
            "members": ["carol", "alice", "bob"],
        }, "get_group must give the members in the order given, without duplicates"
        assert list(await _call(storage.getGroupUserIds, {"groupId": "team"})) == [
            "carol",
            "alice",
            "bob",
        ]
        await _call(storage.add_group, "team", ["bob", "dave"])
        assert await _call(storage.get_group, "team") == {
            "id": "team",
            "name": "The Team",
            "members": ["bob", "dave"],
        }, "add_group of an existing group must replace its members and keep its name"
        await _call(storage.add_group, "team", ["bob"], "Renamed")
        assert (await _call(storage.get_group, "team"))["name"] == "Renamed"
        await _call(storage.add_group, "pair", [])
        assert await _call(storage.get_group, "pair") == {
            "id": "pair",
            "name": "pair",
            "members": [],
        }, "a group without a name must be named by its id; a group may be empty"
        assert await _call(storage.get_group, "nope") is None
        for args in (("", ["a"]), ("g", [""]), ("g", ["a"], "")):
            await self.fails_with(ValueError, f"add_group{args!r}", storage.add_group, *args)
        assert await _call(storage.get_group, "g") is None, "a refused add_group must add nothing"

    @pytest_twisted.ensureDeferred
    async def test_members(self, storage: Any) -> None:
        """add_member and remove_member change one membership and say whether
        they did; add_member to an unknown group is a LookupError."""
        await _call(storage.add_group, "team", ["alice"])
        assert await _call(storage.add_member, "team", "bob") is True
        assert await _call(storage.add_member, "team", "bob") is False, (
            "add_member of a member must fire with False"
        )
        assert (await _call(storage.get_group, "team"))["members"] == ["alice", "bob"], (
            "add_member must add at the end"
        )
        await self.fails_with(
            LookupError, "add_member to an unknown group", storage.add_member, "nope", "bob"
        )
        assert await _call(storage.remove_member, "team", "alice") is True
        assert await _call(storage.remove_member, "team", "alice") is False
        assert await _call(storage.remove_member, "nope", "alice") is False
        assert list(await _call(storage.getGroupUserIds, {"groupId": "team"})) == ["bob"]

    @pytest_twisted.ensureDeferred
    async def test_remove_group(self, storage: Any) -> None:
        """remove_group deletes a group and its memberships (its messages
        stay) and fires with whether it existed."""
        await _call(storage.add_group, "team", ["alice", "bob"])
        await self.create(storage, self.message("alice", "team", "stays", group=True))
        assert await _call(storage.remove_group, "team") is True
        assert await _call(storage.remove_group, "team") is False
        assert await _call(storage.get_group, "team") is None
        assert list(await _call(storage.getGroupUserIds, {"groupId": "team"})) == []
        history = await self.history(storage, "bob", "team", isGroup=True)
        assert [m["text"] for m in history] == ["stays"], "a removed group's messages must stay"

    @pytest_twisted.ensureDeferred
    async def test_list_all_groups_pages_by_id(self, storage: Any) -> None:
        """list_all_groups pages through every group, empty ones included, by id."""
        ids = ["b", "Zed", "a", "été", *(f"g{i}" for i in range(9))]
        for group_id in ids:
            await _call(storage.add_group, group_id, [] if group_id == "b" else ["alice", group_id])
        for limit in (1, 4, 13, 50):
            assert await self.walk_all(storage.list_all_groups, limit) == sorted(ids), (
                f"list_all_groups, {limit} at a time with after, must list every group by id"
            )
        [g0] = await _call(storage.list_all_groups, "g", 1)
        assert g0 == {"id": "g0", "name": "g0", "members": ["alice", "g0"]}


class RevocationConformanceTests(ConformanceHooks):
    """Tests for a store that provides :class:`ISessionRevocations`.

    A mixin: add it to the bases of your :class:`StorageConformanceTests`
    subclass. It revokes through :meth:`revoke`, by default the store's
    ``revoke_sessions`` (from :class:`IAccountStore`); the tests of what
    the account methods record need :class:`IAccountStore`.
    """

    def revoke(self, storage: Any, user_id: str) -> Any:
        """End ``user_id``'s sessions in ``storage``."""
        if not IAccountStore.providedBy(storage):
            pytest.skip("override revoke() to say how sessions are revoked in this store")
        return storage.revoke_sessions(user_id)

    def needs_accounts(self, storage: Any) -> None:
        if not IAccountStore.providedBy(storage):
            pytest.skip("needs IAccountStore, which the store lacks")

    async def revocations(self, storage: Any, cursor: Any) -> tuple[list[str], Any]:
        result = await _call(storage.revocationsAfter, cursor)
        user_ids, next_cursor = result
        user_ids = list(user_ids)
        assert all(isinstance(u, str) for u in user_ids), "revoked ids must be strings"
        try:
            # A cluster hands cursors around as JSON.
            next_cursor = orjson.loads(orjson.dumps(next_cursor))
        except TypeError:
            raise AssertionError(f"a cursor must be JSON, got {next_cursor!r}") from None
        return user_ids, next_cursor

    # The tests

    @pytest_twisted.ensureDeferred
    async def test_store_declares_session_revocations(self, storage: Any) -> None:
        """The store declares ISessionRevocations (``@implementer(ISessionRevocations)``)."""
        assert ISessionRevocations.providedBy(storage), "the store must declare ISessionRevocations"

    @pytest_twisted.ensureDeferred
    async def test_the_first_call_starts_from_now(self, storage: Any) -> None:
        """revocationsAfter(None) fires with no users and the cursor of now,
        even after earlier revocations."""
        await _call(self.revoke, storage, "alice")
        user_ids, cursor = await self.revocations(storage, None)
        assert user_ids == [], "revocationsAfter(None) must fire with no users"
        assert (await self.revocations(storage, cursor))[0] == [], (
            "no one may be reported revoked after the cursor of now until someone is"
        )

    @pytest_twisted.ensureDeferred
    async def test_revocations_are_seen_once_in_order(self, storage: Any) -> None:
        """Each revocation after a cursor is reported, oldest first; the cursor
        returned moves past them, and survives a JSON round trip."""
        _, start = await self.revocations(storage, None)
        await _call(self.revoke, storage, "alice")
        await _call(self.revoke, storage, "bob")
        user_ids, cursor = await self.revocations(storage, start)
        assert user_ids == ["alice", "bob"], (
            f"revocationsAfter must report the users revoked since the cursor, oldest "
            f"first; got {user_ids!r}"
        )
        assert (await self.revocations(storage, cursor))[0] == [], (
            "the cursor returned must move past the revocations reported"
        )
        await _call(self.revoke, storage, "carol")
        assert (await self.revocations(storage, cursor))[0] == ["carol"]
        again, _ = await self.revocations(storage, start)
        assert again == ["alice", "bob", "carol"], "an older cursor must see everything since"

    @pytest_twisted.ensureDeferred
    async def test_account_changes_revoke(self, storage: Any) -> None:
        """remove_user, set_token and revoke_sessions each record a revocation;
        add_user and group changes record none."""
        self.needs_accounts(storage)
        await _call(storage.add_user, "alice")
        await _call(storage.add_user, "bob")
        _, start = await self.revocations(storage, None)
        await _call(storage.add_user, "carol")
        await _call(storage.add_group, "team", ["alice", "bob"])
        await _call(storage.remove_member, "team", "bob")
        assert (await self.revocations(storage, start))[0] == [], (
            "adding users and changing groups must revoke no one"
        )
        await _call(storage.set_token, "alice")
        await _call(storage.remove_user, "bob")
        await _call(storage.revoke_sessions, "carol")
        user_ids, _ = await self.revocations(storage, start)
        assert sorted(set(user_ids)) == ["alice", "bob", "carol"], (
            "set_token, remove_user and revoke_sessions must each revoke the user's sessions"
        )
