"""Helpers for testing code built on chatserver, such as your own storage.

:class:`StorageConformanceTests` checks an :class:`~chatserver.IChatStorage`
against the contract the server relies on, and one mixin per optional
interface checks that interface: :class:`DirectoryConformanceTests`,
:class:`ConversationConformanceTests`, :class:`AccountConformanceTests` and
:class:`RevocationConformanceTests`. ``python -m chatserver.testing
module:Factory`` runs all that apply to a store. They need ``pytest`` and
``pytest-twisted``: ``pip install 'chatserver[testing]'``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

try:
    import pytest
    import pytest_twisted  # noqa: F401
except ImportError as e:
    _missing = (
        f"chatserver.testing needs pytest and pytest-twisted ({e.name} is missing): "
        "pip install 'chatserver[testing]'"
    )
    # Python sets argv[0] to "-m" while it imports the packages of `python -m
    # chatserver.testing`: then say it in one line, without a traceback.
    if sys.argv[:1] == ["-m"]:
        raise SystemExit(f"python -m chatserver.testing: {_missing}") from None
    raise ImportError(_missing) from None

_EXPORTS = {
    "StorageConformanceTests": "chatserver.testing.conformance",
    "DirectoryConformanceTests": "chatserver.testing.directory",
    "ConversationConformanceTests": "chatserver.testing.conversations",
    "AccountConformanceTests": "chatserver.testing.accounts",
    "RevocationConformanceTests": "chatserver.testing.accounts",
}

# Let pytest explain failed assertions inside the suites, as in a test module.
# The suites are imported on first use, after this, so that it takes effect.
pytest.register_assert_rewrite(*sorted(set(_EXPORTS.values())))

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
