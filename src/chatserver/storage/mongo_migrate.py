"""``python -m chatserver migrate-seed mongodb://host[:port]/database``: bring a
database laid out as node-chat-server's README example to this store's layout.

node-chat-server's example keeps messages in ``chats``, users with their
plaintext ``token`` (and, as MongoDB made them, ObjectId ids) in ``users``,
and groups with ObjectId ids and a ``users`` array of member ids in
``groups``. The migration, in this order:

1. makes this store's indexes (stopping, with one line, at a conflict);
2. users: hashes each plaintext ``token`` into ``tokenHash`` and removes the
   token; gives users with an ObjectId ``_id`` their hex string as ``_id``
   (the id their clients already know), keeping every other field;
3. groups: ObjectId ids and member ids become their hex strings;
4. messages: copies ``chats`` into ``messages`` (same ``_id``), with ``from``
   and ``to`` as strings, a ``Date`` ``createdAt`` as the ISO string the
   server writes, and the conversation key; ``chats`` itself is left as it was;
5. rebuilds the per-user conversation index from all messages.

Every step is idempotent, and the copy records how far it got, so a migration
that was interrupted is finished by running it again. ``--dry-run`` reports
what would change and changes nothing. Run it while no chat server (old or
new) writes to the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import ReplaceOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import react
from twisted.logger import globalLogBeginner
from txmongo import filter as qf
from txmongo.connection import ConnectionPool
from txmongo.database import Database

from chatserver.storage.mongo import (
    MongoStartupError,
    MongoStorage,
    conversation_entry_id,
    conversation_key,
    hash_token,
    last_key,
    page_beyond,
)
from chatserver.storage.mongo_indexes import INDEXES, existing_indexes, find_conflict

PROG = "python -m chatserver migrate-seed"
BATCH = 1000
# Where the copy of ``chats`` records how far it got.
PROGRESS = "chatserver_migrations"
PROGRESS_ID = "migrate-seed"
# Migrated conversation entries count every migrated message as seen by them.
EVERYTHING = ObjectId("0" * 24)
CONNECT_TIMEOUT = 30.0
DUPLICATE_KEY = 11000

_BY_ID = qf.sort(qf.ASCENDING("_id"))
_HISTORY = qf.sort(qf.DESCENDING("createdAt") + qf.DESCENDING("_id"))
_BY_CONVERSATION = qf.sort(qf.ASCENDING("conversation"))


class MigrationError(Exception):
    """The migration cannot go on; ``str()`` is one line: what and how to fix it."""


def as_id(value: object) -> str:
    """An id as this store keeps it: a string (an ObjectId's hex form)."""
    return str(value)


def iso_timestamp(moment: datetime) -> str:
    """A BSON date as the ISO string the server writes (``...T23:27:50.298Z``)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def convert_message(chat: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``messages`` document for one ``chats`` document, or None when it
    has no ``from`` or ``to`` (no conversation could hold it)."""
    sender, to = chat.get("from"), chat.get("to")
    if sender is None or to is None:
        return None
    message = {k: v for k, v in chat.items() if k not in ("conversation", "clientKey")}
    message["from"], message["to"] = as_id(sender), as_id(to)
    if isinstance(chat.get("createdAt"), datetime):
        message["createdAt"] = iso_timestamp(chat["createdAt"])
    message["conversation"] = conversation_key(
        [message["from"], message["to"]], bool(chat.get("isGroup"))
    )
    return message


def convert_user(user: Mapping[str, Any]) -> dict[str, Any]:
    """A user with its id as a string and its plaintext token, if any, hashed."""
    converted = {k: v for k, v in user.items() if k != "token"}
    converted["_id"] = as_id(user["_id"])
    token = user.get("token")
    if token is not None and token != "":
        converted["tokenHash"] = hash_token(str(token))
    return converted


def convert_group(group: Mapping[str, Any]) -> dict[str, Any]:
    converted = dict(group)
    converted["_id"] = as_id(group["_id"])
    converted["users"] = [as_id(m) for m in group.get("users") or []]
    return converted


@dataclass
class Report:
    """What the migration did (or, in a dry run, would do)."""

    dry_run: bool = False
    tokens_hashed: int = 0
    user_ids_converted: int = 0
    group_ids_converted: int = 0
    groups_with_member_ids_converted: int = 0
    messages_copied: int = 0
    messages_already_there: int = 0
    messages_skipped: int = 0
    chats_total: int = 0
    conversations: int = 0
    conversation_entries: int = 0
    messages_indexed: int = 0
    indexes: list[str] = field(default_factory=list)

    def lines(self, chats: str) -> list[str]:
        would = "would be " if self.dry_run else ""
        lines = [
            f"users: {self.tokens_hashed} plaintext tokens {would}hashed and removed, "
            f"{self.user_ids_converted} ObjectId ids {would}made strings",
            f"groups: {self.group_ids_converted} ObjectId ids {would}made strings, "
            f"{self.groups_with_member_ids_converted} groups' member ids {would}made strings",
        ]
        if self.dry_run:
            earlier = self.chats_total - self.messages_copied - self.messages_skipped
            lines.append(
                f"messages: {self.messages_copied} of the {self.chats_total} in {chats} would be "
                f"copied, {self.messages_skipped} skipped (no from or to), "
                f"{earlier} copied by an earlier run"
            )
            lines.append("conversations: the per-user conversation index would be rebuilt")
        else:
            lines.append(
                f"messages: {self.messages_copied} copied from {chats}, "
                f"{self.messages_already_there} there already, "
                f"{self.messages_skipped} skipped (no from or to)"
            )
            lines.append(
                f"conversations: {self.conversation_entries} entries for "
                f"{self.conversations} conversations, from {self.messages_indexed} messages"
            )
        lines.append(f"indexes: {', '.join(self.indexes)}")
        return lines


class SeedMigration:
    """The migration's steps over ``db`` (see the module's docstring)."""

    def __init__(self, db: Database, chats: str = "chats", dry_run: bool = False) -> None:
        self.db = db
        self.chats = chats
        self.dry_run = dry_run
        self.report = Report(dry_run=dry_run)

    async def run(self) -> Report:
        await self.check_tokens()
        await self.users()
        await self.groups()
        await self.messages()
        if not self.dry_run:
            await self.conversations()
        return self.report

    # -- users and groups ---------------------------------------------------

    async def check_tokens(self) -> None:
        """Stop before writing anything if two users share a plaintext token:
        the token could not say who signs in."""
        shared = await self.db.users.aggregate(
            [
                {"$match": {"token": {"$exists": True, "$nin": [None, ""]}}},
                {"$group": {"_id": "$token", "ids": {"$push": "$_id"}, "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
            ]
        )
        for token in shared:
            # A user half-way through an earlier run is there twice, under
            # its ObjectId and its string: that is one user.
            ids = sorted({as_id(i) for i in token["ids"]})
            if len(ids) > 1:
                raise MigrationError(
                    f"users {', '.join(ids[:5])} share one token, which cannot name one user: "
                    "give each its own token (in the token field) and run again"
                )

    async def users(self) -> None:
        users = self.db.users
        if self.dry_run:
            self.report.user_ids_converted = await users.count_documents(
                {"_id": {"$type": "objectId"}}
            )
            self.report.tokens_hashed = await users.count_documents({"token": {"$exists": True}})
            return
        # Users with an ObjectId id: a copy under the string id, then the
        # original goes (never changed in place, so an interrupted run
        # starts this user again from the original).
        while batch := await users.find({"_id": {"$type": "objectId"}}, limit=BATCH):
            for user in batch:
                converted = convert_user(user)
                await self._save_user(converted)
                await users.delete_one({"_id": user["_id"]})
                self.report.user_ids_converted += 1
                self.report.tokens_hashed += int("token" in user)
        while batch := await users.find({"token": {"$exists": True}}, limit=BATCH):
            for user in batch:
                await self._save_user(convert_user(user))
                self.report.tokens_hashed += 1

    async def _save_user(self, converted: dict[str, Any]) -> None:
        try:
            await self.db.users.replace_one({"_id": converted["_id"]}, converted, upsert=True)
        except DuplicateKeyError as e:
            raise MigrationError(
                f"user {converted['_id']} has the token of another user, which cannot name "
                "one user: give one of them another token and run again"
            ) from e

    async def groups(self) -> None:
        groups = self.db.groups
        if self.dry_run:
            self.report.group_ids_converted = await groups.count_documents(
                {"_id": {"$type": "objectId"}}
            )
            self.report.groups_with_member_ids_converted = await groups.count_documents(
                {"users": {"$type": "objectId"}}
            )
            return
        while batch := await groups.find({"_id": {"$type": "objectId"}}, limit=BATCH):
            for group in batch:
                converted = convert_group(group)
                await groups.replace_one({"_id": converted["_id"]}, converted, upsert=True)
                await groups.delete_one({"_id": group["_id"]})
                self.report.group_ids_converted += 1
        while batch := await groups.find({"users": {"$type": "objectId"}}, limit=BATCH):
            for group in batch:
                await groups.replace_one({"_id": group["_id"]}, convert_group(group))
                self.report.groups_with_member_ids_converted += 1

    # -- messages -------------------------------------------------------------

    async def messages(self) -> None:
        chats, progress = self.db[self.chats], self.db[PROGRESS]
        mark = await progress.find_one({"_id": PROGRESS_ID})
        after = mark["chatsThrough"] if mark else None
        self.report.chats_total = await chats.count_documents({})
        while True:
            selector = {} if after is None else {"_id": {"$gt": after}}
            batch = await chats.find(selector, sort=_BY_ID, limit=BATCH)
            if not batch:
                break
            converted = [m for m in map(convert_message, batch) if m is not None]
            self.report.messages_skipped += len(batch) - len(converted)
            if self.dry_run:
                self.report.messages_copied += len(converted)
            elif converted:
                await self._insert(converted)
            after = batch[-1]["_id"]
            if not self.dry_run:
                await progress.update_one(
                    {"_id": PROGRESS_ID}, {"$set": {"chatsThrough": after}}, upsert=True
                )

    async def _insert(self, messages: list[dict[str, Any]]) -> None:
        try:
            await self.db.messages.insert_many(messages, ordered=False)
            self.report.messages_copied += len(messages)
        except BulkWriteError as e:
            errors = e.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            # Copied by an earlier, interrupted run: the same _id is there.
            self.report.messages_already_there += len(errors)
            self.report.messages_copied += len(messages) - len(errors)

    # -- the conversation index ---------------------------------------------

    async def conversations(self) -> None:
        key: str | None = None
        while True:
            selector = {} if key is None else {"conversation": {"$gt": key}}
            following = await self.db.messages.find(
                selector, projection={"conversation": 1}, sort=_BY_CONVERSATION, limit=1
            )
            if not following or not isinstance(following[0].get("conversation"), str):
                break
            key = following[0]["conversation"]
            await self._conversation(key)

    async def _conversation(self, key: str) -> None:
        kind, *ids = json.loads(key)
        counts = _Counts()
        last: dict[str, Any] | None = None
        position: tuple[Any, Any] | None = None
        projection = {"from": 1, "to": 1, "read": 1, "readBy": 1, "createdAt": 1}
        while True:
            if position is None:
                batch = await self.db.messages.find(
                    {"conversation": key}, projection=projection, sort=_HISTORY, limit=BATCH
                )
            else:
                # Down the history index, from where the last batch ended.
                batch = await page_beyond(
                    self.db.messages,
                    {"conversation": key},
                    ("createdAt", position[0]),
                    ("_id", position[1]),
                    newer=False,
                    count=BATCH,
                    projection=projection,
                )
            if not batch:
                break
            last = last or batch[0]
            counts.add(batch)
            position = (batch[-1].get("createdAt"), batch[-1]["_id"])
        if last is None:
            return
        if kind == "g":
            group = await self.db.groups.find_one({"_id": ids[0]}, projection={"users": 1})
            people = {as_id(m): ids[0] for m in (group or {}).get("users", [])}
        else:
            a, b = ids
            people = {a: b, b: a}
        writes = [
            ReplaceOne(
                {"_id": conversation_entry_id(person, key)},
                {
                    "user": person,
                    "with": other,
                    "isGroup": kind == "g",
                    "last": last_key(last.get("createdAt"), last["_id"]),
                    "unread": counts.unread(person, kind == "g"),
                    "since": EVERYTHING,
                },
                upsert=True,
            )
            for person, other in people.items()
        ]
        if writes:
            await self.db.conversations.bulk_write(writes, ordered=False)
        self.report.conversations += 1
        self.report.conversation_entries += len(writes)
        self.report.messages_indexed += counts.messages


class _Counts:
    """Unread counts of one conversation, for any of its people, in one pass.

    A message is unread by a person when it is not from them, is not marked
    ``read`` (node-chat-server's only mark), and, for a group, they are not in
    its ``readBy``; for a direct message, it must also be to them.
    """

    def __init__(self) -> None:
        self.messages = 0
        self.unmarked = 0
        self.unmarked_from: dict[str, int] = {}
        self.unmarked_to: dict[str, int] = {}
        self.unmarked_read_by: dict[str, int] = {}

    def add(self, messages: Iterable[Mapping[str, Any]]) -> None:
        for message in messages:
            self.messages += 1
            if message.get("read") is True:
                continue
            self.unmarked += 1
            sender, to = as_id(message.get("from")), as_id(message.get("to"))
            self.unmarked_from[sender] = self.unmarked_from.get(sender, 0) + 1
            if to != sender:
                self.unmarked_to[to] = self.unmarked_to.get(to, 0) + 1
            for reader in {as_id(r) for r in message.get("readBy") or []} - {sender}:
                self.unmarked_read_by[reader] = self.unmarked_read_by.get(reader, 0) + 1

    def unread(self, person: str, group: bool) -> int:
        if not group:
            return self.unmarked_to.get(person, 0)
        return (
            self.unmarked - self.unmarked_from.get(person, 0) - self.unmarked_read_by.get(person, 0)
        )


# -- the command ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Convert a MongoDB database laid out as node-chat-server's README example "
            "(messages in chats, plaintext tokens, ObjectId ids) to chatserver's layout. "
            "Idempotent: run it again to finish an interrupted migration."
        ),
    )
    parser.add_argument("uri", help="mongodb://host[:port]/database")
    parser.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would change; change nothing"
    )
    parser.add_argument(
        "--chats", default="chats", help="the collection the messages are in (default: chats)"
    )
    return parser


