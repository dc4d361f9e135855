"""``python -m chatserver users|groups ...``: manage the accounts of any store
that provides :class:`~chatserver.interfaces.IAccountStore`.

::

    users add USER [NAME]                create a user; prints their token (only this once)
    users list                           one line per user: id, tab, name
    users remove USER
    users new-token USER                 a new token, printed once; the old one stops working
    users revoke USER                    end the user's live sessions on every node
    groups add GROUP MEMBER... [--name NAME]  create a group, or replace its members
    groups list                          one line per group: id, then its members, tab-separated
    groups remove GROUP
    groups add-member GROUP USER...
    groups remove-member GROUP USER...

Every command takes ``--storage SPEC`` (default ``sqlite:chat.sqlite3``), read
by the loader the server uses, anywhere on the line: ``sqlite:PATH`` and
``mongodb://host:port/db`` are what we ship; a ``package.module:name`` store
works if it provides ``IAccountStore``. ``groups add`` and ``groups
add-member`` refuse ids the store has no user for unless given
``--allow-unknown``. It is safe to run against the store of a running server:
a new user's token works at once, a removed user's sessions end.

Exit status: 0 done, 1 failed, 2 a usage error; either failure is one line on
stderr.
"""

from __future__ import annotations

import argparse
import inspect
import sqlite3
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

from twisted.application.service import IService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import react
from twisted.logger import globalLogBeginner

from chatserver._version import __version__
from chatserver.errors import ChatError
from chatserver.interfaces import IAccountStore
from chatserver.storage.loader import DEFAULT_STORAGE, load_storage

PROG = "python -m chatserver"
PAGE = 500
#: The options that may come anywhere on the line, with whether they take a value.
ANYWHERE = {"--storage": True, "-s": True, "--allow-unknown": False}

