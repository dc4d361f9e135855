"""How fast are history pages, conversation lists and creates with a big SQLite database?

``python -m chatserver.bench.sqlite_history [--messages 1000000]
[--conversations 10000] [--path FILE] [--queries 200] [--creates 20000]``

Fills a database with N messages spread over thousands of direct
conversations and groups, one user (``alice``) being in
``--conversations`` of them (or reuses the file if it already holds exactly
that), then, through :class:`~chatserver.storage.sqlite.SQLiteStorage`, from
the reactor, one request at a time and then in a burst, while a 10 ms
LoopingCall records the longest the reactor went without running, times:

- ``getMessages`` pages on one direct conversation and one group;
- ``getConversations`` pages of alice's conversations: the first page, and
  one from halfway down the list (a ``before`` cursor);
- ``create`` throughput on a fresh file (bursts of 1,000 creates fired at
  once): direct messages, and messages to a group of 50.

The fill inserts the messages in one transaction per 100,000 and then builds
the conversation index in one pass, as the schema upgrade does.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import LoopingCall, react

from chatserver.storage.sqlite import (
    _INSERT_MESSAGE,
    SCHEMA_VERSION,
    SQLiteStorage,
    index_conversations,
    message_row,
    open_database,
)
from chatserver.testing.conformance import timestamp

T = TypeVar("T")

DIRECT = ["alice", "bob"]
GROUP = ["alice", "general"]
CASES = (("direct", DIRECT, False), ("group", GROUP, True))
TARGET_SHARE = 0.005  # of all messages, in each of the two measured conversations
ALICE_SHARE = 0.05  # of all messages, between alice and her other direct contacts
USERS = 10_000
PAIRS = 20_000
GROUPS = 1_000
GROUP_SIZE = 10
ALICE_GROUPS = 100  # of the GROUPS, those alice is in
BATCH = 100_000
TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 3


def alice_partners(conversations: int) -> int:
    """How many direct contacts alice needs, besides bob and her groups."""
    return max(1, conversations - 2 - ALICE_GROUPS)


def generate(count: int, conversations: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``count`` messages, oldest first, 10 ms apart."""
    rng = random.Random(seed)
    pairs = [(f"u{rng.randrange(USERS)}", f"u{rng.randrange(USERS)}") for _ in range(PAIRS)]
    partners = alice_partners(conversations)
    to_partners = to_groups = 0
    for i in range(count):
        roll = rng.random()
        message: dict[str, Any] = {
            "text": TEXT[: rng.randrange(10, len(TEXT))],
            "createdAt": timestamp(i * 10),
        }
        if roll < TARGET_SHARE:
            message.update({"from": DIRECT[i % 2], "to": DIRECT[1 - i % 2]})
        elif roll < 2 * TARGET_SHARE:
            message.update({"from": f"u{i % 50}", "to": GROUP[1], "isGroup": True})
        elif roll < 2 * TARGET_SHARE + ALICE_SHARE:
            # Every contact in turn, so that each has a conversation with her.
            partner = f"c{to_partners % partners}"
            to_partners += 1
            sender, to = ("alice", partner) if i % 2 else (partner, "alice")
            message.update({"from": sender, "to": to})
        elif roll < 0.7:
            sender, to = pairs[rng.randrange(PAIRS)]
            message.update({"from": sender, "to": to})
        else:
            # Alice's groups first, so that each of them has a message.
            group = to_groups if to_groups < ALICE_GROUPS else rng.randrange(GROUPS)
            to_groups += 1
            sender = f"u{rng.randrange(USERS)}"
            message.update({"from": sender, "to": f"g{group}", "isGroup": True})
        yield message


def memberships(seed: int = 2) -> Iterator[tuple[str, str]]:
    """``(group, member)``: alice in ``general`` and the first groups, ten
    users in each group."""
    rng = random.Random(seed)
    yield GROUP[1], "alice"
    for g in range(GROUPS):
        members = {f"u{rng.randrange(USERS)}" for _ in range(GROUP_SIZE)}
        if g < ALICE_GROUPS:
            members.add("alice")
        for member in sorted(members):
            yield f"g{g}", member


