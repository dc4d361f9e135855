"""Turn a ``--storage`` value into an :class:`IChatStorage` provider."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

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
    target = named_object(spec)
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


def named_object(spec: str) -> Any:
    """Import what ``package.module:name`` names (``name`` may be dotted).

    The current directory is searched too, after everything else: twistd,
    unlike ``python -m``, does not put it on ``sys.path``, and a module of
    one's own usually sits in the directory the server is started from.

    @raise ValueError: saying what could not be imported, and why.
    """
    module_name, _, name = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as e:
        raise ValueError(f"cannot import {spec!r}: {type(e).__name__}: {e}") from e
    for part in name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"cannot import {spec!r}: {module_name} has no {name!r}") from None
    return target


def load_actions(spec: str) -> dict[str, Any]:
    """Import a mapping of custom actions from ``package.module:name``."""
    if ":" not in spec:
        raise ValueError(f"actions must be given as package.module:name, not {spec!r}")
    actions = named_object(spec)
    if callable(actions) and not hasattr(actions, "items"):
        actions = actions()
    if not hasattr(actions, "items") or not all(callable(a) for a in actions.values()):
        raise ValueError(f"{spec!r} is not a mapping of action names to callables")
    return dict(actions)
