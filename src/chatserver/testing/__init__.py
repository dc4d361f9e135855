"""Helpers for testing code built on chatserver, such as your own storage.

:class:`StorageConformanceTests` checks an :class:`~chatserver.IChatStorage`
against the contract the server relies on; it needs ``pytest`` and
``pytest-twisted``.
"""

import pytest

# Let pytest explain failed assertions inside the suite, as in a test module.
pytest.register_assert_rewrite("chatserver.testing.conformance")

from chatserver.testing.conformance import StorageConformanceTests  # noqa: E402

__all__ = ["StorageConformanceTests"]