def fill(path: str, count: int, conversations: int) -> None:
    """Make ``path`` a benchmark database holding exactly ``count`` messages,
    alice being in ``conversations`` conversations."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        check = sqlite3.connect(path)
        ours = check.execute("SELECT 1 FROM sqlite_master WHERE name = 'bench_info'").fetchone()
        check.close()
        if not ours:  # never fill, or empty, someone's real chat database
            raise SystemExit(f"{path} is not a benchmark database: choose another --path")
    db = open_database(path)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS bench_info (messages INTEGER NOT NULL)")
        row = db.execute("SELECT messages FROM bench_info").fetchone()
        (alices,) = db.execute(
            "SELECT count(*) FROM conversations WHERE user_id = 'alice'"
        ).fetchone()
        if row is not None and row[0] == count and alices == conversations:
            print(f"reusing {path} ({count:,} messages, alice in {alices:,} conversations)")
            return
        started = time.perf_counter()
        db.execute("PRAGMA synchronous = OFF")  # a crash only costs a refill
        db.execute("PRAGMA cache_size = -262144")  # 256 MiB: keeps index inserts in memory
        for table in ("messages", "conversations", "groups", "bench_info"):
            db.execute(f"DELETE FROM {table}")
        groups = list(memberships())
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO groups (id) VALUES (?) ON CONFLICT DO NOTHING", [(g,) for g, _ in groups]
        )
        db.executemany("INSERT INTO group_members (group_id, user_id) VALUES (?, ?)", groups)
        db.execute("COMMIT")
        rows = (message_row(m) for m in generate(count, conversations))
        done = 0
        while done < count:
            batch = [row for _, row in zip(range(BATCH), rows, strict=False)]
            db.execute("BEGIN")
            db.executemany(_INSERT_MESSAGE, batch)
            db.execute("COMMIT")
            done += len(batch)
            print(f"inserted {done:,}/{count:,}", flush=True)
        indexing = time.perf_counter()
        db.execute("BEGIN")
        index_conversations(db)
        db.execute("COMMIT")
        print(f"conversation index built in {time.perf_counter() - indexing:.1f} s")
        db.execute("INSERT INTO bench_info (messages) VALUES (?)", (count,))
        db.execute("ANALYZE")
        elapsed = time.perf_counter() - started
        print(f"filled in {elapsed:.1f} s ({count / elapsed:,.0f} messages/s)")
    finally:
        db.close()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def timed(
    call: Callable[[dict[str, Any]], Awaitable[T]], query: dict[str, Any], queries: int
) -> tuple[list[float], T]:
    """Run ``call(query)`` once to warm the cache, then ``queries`` times,
    one at a time; return the times in ms and the last answer."""
    result = await call(query)
    times = []
    for _ in range(queries):
        started = time.perf_counter()
        result = await call(query)
        times.append((time.perf_counter() - started) * 1000)
    return times, result


def row(name: str, detail: str, rows: int, times: list[float]) -> str:
    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
    return f"{name:<16} {detail:>16} {rows:>5} {p50:>7.2f} {p99:>7.2f} {max(times):>7.2f}"


async def measure(reactor: IReactorCore, path: str, queries: int) -> None:
    storage = SQLiteStorage(path, reactor)
    storage.startService()
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    loop = LoopingCall(tick)
    loop.start(0.01)
    try:
        for name, ids, is_group in CASES:
            everything = {"ids": ids, "isGroup": is_group, "limit": 10**9}
            print(f"{name} conversation: {len(await storage.getMessages(everything)):,} messages")
        print(f"{'':<16} {'':>16} {'rows':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
        burst = []
        for name, ids, is_group in CASES:
            for limit in (10, 50):
                for skip in (0, 1000):
                    query = {"ids": ids, "isGroup": is_group, "limit": limit, "skip": skip}
                    times, page = await timed(storage.getMessages, query, queries)
                    burst.append(query)
                    print(row(f"getMessages {name}", f"{limit} skip {skip}", len(page), times))
        await conversations(storage, queries)
        sequential_stall = max(gaps)
        started = time.perf_counter()
        await gatherResults([storage.getMessages(q) for q in burst * queries])
        elapsed = time.perf_counter() - started
        print(
            f"burst: {len(burst) * queries:,} getMessages fired at once answered in"
            f" {elapsed * 1000:.0f} ms ({len(burst) * queries / elapsed:,.0f}/s)"
        )
    finally:
        loop.stop()
        await storage.stopService()
    print(
        f"longest gap between 10 ms reactor ticks: {sequential_stall * 1000:.1f} ms during"
        f" the timed requests, {max(gaps) * 1000:.1f} ms including the burst"
    )


async def conversations(storage: SQLiteStorage, queries: int) -> None:
    """Time getConversations: alice's first page, and one halfway down."""
    cursors = []  # (conversations before it, cursor)
    page = await storage.getConversations({"userId": "alice", "limit": 100})
    walked = len(page["conversations"])
    while page["next"] is not None:
        cursors.append((walked, page["next"]))
        page = await storage.getConversations(
            {"userId": "alice", "limit": 100, "before": page["next"]}
        )
        walked += len(page["conversations"])
    print(f"alice's conversations: {walked:,}")
    offset, cursor = min(cursors, key=lambda c: abs(2 * c[0] - walked), default=(0, None))
    for limit in (20, 100):
        for start, label in ((None, "first"), (cursor, f"after {offset:,}")):
            query = {"userId": "alice", "limit": limit, "before": start}
            times, page = await timed(storage.getConversations, query, queries)
            rows = len(page["conversations"])
            print(row("getConversations", f"{limit} {label}", rows, times))


