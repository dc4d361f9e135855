"""The protocol's additions end to end, over real loopback WebSockets, against
the memory store and a real SQLite file: ``watchPresence`` and its pushes,
``typing`` and its once-a-second limit, ``getConversations`` (order, unread
counts, pages), the history cursors ``before``/``after`` and their errors,
and the catch-up recipe a reconnecting client follows.

"No push" is checked without waiting: a later push to the same connection
serves as a marker. The server writes one connection's frames in the order it
produced them, so once the marker has arrived, a push produced before it
would have too.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from chatserver import Limits, MemoryStorage, build_server
from chatserver.client import ChatClientProtocol, RequestFailed
from chatserver.storage.sqlite import SQLiteStorage
from tests.conftest import GROUPS, USERS, RunningServer, token_of

# 2026-11-24T12:00:00Z: createdAt is then "2026-11-24T12:00:00.000Z".
START = float(calendar.timegm((2026, 11, 24, 12, 0, 0)))


class SteppedClock:
    """The reactor's timers, with a time of day the test sets.

    The server reads the time for ``createdAt`` and for the typing interval
    from its clock: standing still, it gives several messages one
    ``createdAt`` (so that insertion decides their order); moved on, it
    stands for a second passing without the test waiting for it; moved back,
    it is a node whose clock is behind. Timers still run on the real reactor,
    so frames are written as usual.
    """

    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return reactor.callLater(delay, f, *args, **kwargs)

    def getDelayedCalls(self) -> Any:
        return reactor.getDelayedCalls()


async def provision(storage: Any) -> Any:
    """The demo users (token ``<id>-token``) and groups, through IAccountStore."""
    for user_id in USERS:
        await storage.add_user(user_id, user_id.title(), token_of(user_id))
    for group_id, members in GROUPS.items():
        await storage.add_group(group_id, members)
    await storage.add_group("ops", ["alice", "dave"])
    return storage


@pytest_twisted.async_yield_fixture(params=["memory", "sqlite"])
async def store(request, tmp_path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield await provision(MemoryStorage())
        return
    storage = SQLiteStorage(str(tmp_path / "chat.sqlite3"))
    storage.startService()
    try:
        yield await provision(storage)
    finally:
        await storage.stopService()


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock(START)


@pytest_twisted.async_yield_fixture
async def chat(store, clock, serve) -> AsyncIterator[RunningServer]:
    # Tests send far faster than people type: rate limits are tested on their own.
    yield await serve(build_server(store, limits=Limits(rate=0), reactor=clock))


async def error_of(d: Any) -> str:
    with pytest.raises(RequestFailed) as info:
        await d
    return info.value.code


async def marker(sender: ChatClientProtocol, receiver: ChatClientProtocol) -> None:
    """Send ``receiver`` a message from ``sender`` and wait for its push: every
    push to ``receiver`` produced before has arrived by then."""
    await sender.send({"to": receiver_id(receiver), "text": "marker"})
    while (await receiver.next_push("chatMessage"))["text"] != "marker":
        pass


def receiver_id(client: ChatClientProtocol) -> str:
    return client.user_id  # type: ignore[attr-defined]


async def login(chat: RunningServer, user_id: str) -> ChatClientProtocol:
    client = await chat.login(user_id)
    client.user_id = user_id  # type: ignore[attr-defined]
    return client


async def close(client: ChatClientProtocol) -> None:
    client.sendClose()
    await client.closed


# -- watchPresence -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_watch_presence_answers_who_is_online_now(chat):
    await login(chat, "bob")
    alice = await login(chat, "alice")
    reply = await alice.request("watchPresence", {"ids": ["bob", "carol", "nobody", 7]})
    assert reply == {"bob": True, "carol": False, "nobody": False, "7": False}
    assert await alice.request("watchPresence", {"ids": []}) == {}


@pytest_twisted.ensureDeferred
async def test_presence_is_pushed_on_the_first_arrival_and_the_last_departure(chat):
    alice = await login(chat, "alice")
    dave = await login(chat, "dave")
    await alice.request("watchPresence", {"ids": ["bob"]})
    phone = await login(chat, "bob")
    assert await alice.next_push("presence") == {"id": "bob", "online": True}
    laptop = await login(chat, "bob")  # already online: nothing new
    await close(phone)  # still online on the laptop
    await marker(dave, alice)
    assert alice.pending_pushes("presence") == []
    await close(laptop)
    assert await alice.next_push("presence") == {"id": "bob", "online": False}
    # Someone not watched comes and goes unseen.
    carol = await login(chat, "carol")
    await close(carol)
    await marker(dave, alice)
    assert alice.pending_pushes("presence") == []


@pytest_twisted.ensureDeferred
async def test_signing_in_again_on_the_same_connection_is_no_departure(chat):
    alice = await login(chat, "alice")
    dave = await login(chat, "dave")
    await alice.request("watchPresence", {"ids": ["bob", "carol"]})
    bob = await login(chat, "bob")
    assert await alice.next_push("presence") == {"id": "bob", "online": True}
    await bob.authorize(token=token_of("bob"))  # e.g. a client refreshing its token
    await marker(dave, alice)
    assert alice.pending_pushes("presence") == []
    # Signing in as someone else on it is bob leaving and carol arriving.
    # Carol at once; bob once the grace for a reload is over.
    await bob.authorize(token=token_of("carol"))
    assert await alice.next_push("presence") == {"id": "carol", "online": True}
    assert await alice.next_push("presence") == {"id": "bob", "online": False}


@pytest_twisted.ensureDeferred
async def test_every_watching_session_hears_and_only_its_own_list(chat):
    laptop = await login(chat, "alice")
    phone = await login(chat, "alice")
    dave = await login(chat, "dave")
    await laptop.request("watchPresence", {"ids": ["bob", "carol"]})
    await phone.request("watchPresence", {"ids": ["carol"]})
    await login(chat, "carol")
    assert await laptop.next_push("presence") == {"id": "carol", "online": True}
    assert await phone.next_push("presence") == {"id": "carol", "online": True}
    await login(chat, "bob")
    assert await laptop.next_push("presence") == {"id": "bob", "online": True}
    await marker(dave, phone)
    assert phone.pending_pushes("presence") == []


@pytest_twisted.ensureDeferred
async def test_a_new_watch_list_replaces_the_old_and_an_empty_one_unwatches(chat):
    alice = await login(chat, "alice")
    dave = await login(chat, "dave")
    await alice.request("watchPresence", {"ids": ["bob"]})
    assert await alice.request("watchPresence", {"ids": ["carol"]}) == {"carol": False}
    await login(chat, "bob")
    await login(chat, "carol")
    assert await alice.next_push("presence") == {"id": "carol", "online": True}
    await marker(dave, alice)
    assert alice.pending_pushes("presence") == []
    assert await alice.request("watchPresence", {"ids": []}) == {}
    await close(chat.clients[-1])  # carol leaves
    await marker(dave, alice)
    assert alice.pending_pushes("presence") == []


@pytest_twisted.ensureDeferred
async def test_a_watcher_that_leaves_is_forgotten(chat):
    alice = await login(chat, "alice")
    await alice.request("watchPresence", {"ids": ["bob"]})
    await close(alice)
    bob = await login(chat, "bob")  # nothing to push to; nothing goes wrong
    carol = await login(chat, "carol")
    await marker(carol, bob)
    watch = chat.app.handler._routes["watchPresence"]
    assert watch.watched_users == 0


@pytest_twisted.ensureDeferred
async def test_watch_lists_are_bounded_and_checked(chat):
    alice = await login(chat, "alice")
    thousand = [f"user{n}" for n in range(1000)]
    reply = await alice.request("watchPresence", {"ids": thousand})
    assert len(reply) == 1000 and not any(reply.values())
    too_many = {"ids": [*thousand, "one-more"]}
    assert await error_of(alice.request("watchPresence", too_many)) == "tooLarge"
    for bad in ({}, {"ids": "bob"}, {"ids": [{"$gt": ""}]}, {"ids": [""]}, {"ids": ["x" * 257]}):
        assert await error_of(alice.request("watchPresence", bad)) == "invalidRequest", bad
    assert await error_of(alice.request("watchPresence", ["bob"])) == "invalidRequest"


# -- typing --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_typing_reaches_the_recipient_and_not_the_sender(chat):
    alice = await login(chat, "alice")
    bob = await login(chat, "bob")
    assert await alice.request("typing", {"to": "bob"}) == {}
    assert await bob.next_push("typing") == {"from": "alice", "to": "bob"}
    await marker(bob, alice)
    assert alice.pending_pushes("typing") == []


@pytest_twisted.ensureDeferred
async def test_typing_in_a_group_reaches_its_other_members_only(chat):
    alice, bob, carol, dave = [await login(chat, u) for u in ("alice", "bob", "carol", "dave")]
    assert await alice.request("typing", {"to": "team", "isGroup": True}) == {}
    expected = {"from": "alice", "to": "team", "isGroup": True}
    assert await bob.next_push("typing") == expected
    assert await carol.next_push("typing") == expected
    # dave is not in the team: refused, every time, and no one hears.
    for _ in range(2):
        failed = dave.request("typing", {"to": "team", "isGroup": True})
        assert await error_of(failed) == "notGroupMember"
    for someone in (alice, bob):
        await marker(dave, someone)
        assert someone.pending_pushes("typing") == []


@pytest_twisted.ensureDeferred
async def test_typing_is_pushed_at_most_once_a_second_per_conversation(chat, clock):
    alice = await login(chat, "alice")
    bob = await login(chat, "bob")
    carol = await login(chat, "carol")
    replies = await DeferredList([alice.request("typing", {"to": "bob"}) for _ in range(5)])
    assert [reply for _, reply in replies] == [{}] * 5  # every request answered
    assert await bob.next_push("typing") == {"from": "alice", "to": "bob"}
    # Another conversation has its own second.
    await alice.request("typing", {"to": "team", "isGroup": True})
    assert await bob.next_push("typing") == {"from": "alice", "to": "team", "isGroup": True}
    clock.advance(0.999)
    await alice.request("typing", {"to": "bob"})
    await marker(carol, bob)
    assert bob.pending_pushes("typing") == []
    clock.advance(0.001)
    await alice.request("typing", {"to": "bob"})
    assert await bob.next_push("typing") == {"from": "alice", "to": "bob"}


@pytest_twisted.ensureDeferred
async def test_typing_checks_its_data(chat):
    alice = await login(chat, "alice")
    for bad in ({}, {"to": ""}, {"to": {"$ne": 1}}, {"to": ["bob"]}, "bob", None):
        assert await error_of(alice.request("typing", bad)) == "invalidRequest", bad


# -- getConversations ----------------------------------------------------------


async def conversations(client: ChatClientProtocol, **query: Any) -> dict[str, Any]:
    return await client.request("getConversations", query)


def summary(page: dict[str, Any]) -> list[tuple[str, bool, str, int]]:
    entries = page["conversations"]
    return [(c["with"], c["isGroup"], c["last"]["text"], c["unread"]) for c in entries]


@pytest_twisted.ensureDeferred
async def test_conversations_come_newest_first_with_unread_counts(chat, clock):
    alice, bob, carol = [await login(chat, u) for u in ("alice", "bob", "carol")]
    await alice.send({"to": "dave", "text": "to dave"})
    clock.advance(1)
    first = await bob.send({"to": "alice", "text": "bob 1"})
    await bob.send({"to": "alice", "text": "bob 2"})
    clock.advance(1)
    await carol.send({"to": "alice", "text": "carol 1"})
    clock.advance(1)
    await bob.send({"to": "team", "isGroup": True, "text": "team 1"})
    await carol.send({"to": "team", "isGroup": True, "text": "team 2"})
    page = await conversations(alice)
    assert summary(page) == [
        ("team", True, "team 2", 2),
        ("carol", False, "carol 1", 1),
        ("bob", False, "bob 2", 1 + 1),
        ("dave", False, "to dave", 0),  # alice's own messages are never unread to her
    ]
    assert page["next"] is None
    assert page["conversations"][2]["last"]["_id"] != first["_id"]
    # Reading goes down by one, once per message.
    await alice.read(first["_id"])
    await alice.read(first["_id"])
    team_last = page["conversations"][0]["last"]
    await alice.read(team_last["_id"])
    page = await conversations(alice)
    assert [c["unread"] for c in page["conversations"]] == [1, 1, 1, 0]
    # The other side of each conversation: bob's own messages count for no one but alice.
    assert summary(await conversations(bob)) == [
        ("team", True, "team 2", 1),
        ("alice", False, "bob 2", 0),
    ]
    # A message stored now moves its conversation to the top.
    clock.advance(1)
    await alice.send({"to": "dave", "text": "dave again"})
    assert [c["with"] for c in (await conversations(alice))["conversations"]] == [
        "dave",
        "team",
        "carol",
        "bob",
    ]


@pytest_twisted.ensureDeferred
async def test_conversations_come_a_page_at_a_time(chat, clock):
    alice = await login(chat, "alice")
    for n in range(5):
        clock.advance(1)
        await alice.send({"to": f"friend{n}", "text": f"hello {n}"})
    seen = []
    page = await conversations(alice, limit=2)
    sizes = []
    while True:
        sizes.append(len(page["conversations"]))
        seen += [c["with"] for c in page["conversations"]]
        if page["next"] is None:
            break
        page = await conversations(alice, limit=2, before=page["next"])
    assert sizes == [2, 2, 1]
    assert seen == [f"friend{n}" for n in (4, 3, 2, 1, 0)]
    # A conversation that gets a new message meanwhile leaves the rest of the walk.
    first = await conversations(alice, limit=2)
    clock.advance(1)
    await alice.send({"to": "friend1", "text": "again"})
    rest = await conversations(alice, limit=10, before=first["next"])
    assert [c["with"] for c in rest["conversations"]] == ["friend2", "friend0"]


@pytest_twisted.ensureDeferred
async def test_conversation_pages_are_20_by_default_and_100_at_most(chat):
    alice = await login(chat, "alice")
    for n in range(101):
        await alice.send({"to": f"u{n:03}", "text": "hi"})
    page = await conversations(alice)
    assert len(page["conversations"]) == 20 and page["next"] is not None
    page = await conversations(alice, limit=500)
    assert len(page["conversations"]) == 100 and page["next"] is not None
    rest = await conversations(alice, limit=500, before=page["next"])
    assert len(rest["conversations"]) == 1 and rest["next"] is None
    everyone = {c["with"] for c in page["conversations"] + rest["conversations"]}
    assert everyone == {f"u{n:03}" for n in range(101)}


@pytest_twisted.ensureDeferred
async def test_conversation_queries_are_checked(chat):
    alice = await login(chat, "alice")
    await alice.send({"to": "bob", "text": "hi"})
    bad = [
        {"limit": 0},
        {"limit": -1},
        {"limit": "5"},
        {"limit": True},
        {"limit": 1.5},
        {"before": 5},
        {"before": ""},
        {"before": "x" * 2049},
        {"before": "not a cursor of ours"},
    ]
    for query in bad:
        assert await error_of(alice.request("getConversations", query)) == "invalidQuery", query
    assert await error_of(alice.request("getConversations", [])) == "invalidQuery"
    assert len((await alice.request("getConversations", None))["conversations"]) == 1


# -- history cursors -----------------------------------------------------------


async def history(client: ChatClientProtocol, other: str, **query: Any) -> list[str]:
    return [m["text"] for m in await client.get_messages(**{"with": other, **query})]


@pytest_twisted.ensureDeferred
async def test_history_cursors_go_both_ways_in_the_storage_order(chat, clock):
    alice = await login(chat, "alice")
    bob = await login(chat, "bob")
    sent = []
    for n in range(7):
        if n in (2, 5):  # m0..m1 share a createdAt, as do m2..m4 and m5..m6
            clock.advance(0.001)
        sender = alice if n % 2 else bob
        sent.append(await sender.send({"to": "alice" if sender is bob else "bob", "text": f"m{n}"}))
    ids = [m["_id"] for m in sent]
    assert await history(alice, "bob") == ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]
    assert await history(alice, "bob", before=ids[4], limit=3) == ["m3", "m2", "m1"]
    assert await history(bob, "alice", after=ids[2], limit=3) == ["m3", "m4", "m5"]  # oldest first
    assert await history(bob, "alice", after=ids[4]) == ["m5", "m6"]
    assert await history(alice, "bob", after=ids[6]) == []
    assert await history(alice, "bob", before=ids[0]) == []
    assert await history(alice, "bob", before=int(ids[3]) if ids[3].isdigit() else ids[3]) == [
        "m2",
        "m1",
        "m0",
    ]
    # The same in a group, for every member.
    group = []
    for n, sender in enumerate((alice, bob, alice)):
        group.append(await sender.send({"to": "team", "isGroup": True, "text": f"g{n}"}))
    carol = await login(chat, "carol")
    after = {"isGroup": True, "after": group[0]["_id"]}
    assert await history(carol, "team", **after) == ["g1", "g2"]
    before = {"isGroup": True, "before": group[2]["_id"], "limit": 1}
    assert await history(carol, "team", **before) == ["g1"]
    dave = await login(chat, "dave")
    assert await error_of(dave.get_messages(**{"with": "team", **after})) == "notGroupMember"


@pytest_twisted.ensureDeferred
async def test_a_message_with_an_earlier_created_at_goes_where_it_belongs(chat, clock):
    # A node whose clock is behind stores a message after newer ones: the
    # conversation's order is createdAt first, so it comes before them, and
    # the conversation's `last` stays the newest.
    alice = await login(chat, "alice")
    bob = await login(chat, "bob")
    clock.advance(10)
    late = await alice.send({"to": "bob", "text": "at 12:00:10"})
    clock.advance(-5)
    early = await bob.send({"to": "alice", "text": "at 12:00:05"})
    assert await history(alice, "bob") == ["at 12:00:10", "at 12:00:05"]
    assert await history(alice, "bob", after=early["_id"]) == ["at 12:00:10"]
    assert await history(alice, "bob", before=late["_id"]) == ["at 12:00:05"]
    [entry] = (await conversations(alice))["conversations"]
    assert entry["last"]["_id"] == late["_id"]


@pytest_twisted.ensureDeferred
async def test_history_cursor_errors(chat):
    alice = await login(chat, "alice")
    bob = await login(chat, "bob")
    mine = await alice.send({"to": "bob", "text": "ours"})
    elsewhere = await alice.send({"to": "carol", "text": "someone else's"})
    both = {"with": "bob", "before": mine["_id"], "after": mine["_id"]}
    assert await error_of(alice.get_messages(**both)) == "invalidQuery"
    with_skip = {"with": "bob", "after": mine["_id"], "skip": 1}
    assert await error_of(alice.get_messages(**with_skip)) == "invalidQuery"
    for bad in ({}, [], "", "x" * 257, 1.5, True):
        assert await error_of(alice.get_messages(**{"with": "bob", "after": bad})) == (
            "invalidQuery"
        ), bad
    for unknown in ("999999", "0123456789abcdef01234567", "not-an-id", elsewhere["_id"]):
        for name in ("before", "after"):
            failed = bob.get_messages(**{"with": "alice", name: unknown})
            assert await error_of(failed) == "notFound", (name, unknown)
    # A cursor with skip 0 (as clients send by default) and a null cursor are fine.
    assert await history(bob, "alice", after=None, skip=0) == ["ours"]
    assert await history(bob, "alice", before=mine["_id"], skip=0) == []


# -- the catch-up recipe -------------------------------------------------------


async def catch_up(
    client: ChatClientProtocol, known: dict[tuple[str, bool], str | None], limit: int = 2
) -> tuple[dict[tuple[str, bool], list[dict]], dict[tuple[str, bool], int]]:
    """What a reconnecting client does: ``getConversations``, then
    ``getMessages`` after the last id it has, for each changed conversation
    (pages of ``limit`` until a short one)."""
    fetched: dict[tuple[str, bool], list[dict]] = {}
    unread: dict[tuple[str, bool], int] = {}
    page = await conversations(client)
    for entry in page["conversations"]:
        key = (entry["with"], entry["isGroup"])
        unread[key] = entry["unread"]
        last = known.get(key)
        if last == entry["last"]["_id"]:
            continue
        query: dict[str, Any] = {"with": entry["with"], "limit": limit}
        if entry["isGroup"]:
            query["isGroup"] = True
        if last is None:  # a new conversation: its newest page
            fetched[key] = list(reversed(await client.get_messages(**query)))
            continue
        messages: list[dict] = []
        while True:
            batch = await client.get_messages(**query, after=last)
            messages += batch
            if len(batch) < limit:
                break
            last = batch[-1]["_id"]
        fetched[key] = messages
    return fetched, unread


@pytest_twisted.ensureDeferred
async def test_the_catch_up_recipe(chat, clock):
    laptop = await login(chat, "alice")
    bob, carol, dave = [await login(chat, u) for u in ("bob", "carol", "dave")]
    await bob.send({"to": "alice", "text": "before 1"})
    await laptop.send({"to": "bob", "text": "before 2"})
    await carol.send({"to": "team", "isGroup": True, "text": "team before"})
    known = {
        (c["with"], c["isGroup"]): c["last"]["_id"]
        for c in (await conversations(laptop))["conversations"]
    }
    assert set(known) == {("bob", False), ("team", True)}
    await close(laptop)

    # While the laptop is away: bob writes three times, the team twice, dave
    # for the first time; alice answers bob from her phone and bob reads it.
    for n in range(3):
        clock.advance(0.001 * (n % 2))
        await bob.send({"to": "alice", "text": f"missed {n}"})
    await bob.send({"to": "team", "isGroup": True, "text": "team missed 1"})
    await carol.send({"to": "team", "isGroup": True, "text": "team missed 2"})
    await dave.send({"to": "alice", "text": "hello, new here"})
    phone = await login(chat, "alice")
    answer = await phone.send({"to": "bob", "text": "from my phone"})
    await bob.read(answer["_id"])
    await close(phone)

    laptop = await login(chat, "alice")
    fetched, unread = await catch_up(laptop, known)
    assert {key: [m["text"] for m in messages] for key, messages in fetched.items()} == {
        ("bob", False): ["missed 0", "missed 1", "missed 2", "from my phone"],
        ("team", True): ["team missed 1", "team missed 2"],
        ("dave", False): ["hello, new here"],
    }
    # The receipt the laptop missed is in what it fetched.
    assert fetched[("bob", False)][-1]["read"] is True
    assert unread == {("dave", False): 1, ("bob", False): 4, ("team", True): 3}
    # And it is exactly the tail of each history, in the server's order.
    for (other, is_group), messages in fetched.items():
        query = {"with": other, "limit": len(messages), **({"isGroup": True} if is_group else {})}
        tail = list(reversed(await laptop.get_messages(**query)))
        assert [m["_id"] for m in tail] == [m["_id"] for m in messages]
    # Up to date: nothing more to fetch.
    known = {key: messages[-1]["_id"] for key, messages in fetched.items()}
    assert await catch_up(laptop, known) == ({}, unread)


@pytest_twisted.ensureDeferred
async def test_the_stepped_clock_is_the_one_the_server_reads(chat):
    # Else the tests above that share a createdAt between messages would not.
    alice = await login(chat, "alice")
    stored = await alice.send({"to": "bob", "text": "when?"})
    assert stored["createdAt"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(START))
