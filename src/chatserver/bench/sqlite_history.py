"""How fast is a history page from a big SQLite database?

``python -m chatserver.bench.sqlite_history [--messages 1000000] [--path FILE]``

Fills a database with N messages spread over thousands of direct
conversations and groups (or reuses the file if it already holds them), then
times ``getMessages`` pages on one direct conversation and one group through
:class:`~chatserver.storage.sqlite.SQLiteStorage`, from the reactor, one
request at a time and then in a burst, while a 10 ms LoopingCall records the
longest the reactor went without running.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import LoopingCall, react

from chatserver.storage.sqlite import (
    _INSERT_MESSAGE,
    SCHEMA_VERSION,
    SQLiteStorage,
    message_row,
    open_database,
)
from chatserver.testing.conformance import timestamp

DIRECT = ["alice", "bob"]
GROUP = ["alice", "general"]
CASES = (("direct", DIRECT, False), ("group", GROUP, True))
TARGET_SHARE = 0.005  # of all messages, in each of the two measured conversations
USERS = 10_000
PAIRS = 20_000
GROUPS = 1_000
BATCH = 100_000
TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 3


def generate(count: int, seed: int = 1) -> Iterator[dict]:
    """``count`` messages, oldest first, 10 ms apart."""
    rng = random.Random(seed)
    pairs = [(f"u{rng.randrange(USERS)}", f"u{rng.randrange(USERS)}") for _ in range(PAIRS)]
    for i in range(count):
        roll = rng.random()
        message = {"text": TEXT[: rng.randrange(10, len(TEXT))], "createdAt": timestamp(i * 10)}
        if roll < TARGET_SHARE:
            message.update({"from": DIRECT[i % 2], "to": DIRECT[1 - i % 2]})
        elif roll < 2 * TARGET_SHARE:
            message.update({"from": f"u{i % 50}", "to": GROUP[1], "isGroup": True})
        elif roll < 0.7:
            sender, to = pairs[rng.randrange(PAIRS)]
            message.update({"from": sender, "to": to})
        else:
            sender = f"u{rng.randrange(USERS)}"
            message.update({"from": sender, "to": f"g{rng.randrange(GROUPS)}", "isGroup": True})
        yield message


def fill(path: str, count: int) -> None:
    """Make ``path`` a benchmark database holding exactly ``count`` messages."""
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
        if row is not None and row[0] == count:
            print(f"reusing {path} ({count:,} messages)")
            return
        started = time.perf_counter()
        db.execute("PRAGMA synchronous = OFF")  # a crash only costs a refill
        db.execute("PRAGMA cache_size = -262144")  # 256 MiB: keeps index inserts in memory
        db.execute("DELETE FROM messages")
        db.execute("DELETE FROM bench_info")
        rows = (message_row(m) for m in generate(count))
        done = 0
        while done < count:
            batch = [row for _, row in zip(range(BATCH), rows, strict=False)]
            db.execute("BEGIN")
            db.executemany(_INSERT_MESSAGE, batch)
            db.execute("COMMIT")
            done += len(batch)
            print(f"inserted {done:,}/{count:,}", flush=True)
        db.execute("INSERT INTO groups (id) VALUES (?) ON CONFLICT DO NOTHING", (GROUP[1],))
        db.execute("INSERT INTO bench_info (messages) VALUES (?)", (count,))
        db.execute("ANALYZE")
        elapsed = time.perf_counter() - started
        print(f"filled in {elapsed:.1f} s ({count / elapsed:,.0f}/s)")
    finally:
        db.close()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


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
        print(
            f"{'':<7} {'limit':>5} {'skip':>5} {'rows':>5}"
            f" {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        )
        burst = []
        for name, ids, is_group in CASES:
            for limit in (10, 50):
                for skip in (0, 1000):
                    query = {"ids": ids, "isGroup": is_group, "limit": limit, "skip": skip}
                    await storage.getMessages(query)  # warm the page cache
                    times = []
                    for _ in range(queries):
                        started = time.perf_counter()
                        page = await storage.getMessages(query)
                        times.append((time.perf_counter() - started) * 1000)
                    burst.append(query)
                    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
                    print(
                        f"{name:<7} {limit:>5} {skip:>5} {len(page):>5}"
                        f" {p50:>7.2f} {p99:>7.2f} {max(times):>7.2f}"
                    )
        sequential_stall = max(gaps)
        started = time.perf_counter()
        await gatherResults([storage.getMessages(q) for q in burst * queries])
        elapsed = time.perf_counter() - started
        print(
            f"burst: {len(burst) * queries:,} queries fired at once answered in"
            f" {elapsed * 1000:.0f} ms ({len(burst) * queries / elapsed:,.0f}/s)"
        )
    finally:
        loop.stop()
        await storage.stopService()
    print(
        f"longest gap between 10 ms reactor ticks: {sequential_stall * 1000:.1f} ms during"
        f" the timed requests, {max(gaps) * 1000:.1f} ms including the burst"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--path", help="database file (default: one in the temp directory)")
    parser.add_argument("--queries", type=int, default=200, help="timed requests per case")
    args = parser.parse_args(argv)
    path = args.path or os.path.join(
        tempfile.gettempdir(), f"chatserver-bench-{args.messages}-v{SCHEMA_VERSION}.sqlite3"
    )
    try:
        fill(path, args.messages)
    except sqlite3.Error as e:
        raise SystemExit(f"{path}: {e}") from None
    size = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
    print(f"{path}: {size / 2**20:,.0f} MiB, SQLite {sqlite3.sqlite_version}")

    def run(reactor: IReactorCore) -> Deferred[None]:
        return ensureDeferred(measure(reactor, path, args.queries))

    react(run)


if __name__ == "__main__":
    main()
