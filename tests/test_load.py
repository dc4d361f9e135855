"""A bounded load test: a few hundred connections and a few thousand messages
while some clients misbehave. Every acknowledged message must be stored exactly
once and reach every recipient that stayed connected."""

from __future__ import annotations

import itertools

import pytest_twisted
from twisted.internet.defer import DeferredList, gatherResults

from chatserver import Limits, MemoryStorage
from chatserver.client import ChatClientProtocol, RequestFailed

PAIRS = 110  # 220 well-behaved users chatting in pairs
MESSAGES_PER_USER = 15
IN_FLIGHT = 3
FLOODERS = 20
NON_READERS = 20
DROPPERS = 20


def load_storage() -> MemoryStorage:
    names = [f"u{i}" for i in range(2 * PAIRS)]
    names += [f"flood{i}" for i in range(FLOODERS)]
    names += [f"deaf{i}" for i in range(NON_READERS)]
    names += [f"drop{i}" for i in range(DROPPERS)]
    return MemoryStorage(users={n: {"id": n} for n in names})


async def chat(client: ChatClientProtocol, sender: str, to: str, acked: dict) -> None:
    """Send MESSAGES_PER_USER messages, IN_FLIGHT at a time; record the acks."""
    keys = iter(range(MESSAGES_PER_USER))

    async def lane() -> None:
        for k in keys:
            key = f"{sender}-{to}-{k}"
            stored = await client.send({"to": to, "clientMessageId": key, "text": key})
            acked[key] = stored

    await gatherResults([Deferred_from(lane()) for _ in range(IN_FLIGHT)])


def Deferred_from(coroutine):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


async def flood(client: ChatClientProtocol, to: str) -> int:
    refused = 0
    results = await DeferredList(
        [client.send({"to": to, "text": "spam"}) for _ in range(500)], consumeErrors=True
    )
    for ok, result in results:
        if not ok and result.check(RequestFailed) and result.value.code == "rateLimited":
            refused += 1
    return refused


@pytest_twisted.ensureDeferred
async def test_every_acknowledged_message_is_stored_once_and_delivered(serve, make_server):
    storage = load_storage()
    # Default limits: flooders must be throttled, not the well-behaved.
    server = await serve(make_server(storage, limits=Limits()))

    async def login(name: str) -> ChatClientProtocol:
        client = await server.connect()
        await client.authorize(token=name)
        return client

    users = [await login(f"u{i}") for i in range(2 * PAIRS)]
    deaf = [await login(f"deaf{i}") for i in range(NON_READERS)]
    for client in deaf:
        client.transport.pauseProducing()  # never reads again
    flooders = [await login(f"flood{i}") for i in range(FLOODERS)]
    droppers = [await login(f"drop{i}") for i in range(DROPPERS)]

    acked: dict[str, dict] = {}
    partner = {2 * i: 2 * i + 1 for i in range(PAIRS)} | {2 * i + 1: 2 * i for i in range(PAIRS)}
    work = [chat(users[i], f"u{i}", f"u{partner[i]}", acked) for i in range(2 * PAIRS)]
    # Some well-behaved users also write to the deaf ones.
    work += [chat(users[i], f"u{i}", f"deaf{i}", acked) for i in range(NON_READERS)]
    flooding = [flood(c, f"u{i}") for i, c in enumerate(flooders)]
    for i, client in enumerate(droppers):  # send, then vanish before the ack
        client.send({"to": f"u{i}", "clientMessageId": f"drop{i}"}).addErrback(lambda _: None)
        client.dropConnection(abort=True)
    refused = await gatherResults([Deferred_from(c) for c in flooding])
    await gatherResults([Deferred_from(w) for w in work])

    # Stored exactly once: read every conversation back through the interface.
    stored_keys: list[str] = []
    conversations = {tuple(sorted((f"u{i}", f"u{partner[i]}"))) for i in range(2 * PAIRS)}
    conversations |= {(f"u{i}", f"deaf{i}") for i in range(NON_READERS)}
    for a, b in conversations:
        for skip in itertools.count(0, 100):
            page = await storage.getMessages({"ids": [a, b], "skip": skip, "limit": 100})
            stored_keys += [m["clientMessageId"] for m in page if "clientMessageId" in m]
            if len(page) < 100:
                break
    duplicates = len(stored_keys) - len(set(stored_keys))
    lost = set(acked) - set(stored_keys)

    # Delivered to every recipient that stayed connected (all well-behaved ones).
    undelivered = 0
    for i, client in enumerate(users):
        expected = {k for k, m in acked.items() if m["to"] == f"u{i}"}
        received = set()
        while len(received) < len(expected):
            push = await client.next_push("chatMessage")
            if push.get("clientMessageId") in expected:
                received.add(push["clientMessageId"])
        undelivered += len(expected - received)
    assert all(c.close_info is None for c in users)

    expected_acks = (2 * PAIRS + NON_READERS) * MESSAGES_PER_USER
    print(
        f"\nload: {len(server.clients)} connections, {len(acked)} acknowledged "
        f"(of {expected_acks} sent by well-behaved users), lost {len(lost)}, "
        f"duplicates {duplicates}, undelivered {undelivered}, "
        f"flood requests refused {sum(refused)}"
    )
    assert len(acked) == expected_acks
    assert lost == set()
    assert duplicates == 0
    assert undelivered == 0
    assert sum(refused) > 0  # the flood was throttled
    assert all(c.close_info is not None for c in flooders)  # and cut off
