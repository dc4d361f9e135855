"""``python -m chatserver users|groups ...``: manage an SQLite database's accounts.

::

    users add USER [NAME]        create a user; prints their token (only this once)
    users list                   one line per user: id, tab, name
    users remove USER
    groups add GROUP MEMBER...   create a group, or replace its members
    groups list                  one line per group: id, then its members, tab-separated
    groups remove GROUP

Every command takes ``--storage sqlite:PATH`` (default ``sqlite:chat.sqlite3``),
anywhere on the line. It is safe to run against the database of a running
server: a new user's token works at once.
"""

from __future__ import annotations

import sqlite3
import sys
import traceback
from collections.abc import AsyncIterator, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import react
from twisted.logger import globalLogBeginner
from twisted.python import usage

from chatserver.storage.sqlite import SQLiteStorage

DEFAULT_STORAGE = "sqlite:chat.sqlite3"
PROG = "python -m chatserver"
PAGE = 500


async def _every(list_page: Callable[..., Deferred[list[dict]]]) -> AsyncIterator[dict]:
    """Every item of a paged ``list_all_*`` method, a page at a time."""
    after = None
    while True:
        page = await list_page(after=after, limit=PAGE)
        for item in page:
            yield item
        if len(page) < PAGE:
            return
        after = page[-1]["id"]


class _Group(usage.Options):
    """A command group (``users``, ``groups``) that needs a subcommand."""

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("missing command: " + ", ".join(c[0] for c in self.subCommands))


class _Command(usage.Options):
    """A leaf command; :meth:`run` does its work against an open store."""

    async def run(self, storage: SQLiteStorage) -> int:
        """Do the work; print results on stdout; return the exit code."""
        raise NotImplementedError


class UsersAdd(_Command):
    synopsis = f"Usage: {PROG} users add USER [NAME]"
    longdesc = "Create a user and print their token: it is stored only as a hash."

    def parseArgs(self, user_id: str, name: str | None = None) -> None:
        self.user_id, self.name = user_id, name

    async def run(self, storage: SQLiteStorage) -> int:
        token = await storage.add_user(self.user_id, self.name)
        print(token)  # alone on its line, so scripts can capture it
        print(f"created user {self.user_id!r}; keep the token above safe", file=sys.stderr)
        return 0


class UsersList(_Command):
    synopsis = f"Usage: {PROG} users list"

    async def run(self, storage: SQLiteStorage) -> int:
        async for user in _every(storage.list_all_users):
            print(f"{user['id']}\t{user['name']}")
        return 0


class UsersRemove(_Command):
    synopsis = f"Usage: {PROG} users remove USER"

    def parseArgs(self, user_id: str) -> None:
        self.user_id = user_id

    async def run(self, storage: SQLiteStorage) -> int:
        if await storage.remove_user(self.user_id):
            return 0
        print(f"error: no user {self.user_id!r}", file=sys.stderr)
        return 1


class Users(_Group):
    synopsis = f"Usage: {PROG} users (add|list|remove) ..."
    subCommands = [
        ("add", None, UsersAdd, "Create a user and print their token."),
        ("list", None, UsersList, "List users."),
        ("remove", None, UsersRemove, "Delete a user and their group memberships."),
    ]


class GroupsAdd(_Command):
    synopsis = f"Usage: {PROG} groups add GROUP MEMBER..."
    longdesc = "Create a group with these members, or replace an existing group's members."

    def parseArgs(self, group_id: str, *member_ids: str) -> None:
        if not member_ids:
            raise usage.UsageError("a group needs at least one member")
        self.group_id, self.member_ids = group_id, list(member_ids)

    async def run(self, storage: SQLiteStorage) -> int:
        await storage.add_group(self.group_id, self.member_ids)
        return 0


class GroupsList(_Command):
    synopsis = f"Usage: {PROG} groups list"

    async def run(self, storage: SQLiteStorage) -> int:
        async for group in _every(storage.list_all_groups):
            print("\t".join([group["id"], *group["members"]]))
        return 0


class GroupsRemove(_Command):
    synopsis = f"Usage: {PROG} groups remove GROUP"

    def parseArgs(self, group_id: str) -> None:
        self.group_id = group_id

    async def run(self, storage: SQLiteStorage) -> int:
        if await storage.remove_group(self.group_id):
            return 0
        print(f"error: no group {self.group_id!r}", file=sys.stderr)
        return 1


class Groups(_Group):
    synopsis = f"Usage: {PROG} groups (add|list|remove) ..."
    subCommands = [
        ("add", None, GroupsAdd, "Create a group, or replace its members."),
        ("list", None, GroupsList, "List groups and their members."),
        ("remove", None, GroupsRemove, "Delete a group."),
    ]


class AdminOptions(_Group):
    synopsis = f"Usage: {PROG} [--storage sqlite:PATH] (users|groups) COMMAND ..."
    longdesc = (
        "Manage the users and groups of an SQLite chat database. --storage may come "
        "anywhere on the line; it is safe to use on a running server's database."
    )
    optParameters = [
        ["storage", None, DEFAULT_STORAGE, "The database to manage, as sqlite:PATH."],
    ]
    subCommands = [
        ("users", None, Users, "Add, list or remove users."),
        ("groups", None, Groups, "Add, list or remove groups."),
    ]

    def postOptions(self) -> None:
        super().postOptions()
        scheme, _, path = self["storage"].partition(":")
        if scheme != "sqlite" or not path:
            raise usage.UsageError(
                f"--storage must be sqlite:PATH, not {self['storage']!r}: "
                "users and groups of other stores are managed by those stores"
            )
        self.path = path


def _hoist_storage(argv: list[str]) -> list[str]:
    """Move ``--storage`` to the front, so it may follow the command and its
    arguments (the option parser stops at the first argument)."""
    hoisted: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest.append(arg)
            rest.extend(args)
        elif arg == "--storage":
            hoisted = [arg, *[next(args, "")][:1]]
        elif arg.startswith("--storage="):
            hoisted = [arg]
        else:
            rest.append(arg)
    return hoisted + rest


async def _run(reactor: IReactorCore, path: str, command: _Command) -> None:
    storage = SQLiteStorage(path, reactor)
    storage.startService()
    try:
        code = await command.run(storage)
    except (ValueError, RuntimeError, sqlite3.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except Exception:
        traceback.print_exc()
        code = 1
    finally:
        await storage.stopService()
    if code:
        raise SystemExit(code)


def main(argv: list[str]) -> int:
    """Run one admin command (``argv`` without the program name); return
    the exit status: 0 on success, 1 if it failed, 2 for a usage error."""
    config = AdminOptions()
    try:
        config.parseOptions(_hoist_storage(argv))
    except usage.UsageError as e:
        print(f"{PROG}: {e} (try --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    command = config.subOptions.subOptions
    # Failures are reported on one line each by _run, not as logged tracebacks.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)

    def run(reactor: IReactorCore) -> Deferred[None]:
        return ensureDeferred(_run(reactor, config.path, command))

    try:
        react(run)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
