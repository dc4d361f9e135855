"""The MongoDB store's indexes: what they are, how they are made, and what an
operator reads when one cannot be made.

Each index is created on its own (one ``createIndexes`` command per index), so
a problem with one names that one and does not leave the others unbuilt. A
problem that only an operator can fix (an index of the same name on other
keys, the same keys under another name with other options, duplicate values
where a unique index is needed, no permission) raises :class:`IndexProblem`,
whose text is the single line to show: what is wrong and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import OperationFailure
from txmongo.database import Database

# MongoDB's error codes for index trouble.
INDEX_ALREADY_EXISTS = 68  # old servers: same name, other definition
INDEX_OPTIONS_CONFLICT = 85  # same keys under another name, or other options
INDEX_KEY_SPECS_CONFLICT = 86  # same name, other keys or options
DUPLICATE_KEY = 11000  # a unique index over values that repeat
NAMESPACE_NOT_FOUND = 26

# Options that change what an index means; two indexes on the same keys that
# agree on these serve the same queries and enforce the same rules.
_MEANINGFUL_OPTIONS = ("unique", "partialFilterExpression", "expireAfterSeconds", "sparse")


@dataclass(frozen=True)
class IndexSpec:
    """One index of the store: ``collection``, ``name``, ``key`` (field and
    direction, in order) and its options (``unique``, ...)."""

    collection: str
    name: str
    key: tuple[tuple[str, int], ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    #: What it is for, in the words of the README's index list.
    purpose: str = ""

    def document(self) -> dict[str, Any]:
        """The index as ``createIndexes`` takes it (key order preserved)."""
        return {"key": dict(self.key), "name": self.name, **self.options}


INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec(
        "messages",
        "conversation_history",
        (("conversation", 1), ("createdAt", -1), ("_id", -1)),
        purpose="one conversation's history, a page at a time, in either direction "
        "(direct and group conversations alike)",
    ),
    IndexSpec(
        "messages",
        "client_message_id",
        (("from", 1), ("clientKey", 1)),
        {"unique": True, "partialFilterExpression": {"clientKey": {"$exists": True}}},
        purpose="a resent clientMessageId stores one message",
    ),
    IndexSpec(
        "users",
        "token_hash",
        (("tokenHash", 1),),
        # Users the application made without a token must not collide.
        {"unique": True, "partialFilterExpression": {"tokenHash": {"$exists": True}}},
        purpose="sign-in by token; no two users share a token",
    ),
    IndexSpec(
        "groups",
        "member_groups",
        (("users", 1), ("_id", 1)),
        purpose="the groups of a user, by id",
    ),
    IndexSpec(
        "conversations",
        "conversations_by_last",
        (("user", 1), ("last", -1)),
        purpose="a user's conversations, latest first",
    ),
    IndexSpec(
        "conversations",
        "conversations_by_partner",
        (("user", 1), ("isGroup", 1), ("with", 1)),
        purpose="the people a user has talked with directly, by id",
    ),
    IndexSpec(
        "revocations",
        "revocations_expiry",
        (("at", 1),),
        # Nodes poll every few seconds: a day is ample, and keeps it small.
        {"expireAfterSeconds": 86400},
        purpose="session revocations since a moment; each expires after a day",
    ),
)


class IndexProblem(Exception):
    """An index cannot be made as the store needs it; ``str()`` is one line
    for an operator: the problem and its fix."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def format_key(key: Mapping[str, Any] | tuple[tuple[str, Any], ...]) -> str:
    """``{conversation: 1, createdAt: -1}``, as mongosh shows an index key."""
    pairs = key.items() if isinstance(key, Mapping) else key
    return "{" + ", ".join(f"{name}: {_value(direction)}" for name, direction in pairs) + "}"


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, Mapping):
        return format_key(value)
    return json.dumps(value, default=str)


def _options(index: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: index[name] for name in _MEANINGFUL_OPTIONS if index.get(name) not in (None, False)
    }