async def migrate(
    uri: str, chats: str = "chats", dry_run: bool = False, out: Callable[[str], None] = print
) -> Report:
    """Run the migration against ``uri``, reporting on ``out``.

    :raise MigrationError: when it cannot go on (one line says why and what to do).
    """
    # Each step may take long: no deadline on the store's calls. Reaching
    # MongoDB at all is bounded by the URI's timeoutMS (5 s by default).
    storage = MongoStorage(uri, timeout=0)
    reach = MongoStorage(uri).timeout or CONNECT_TIMEOUT
    out(f"{'dry run: ' if dry_run else ''}migrating {storage!r} from node-chat-server's layout")
    pool = ConnectionPool(uri)
    try:
        db = pool[storage.database_name]
        await _reachable(db.command("ping"), storage, reach)
        if dry_run:
            report = await SeedMigration(db, chats, dry_run=True).run()
            report.indexes = await _planned_indexes(db)
    finally:
        await pool.disconnect()
    if not dry_run:
        storage.startService()
        try:
            try:
                await storage.whenReady()  # the indexes, each within its own budget
            except MongoStartupError as e:
                raise MigrationError(e.line) from e
            assert storage.database is not None
            report = await SeedMigration(storage.database, chats).run()
            report.indexes = [f"{len(INDEXES)} in place"]
        finally:
            await storage.stopService()
    for line in report.lines(chats):
        out(line)
    if not dry_run:
        out(
            f"done: {chats} is left as it was; once the chat works, drop it "
            f"(mongosh: db.getSiblingDB({json.dumps(storage.database_name)}).{chats}.drop())"
        )
    return report