async def creates(reactor: IReactorCore, count: int) -> None:
    """Creates per second on a fresh file, in bursts of 1,000 fired at once."""
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as scratch:
        for kind in ("direct", "group of 50"):
            storage = SQLiteStorage(os.path.join(scratch, f"{kind}.sqlite3"), reactor)
            storage.startService()
            try:
                await storage.add_group("g", [f"u{i}" for i in range(50)])
                if kind == "direct":
                    pairs = [
                        (f"u{rng.randrange(1000)}", f"u{rng.randrange(1000)}") for _ in range(2000)
                    ]
                    sent: list[dict[str, Any]] = [
                        {"from": a, "to": b}
                        for a, b in (pairs[rng.randrange(len(pairs))] for _ in range(count))
                    ]
                else:
                    sent = [
                        {"from": f"u{i % 50}", "to": "g", "isGroup": True} for i in range(count)
                    ]
                for i, message in enumerate(sent):
                    message.update({"createdAt": timestamp(i), "text": TEXT[:40]})
                await gatherResults([storage.create(m) for m in sent[:1000]])  # warm up
                started = time.perf_counter()
                for at in range(1000, count, 1000):
                    await gatherResults([storage.create(m) for m in sent[at : at + 1000]])
                elapsed = time.perf_counter() - started
                print(f"create, {kind}: {(count - 1000) / elapsed:,.0f}/s")
            finally:
                await storage.stopService()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument(
        "--conversations", type=int, default=10_000, help="alice's conversations in the file"
    )
    parser.add_argument("--path", help="database file (default: one in the temp directory)")
    parser.add_argument("--queries", type=int, default=200, help="timed requests per case")
    parser.add_argument(
        "--creates", type=int, default=20_000, help="creates to time on a fresh file (0: none)"
    )
    args = parser.parse_args(argv)
    if args.conversations > 2 + ALICE_GROUPS + args.messages * ALICE_SHARE / 2:
        parser.error("--conversations is too many for --messages")
    path = args.path or os.path.join(
        tempfile.gettempdir(),
        f"chatserver-bench-{args.messages}-{args.conversations}-v{SCHEMA_VERSION}.sqlite3",
    )
    try:
        fill(path, args.messages, args.conversations)
    except sqlite3.Error as e:
        raise SystemExit(f"{path}: {e}") from None
    size = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
    print(f"{path}: {size / 2**20:,.0f} MiB, SQLite {sqlite3.sqlite_version}")

    async def run(reactor: IReactorCore) -> None:
        await measure(reactor, path, args.queries)
        if args.creates > 1000:
            await creates(reactor, args.creates)

    def start(reactor: IReactorCore) -> Deferred[None]:
        return ensureDeferred(run(reactor))

    react(start)


if __name__ == "__main__":
    main()