Command = Callable[[IAccountStore, argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """The command line is wrong; ``str()`` says how, ``prog`` whose help to read."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` rather than print
    its usage and exit, so that a usage error is one line on stderr."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


async def _settle(result: object) -> Any:
    """The value of what an ``IAccountStore`` method returned: a Deferred (as
    the interface asks), a coroutine or a plain value."""
    if isinstance(result, Deferred) or inspect.isawaitable(result):
        return await result
    return result


async def _every(list_page: Callable[..., object]) -> AsyncIterator[dict[str, Any]]:
    """Every item of a paged ``list_all_*`` method, a page at a time."""
    after = None
    while True:
        page = await _settle(list_page(after=after, limit=PAGE))
        for item in page:
            yield item
        if len(page) < PAGE:
            return
        after = page[-1]["id"]


def _names(ids: Sequence[str]) -> str:
    """``'a', 'b'``: ids as an error line names them."""
    return ", ".join(repr(i) for i in ids)


class Failed(Exception):
    """The command could not do what it was asked; ``str()`` says why."""


# -- the commands: each takes an open IAccountStore and the parsed line,
# -- prints its results on stdout and returns the exit status (or raises Failed)


async def users_add(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Create the user; print their token alone on stdout (the only time it
    can be read: the store keeps a hash)."""
    token = await _settle(storage.add_user(args.user, args.name))
    print(token)  # alone on its line, so scripts can capture it
    print(f"created user {args.user!r}; keep the token above safe", file=sys.stderr)
    return 0


async def users_list(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Print every user as ``id<TAB>name``, by id, however many there are."""
    async for user in _every(storage.list_all_users):
        print(f"{user['id']}\t{user['name']}")
    return 0


async def users_remove(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Delete the user (the store ends their sessions); fail if there is none."""
    if not await _settle(storage.remove_user(args.user)):
        raise Failed(f"no user {args.user!r}")
    return 0


async def users_new_token(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Give the user a new random token, printed alone on stdout; the old one
    stops working and their sessions end. Fail if there is no such user."""
    token = await _settle(storage.set_token(args.user))
    print(token)
    print(f"new token for {args.user!r}; the old one no longer works", file=sys.stderr)
    return 0


async def users_revoke(storage: IAccountStore, args: argparse.Namespace) -> int:
    """End the user's live sessions on every server node (they may sign in
    again); any id will do, with an account or without (users signed in elsewhere)."""
    await _settle(storage.revoke_sessions(args.user))
    return 0


async def _refuse_unknown_users(
    storage: IAccountStore, args: argparse.Namespace, ids: list[str]
) -> None:
    """Fail naming the ids the store has no user for, unless ``--allow-unknown``:
    a typo would otherwise make a group member no one can sign in as."""
    if args.allow_unknown:
        return
    unknown = [i for i in dict.fromkeys(ids) if await _settle(storage.get_user(i)) is None]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise Failed(
            f"unknown user{plural} {_names(unknown)} (create with '{PROG} users add USER',"
            " or pass --allow-unknown)"
        )


async def _group(storage: IAccountStore, group_id: str) -> dict[str, Any]:
    """The group ``{"id", "name", "members"}``; fail if there is none."""
    group: dict[str, Any] | None = await _settle(storage.get_group(group_id))
    if group is None:
        raise Failed(f"no group {group_id!r}")
    return group


async def groups_add(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Create the group, or replace its members; nothing changes when a member
    is refused."""
    await _refuse_unknown_users(storage, args, args.members)
    await _settle(storage.add_group(args.group, args.members, args.name))
    return 0


async def groups_list(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Print every group as its id then its members, tab-separated, by id."""
    async for group in _every(storage.list_all_groups):
        print("\t".join([group["id"], *group["members"]]))
    return 0


async def groups_remove(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Delete the group; fail if there is none."""
    if not await _settle(storage.remove_group(args.group)):
        raise Failed(f"no group {args.group!r}")
    return 0


async def groups_add_member(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Add the users to an existing group; those already in it are named on
    stderr, and are no failure (what was asked holds)."""
    members = (await _group(storage, args.group))["members"]
    await _refuse_unknown_users(storage, args, args.users)
    already = [u for u in dict.fromkeys(args.users) if u in members]
    for user_id in dict.fromkeys(args.users):
        if user_id not in already:
            await _settle(storage.add_member(args.group, user_id))
    if already:
        print(f"already in {args.group!r}: {_names(already)}", file=sys.stderr)
    return 0


async def groups_remove_member(storage: IAccountStore, args: argparse.Namespace) -> int:
    """Take the users out of the group: all of them, or none when one of
    them is not a member."""
    members = (await _group(storage, args.group))["members"]
    # Checked first, so that a typo changes nothing.
    outsiders = [u for u in dict.fromkeys(args.users) if u not in members]
    if outsiders:
        raise Failed(f"not in group {args.group!r}: {_names(outsiders)}")
    for user_id in dict.fromkeys(args.users):
        await _settle(storage.remove_member(args.group, user_id))
    return 0


# -- the command line


EXAMPLES = f"""\
examples:
  {PROG} users add alice "Alice Smith"     prints alice's token, once
  {PROG} users list --storage sqlite:/var/lib/chat/chat.sqlite3
  {PROG} --storage mongodb://localhost:27017/chat groups add team alice bob
  {PROG} groups add-member team carol --allow-unknown
"""


def parser() -> argparse.ArgumentParser:
    """The admin command line: ``users`` and ``groups`` and their commands."""
    common = _Parser(add_help=False)
    common.add_argument(
        "-s",
        "--storage",
        metavar="SPEC",
        default=argparse.SUPPRESS,  # so that a subcommand's default does not undo an earlier one
        help=(
            f"the store to manage: sqlite:PATH, mongodb://host:port/db or package.module:name "
            f"(default: {DEFAULT_STORAGE})"
        ),
    )
    unknown = _Parser(add_help=False)
    unknown.add_argument(
        "--allow-unknown",
        action="store_true",
        help="accept member ids the store has no user for (users signed in elsewhere)",
    )
    top = _Parser(
        prog=PROG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Manage the users and groups of a chat store (SQLite, MongoDB, or any store "
            "providing IAccountStore). Options may come anywhere on the line. Safe to use "
            "on the store of a running server."
        ),
        epilog=EXAMPLES,
    )
    top.add_argument("--version", action="version", version=f"chatserver {__version__}")
    kinds = top.add_subparsers(title="commands", metavar="(users|groups)", required=True)

    def group(name: str, summary: str) -> Any:
        sub = kinds.add_parser(name, parents=[common], help=summary, description=summary)
        return sub.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        within: Any, name: str, run: Command, summary: str, *, allow_unknown: bool = False
    ) -> argparse.ArgumentParser:
        parents = [common, unknown] if allow_unknown else [common]
        sub: argparse.ArgumentParser = within.add_parser(
            name, parents=parents, help=summary, description=summary
        )
        sub.set_defaults(run=run, allow_unknown=False)
        return sub

    users = group("users", "Add, list or remove users; new tokens; end sessions.")
    add = command(users, "add", users_add, "Create a user and print their token (only once).")
    add.add_argument("user", metavar="USER", help="the user's id")
    add.add_argument("name", metavar="NAME", nargs="?", help="their display name (default: USER)")
    command(users, "list", users_list, "List users, one per line: id, tab, name.")
    remove = command(
        users,
        "remove",
        users_remove,
        "Delete a user (their token stops working, their sessions end, their group "
        "memberships go; their messages stay).",
    )
    remove.add_argument("user", metavar="USER")
    token = command(
        users,
        "new-token",
        users_new_token,
        "Give a user a new token and print it (only once); the old one stops working "
        "and their sessions end.",
    )
    token.add_argument("user", metavar="USER")
    revoke = command(
        users,
        "revoke",
        users_revoke,
        "End a user's live sessions on every server node; they may sign in again.",
    )
    revoke.add_argument("user", metavar="USER")

    groups = group("groups", "Add, list or remove groups and their members.")
    gadd = command(
        groups,
        "add",
        groups_add,
        "Create a group with these members, or replace an existing group's members.",
        allow_unknown=True,
    )
    gadd.add_argument("group", metavar="GROUP")
    gadd.add_argument("members", metavar="MEMBER", nargs="+", help="user ids")
    gadd.add_argument("--name", help="the group's display name (default: kept, or GROUP)")
    command(
        groups, "list", groups_list, "List groups, one per line: id, then members, tab-separated."
    )
    gremove = command(groups, "remove", groups_remove, "Delete a group (its messages stay).")
    gremove.add_argument("group", metavar="GROUP")
    madd = command(
        groups,
        "add-member",
        groups_add_member,
        "Add users to an existing group.",
        allow_unknown=True,
    )
    madd.add_argument("group", metavar="GROUP")
    madd.add_argument("users", metavar="USER", nargs="+")
    mremove = command(
        groups,
        "remove-member",
        groups_remove_member,
        "Take users out of a group (all of them, or none if one is not a member).",
    )
    mremove.add_argument("group", metavar="GROUP")
    mremove.add_argument("users", metavar="USER", nargs="+")
    return top


def hoist(argv: list[str]) -> list[str]:
    """Move the options that may come anywhere (``--storage``, ``--allow-unknown``)
    to the end of the line, where the command's own parser reads them: a
    parser cannot take them between the values of a ``MEMBER...`` argument."""
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return rest + hoisted + argv[i:]
        name = arg.partition("=")[0] if arg.startswith("--") else arg
        if name not in ANYWHERE:
            rest.append(arg)
        elif ANYWHERE[name] and "=" not in arg:
            hoisted.extend(
                argv[i : i + 2]
            )  # alone at the end: the parser says its value is missing
            i += 1
        else:
            hoisted.append(arg)
        i += 1
    return rest + hoisted


def open_store(spec: str) -> IAccountStore:
    """The :class:`IAccountStore` that ``spec`` names, not started yet.

    :raise UsageError: when ``spec`` names nothing usable, or a store
        without accounts.
    """
    if spec == "memory":
        raise UsageError(PROG, "--storage memory forgets everything on exit: nothing to manage")
    try:
        storage = load_storage(spec)
    except Exception as e:  # parsing the spec (a URI, an import): the operator's to fix
        raise UsageError(PROG, f"--storage: {e}") from e
    if not IAccountStore.providedBy(storage):
        raise UsageError(
            PROG,
            f"--storage: {storage!r} does not provide IAccountStore, so it has no users "
            "or groups to manage here",
        )
    return IAccountStore(storage)


async def run(storage: IAccountStore, command: Command, args: argparse.Namespace) -> int:
    """Start ``storage`` (if it is a service), run ``command`` against it,
    stop it; report a failure on one line; return the exit status."""
    service = IService(storage, None)
    if service is not None:
        service.startService()
    try:
        return await command(storage, args)
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
    except (ValueError, LookupError) as e:  # how IAccountStore refuses a request
        print(f"error: {e}", file=sys.stderr)
    except ChatError as e:  # the store could not answer (MongoDB unreachable, ...)
        print(f"error: {storage!r}: {e.message or e.code}", file=sys.stderr)
    except (RuntimeError, sqlite3.Error, OSError) as e:  # a file that cannot be opened, ...
        print(f"error: {e}", file=sys.stderr)
    except Exception:
        traceback.print_exc()  # not an expected failure: a bug, to be reported whole
    finally:
        if service is not None:
            await service.stopService()
    return 1


def main(argv: list[str]) -> int:
    """Run one admin command (``argv`` without the program name); return
    the exit status: 0 on success, 1 if it failed, 2 for a usage error."""
    try:
        args = parser().parse_args(hoist(argv))
        storage = open_store(getattr(args, "storage", DEFAULT_STORAGE))
    except UsageError as e:
        print(f"{e.prog}: {e} (try '{e.prog} --help')", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    # Failures are reported on one line each by run(), not as logged tracebacks.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    status = 1

    async def react_main(reactor: IReactorCore) -> None:
        nonlocal status
        status = await run(storage, args.run, args)

    def start(reactor: IReactorCore) -> Deferred[None]:
        return ensureDeferred(react_main(reactor))

    try:
        react(start)
    except SystemExit as e:  # react ends with it, 0 once start's Deferred fired
        if e.code:
            return int(e.code)
    return status