def _same_key(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return [(k, float(v) if isinstance(v, int | float) else v) for k, v in a.items()] == [
        (k, float(v) if isinstance(v, int | float) else v) for k, v in b.items()
    ]


def _same_options(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.dumps(_options(a), sort_keys=True, default=str) == json.dumps(
        _options(b), sort_keys=True, default=str
    )


def _describe_options(index: Mapping[str, Any]) -> str:
    options = _options(index)
    if not options:
        return "no options"
    return ", ".join(f"{name}: {_value(value)}" for name, value in options.items())


def _shell(database: str, collection: str, call: str) -> str:
    return f'mongosh: db.getSiblingDB("{database}").{collection}.{call}'


def _drop(database: str, collection: str, name: str) -> str:
    return _shell(database, collection, f"dropIndex({json.dumps(name)})")


def find_conflict(
    database: str, spec: IndexSpec, existing: Mapping[str, Mapping[str, Any]]
) -> str | None:
    """The line explaining why ``spec`` cannot coexist with the ``existing``
    indexes of its collection (``listIndexes`` documents by name), or None
    when it can (it is there already, or nothing is in its way).

    An index with ``spec``'s keys and meaning under another name is no
    conflict: see :func:`equivalent_index`.
    """
    want = spec.document()
    ns = f"{database}.{spec.collection}"
    same_name = existing.get(spec.name)
    if same_name is not None:
        if _same_key(same_name["key"], want["key"]) and _same_options(same_name, want):
            return None
        return (
            f"index conflict: {ns} has an index named {spec.name} on "
            f"{format_key(same_name['key'])} ({_describe_options(same_name)}), but chatserver "
            f"needs that name for {format_key(spec.key)} ({_describe_options(want)}); "
            f"drop it ({_drop(database, spec.collection, spec.name)}) "
            "and start again: chatserver then builds its own"
        )
    for name, index in existing.items():
        if _same_key(index["key"], want["key"]) and not _same_options(index, want):
            return (
                f"index conflict: {ns} has an index {name} on {format_key(spec.key)} "
                f"({_describe_options(index)}), but chatserver needs {format_key(spec.key)} "
                f"with {_describe_options(want)} (its index {spec.name}); "
                f"drop {name} ({_drop(database, spec.collection, name)}) "
                "and start again: chatserver then builds its own"
            )
    return None


def equivalent_index(spec: IndexSpec, existing: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The name of an existing index that does ``spec``'s job (same keys,
    same options) under another name, if there is one."""
    want = spec.document()
    for name, index in existing.items():
        if _same_key(index["key"], want["key"]) and _same_options(index, want):
            return name
    return None


def duplicates_line(database: str, spec: IndexSpec) -> str:
    """The line for a unique index that cannot be built over repeated values."""
    fields = [name for name, _ in spec.key]
    group = "{" + ", ".join(f'{f}: "${f}"' for f in fields) + "}"
    find = (
        f"aggregate([{{$match: {{{fields[-1]}: {{$exists: true}}}}}}, "
        f'{{$group: {{_id: {group}, n: {{$sum: 1}}, ids: {{$push: "$_id"}}}}}}, '
        "{$match: {n: {$gt: 1}}}])"
    )
    what = {
        "token_hash": "users share a token, so no token can name one user",
        "client_message_id": "messages of one sender share a clientMessageId",
    }.get(spec.name, f"documents repeat the value of {format_key(spec.key)}")
    return (
        f"index conflict: the unique index {spec.name} on {database}.{spec.collection} cannot "
        f"be built: some {what}; find them ({_shell(database, spec.collection, find)}), "
        "keep one of each (or give each user its own token) and start again"
    )


def failure_line(database: str, spec: IndexSpec, error: OperationFailure) -> str:
    """The line for any other refusal (no permission, ...)."""
    code_name = (error.details or {}).get("codeName") or "error"
    return (
        f"index error: MongoDB refused to create index {spec.name} {format_key(spec.key)} "
        f"on {database}.{spec.collection} ({code_name}, code {error.code}); let the user "
        "create indexes (the createIndex action) or create the README's indexes by hand, "
        "and start again"
    )


async def existing_indexes(db: Database, collection: str) -> dict[str, Mapping[str, Any]]:
    """The indexes of ``collection`` by name (none if it does not exist)."""
    try:
        return dict(await db[collection].index_information())
    except OperationFailure as e:
        if e.code == NAMESPACE_NOT_FOUND:
            return {}
        raise


async def ensure_index(db: Database, spec: IndexSpec) -> str:
    """Make sure ``spec`` exists in ``db``; fire with the name that serves it
    (``spec.name``, or an equivalent index's).

    :raise IndexProblem: when only an operator can fix what is in the way.
    :raise pymongo.errors.ConnectionFailure: when the connection went.
    """
    try:
        await db.command({"createIndexes": spec.collection, "indexes": [spec.document()]})
        return spec.name
    except OperationFailure as e:
        if e.code == DUPLICATE_KEY:
            raise IndexProblem(duplicates_line(db.name, spec)) from e
        if e.code not in (INDEX_ALREADY_EXISTS, INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT):
            raise IndexProblem(failure_line(db.name, spec, e)) from e
        existing = await existing_indexes(db, spec.collection)
        line = find_conflict(db.name, spec, existing)
        if line is not None:
            raise IndexProblem(line) from e
        equivalent = equivalent_index(spec, existing)
        if equivalent is not None:
            return equivalent
        raise IndexProblem(failure_line(db.name, spec, e)) from e
