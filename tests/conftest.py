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

from chatserver import ChatServer, MemoryStorage, build_server
from chatserver.client import ChatClientProtocol, connect
from chatserver.limits import Limits
from tests.mongo import mongodb_server, mongodb_uri, secantus  # noqa: F401 (fixtures for all)

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
    app: ChatServer
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


async def start_server(app: ChatServer) -> RunningServer:
    """Listen with ``app``'s site (the WebSocket on any path, and HTTP) on a
    loopback port."""
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(app.site)
    return RunningServer(app, f"ws://127.0.0.1:{port.getHost().port}", port)


async def stop_server(server: RunningServer) -> None:
    for client in server.clients:
        if client.close_info is None:
            client.dropConnection(abort=True)
    await DeferredList([c.closed for c in server.clients])
    await server.port.stopListening()


@pytest.fixture
def make_server() -> Callable[..., ChatServer]:
    def make(storage: Any = None, **kwargs: Any) -> ChatServer:
        # Tests send far faster than people type: rate limits are tested on their own.
        kwargs.setdefault("limits", Limits(rate=0))
        return build_server(storage if storage is not None else demo_storage(), **kwargs)

    return make


@pytest_twisted.async_yield_fixture
async def server(make_server: Callable[..., ChatServer]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_server())
    yield running
    await stop_server(running)


@pytest_twisted.async_yield_fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start servers built by the test itself; all stopped at teardown."""
    started: list[RunningServer] = []

    async def start(app: ChatServer) -> RunningServer:
        running = await start_server(app)
        started.append(running)
        return running

    yield start
    for running in started:
        await stop_server(running)
