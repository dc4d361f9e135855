"""Stores for the attack tests, loaded by a server process through ``--storage``."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from chatserver import IChatStorage, MemoryStorage
from tests.conftest import add_demo_users


@implementer(IChatStorage)
class HangingStorage(MemoryStorage):
    """The demo users, and a ``create`` that never answers."""

    def __init__(self) -> None:
        super().__init__()
        add_demo_users(self)

    def create(self, message: dict) -> Deferred:
        return Deferred()
