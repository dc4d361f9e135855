"""Shared fixtures: a real server on a loopback port, and real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import serverFromString

from chatserver import ChatServerFactory, MemoryStorage
from chatserver.client import ChatClientProtocol, connect
from chatserver.limits import Limits

USERS = ("alice", "bob", "carol", "dave")
GROUPS = {"team": ["alice", "bob", "carol"]}


def token_of(user_id: str) -> str:
    return f"{user_id}-token"


def add_demo_users(storage: MemoryStorage) -> MemoryStorage:
    """Give ``storage`` the demo users (token ``<id>-token``) and groups."""
    for user_id in USERS:
        storage.add_user(user_id, user_id.title(), token_of(user_id))
    for group_id, members in GROUPS.items():
        storage.add_group(group_id, members)
    return storage


def demo_storage() -> MemoryStorage:
    return add_demo_users(MemoryStorage())


@dataclass
class RunningServer:
    factory: ChatServerFactory
    url: str
    port: Any
    clients: list[ChatClientProtocol] = field(default_factory=list)

    async def connect(self, **kwargs: Any) -> ChatClientProtocol:
        client = await connect(self.url, **kwargs)
        self.clients.append(client)
        return client

    async def login(self, user_id: str) -> ChatClientProtocol:
        client = await self.connect()
        await client.authorize(token=token_of(user_id))
        return client


async def start_server(factory: ChatServerFactory) -> RunningServer:
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    return RunningServer(factory, f"ws://127.0.0.1:{port.getHost().port}", port)


async def stop_server(server: RunningServer) -> None:
    for client in server.clients:
        if client.close_info is None:
            client.dropConnection(abort=True)
    await DeferredList([c.closed for c in server.clients])
    await server.port.stopListening()


@pytest.fixture
def make_factory() -> Callable[..., ChatServerFactory]:
    def make(storage: Any = None, **kwargs: Any) -> ChatServerFactory:
        # Tests send far faster than people type: rate limits are tested on their own.
        kwargs.setdefault("limits", Limits(rate=0))
        return ChatServerFactory(storage if storage is not None else demo_storage(), **kwargs)

    return make


@pytest_twisted.async_yield_fixture
async def server(make_factory: Callable[..., ChatServerFactory]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_factory())
    yield running
    await stop_server(running)


@pytest_twisted.async_yield_fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start servers with factories of the test's own; all stopped at teardown."""
    started: list[RunningServer] = []

    async def start(factory: ChatServerFactory) -> RunningServer:
        running = await start_server(factory)
        started.append(running)
        return running

    yield start
    for running in started:
        await stop_server(running)
