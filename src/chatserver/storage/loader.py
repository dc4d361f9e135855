"""Turn a ``--storage`` value into an :class:`IChatStorage` provider."""

from __future__ import annotations

import importlib
import os
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
        storage = SQLiteStorage(path)
        storage.check()  # a file that cannot be used stops start-up, not every request
        return storage
    if spec.startswith(("mongodb://", "mongodb+srv://")):
        from chatserver.storage.mongo import MongoStorage

        return MongoStorage(spec)  # raises ValueError for what it cannot serve
    return _load_named(spec)


def import_named(spec: str) -> Any:
    """The object that ``package.module:name`` (or ``module:a.b``) names.

    :raise ValueError: with one line saying what could not be found, and
        where a module was looked for when it is missing.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"name it as package.module:name, not {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.split(".")[0] == e.name.split(".")[0]:
            raise ValueError(
                f"cannot import {module_name!r}: no such module in {os.getcwd()} or on the "
                "Python path (run from the directory that holds it, or set PYTHONPATH)"
            ) from e
        raise ValueError(f"cannot import {module_name!r}: {e}") from e
    except Exception as e:
        raise ValueError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    for part in name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no {name!r}") from None
    return target


def _load_named(spec: str) -> IChatStorage:
    if ":" not in spec:
        raise ValueError(
            f"unknown storage {spec!r}: use memory, sqlite:PATH, "
            "mongodb://host:port/db or package.module:name"
        )
    target = import_named(spec)
    storage = target
    if not IChatStorage.providedBy(target) and callable(target):
        try:
            storage = target()
        except Exception as e:
            raise ValueError(f"calling {spec!r} failed: {type(e).__name__}: {e}") from e
    if not IChatStorage.providedBy(storage):
        raise ValueError(
            f"{spec!r} gave {storage!r}, which does not provide IChatStorage "
            "(declare it with @implementer(IChatStorage))"
        )
    return storage


def load_actions(spec: str) -> dict[str, Any]:
    """Import a mapping of custom actions from ``package.module:name``."""
    if ":" not in spec:
        raise ValueError(f"actions must be given as package.module:name, not {spec!r}")
    actions = import_named(spec)
    if callable(actions) and not hasattr(actions, "items"):
        try:
            actions = actions()
        except Exception as e:
            raise ValueError(f"calling {spec!r} failed: {type(e).__name__}: {e}") from e
    if not hasattr(actions, "items") or not all(callable(a) for a in actions.values()):
        raise ValueError(f"{spec!r} is not a mapping of action names to callables")
    return dict(actions)