async def _reachable(d: Deferred[Any], storage: MongoStorage, seconds: float) -> None:
    from twisted.internet import reactor

    try:
        await d.addTimeout(seconds, reactor)
    except DeferredTimeoutError as e:
        raise MigrationError(
            f"{storage!r} did not answer within {seconds:g}s: check the URI and that MongoDB runs"
        ) from e


async def _planned_indexes(db: Database) -> list[str]:
    planned: list[str] = []
    for spec in INDEXES:
        existing = await existing_indexes(db, spec.collection)
        conflict = find_conflict(db.name, spec, existing)
        if conflict is not None:
            raise MigrationError(conflict)
        if spec.name not in existing:
            planned.append(f"{spec.name} would be made")
    return planned or ["all in place"]


def main(argv: list[str]) -> int:
    """``migrate-seed`` with ``argv`` (its arguments); return the exit status:
    0 done, 1 failed (one line on stderr says why), 2 a usage error."""
    parser = _parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has reported
        return int(e.code or 0)
    if not options.uri.startswith("mongodb://"):
        parser.print_usage(sys.stderr)
        print(f"{PROG}: expected a mongodb://host[:port]/database URI", file=sys.stderr)
        return 2
    # Failures are reported on one line, not as logged tracebacks.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)

    async def run(reactor: IReactorCore) -> None:
        try:
            await migrate(options.uri, options.chats, options.dry_run)
        except MigrationError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            raise SystemExit(1) from e
        except (PyMongoError, ValueError) as e:
            print(f"{PROG}: MongoDB refused the migration: {e}; run again", file=sys.stderr)
            raise SystemExit(1) from e

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:  # react always ends with it
        return int(e.code or 0)
