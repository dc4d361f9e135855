"""Turn a ``--storage`` value into an :class:`IChatStorage` provider."""

from __future__ import annotations

from typing import Any

from twisted.python.reflect import namedAny

from chatserver.interfaces import IChatStorage

DEFAULT_STORAGE = "sqlite:chat.sqlite3"


def load_storage(spec: str) -> IChatStorage:
    """Build the storage that ``spec`` names.

    - ``memory``: L{MemoryStorage}, empty;
    - ``sqlite:PATH``: an SQLite database file;
    - ``mongodb://host:port/dbname``: MongoDB, through txmongo;
    - ``package.module:name``: a class or factory, called with no arguments,
      or an object that already provides L{IChatStorage}.

    @raise ValueError: if ``spec`` names nothing usable.
    """
    if spec == "memory":
        from chatserver.storage.memory import MemoryStorage

        return MemoryStorage()
    if spec.startswith("sqlite:"):
        from chatserver.storage.sqlite import SQLiteStorage

        path = spec.removeprefix("sqlite:")
        if not path:
            raise ValueError("sqlite: needs a path, e.g. sqlite:chat.sqlite3")
        return SQLiteStorage(path)
    if spec.startswith(("mongodb://", "mongodb+srv://")):
        from chatserver.storage.mongo import MongoStorage

        return MongoStorage(spec)  # raises ValueError for what it cannot serve
    return _load_named(spec)


def _load_named(spec: str) -> IChatStorage:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(
            f"unknown storage {spec!r}: use memory, sqlite:PATH, "
            "mongodb://host:port/db or package.module:name"
        )
    try:
        target = namedAny(f"{module}.{name}")
    except Exception as e:
        raise ValueError(f"cannot import {spec!r}: {e}") from e
    storage = target
    if not IChatStorage.providedBy(target) and callable(target):
        try:
            storage = target()
        except Exception as e:
            raise ValueError(f"calling {spec!r} failed: {e}") from e
    if not IChatStorage.providedBy(storage):
        raise ValueError(
            f"{spec!r} gave {storage!r}, which does not provide IChatStorage "
            "(declare it with @implementer(IChatStorage))"
        )
    return storage


def load_actions(spec: str) -> dict[str, Any]:
    """Import a mapping of custom actions from ``package.module:name``."""
    module, sep, name = spec.partition(":")
    if not sep:
        raise ValueError(f"actions must be given as package.module:name, not {spec!r}")
    try:
        actions = namedAny(f"{module}.{name}")
    except Exception as e:
        raise ValueError(f"cannot import {spec!r}: {e}") from e
    if callable(actions) and not hasattr(actions, "items"):
        actions = actions()
    if not hasattr(actions, "items") or not all(callable(a) for a in actions.values()):
        raise ValueError(f"{spec!r} is not a mapping of action names to callables")
    return dict(actions)
