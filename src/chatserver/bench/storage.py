"""The server side of a benchmark: what ``--storage`` and ``--actions`` load.

``twistd -n chatserver --storage chatserver.bench.storage:bench_storage
--actions chatserver.bench.storage:ACTIONS`` serves the population that the
environment variables of :mod:`chatserver.bench.population` describe.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from chatserver.bench.population import Population, credentials, group_id, user_id
from chatserver.bench.sysinfo import raise_open_files_limit
from chatserver.storage.memory import MemoryStorage

COLLECT_ACTION = "benchCollect"
GC_STATS_ACTION = "benchGcStats"


class GcTimer:
    """Counts the garbage collector's runs and times its pauses, through
    ``gc.callbacks``: a full collection stops the server for as long as it
    takes to scan every tracked object, which shows in tail latency."""

    def __init__(self) -> None:
        self.reset()
        self._started = 0

    def reset(self) -> None:
        self.collections = [0, 0, 0]
        self.pause_ns = 0
        self.max_pause_ns = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._started = now
            return
        pause = now - self._started
        self.collections[info["generation"]] += 1
        self.pause_ns += pause
        self.max_pause_ns = max(self.max_pause_ns, pause)

    def report(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "pause_ms": self.pause_ns / 1e6,
            "max_pause_ms": self.max_pause_ns / 1e6,
        }


gc_timer = GcTimer()


def bench_storage() -> MemoryStorage:
    """A L{MemoryStorage} holding the population the environment asks for:
    every user's token and every whole group.

    Called once in the server process at start-up, which is also where the
    open-files limit is raised, so that the server can hold 10,000 sockets
    however it was started.
    """
    raise_open_files_limit()
    if gc_timer not in gc.callbacks:
        gc.callbacks.append(gc_timer)
    population = Population.from_environment()
    users = {
        credentials(i)["token"]: {"id": user_id(i), "name": user_id(i)}
        for i in range(population.users)
    }
    groups = {
        group_id(k): [user_id(i) for i in population.members(k)] for k in range(population.groups)
    }
    return MemoryStorage(users=users, groups=groups)


def collect(connection: Any, data: Any) -> int:
    """Run a full garbage collection in the server, so that a memory reading
    taken next does not depend on when the collector last ran.

    @return: the number of unreachable objects found.
    """
    return gc.collect()


def gc_stats(connection: Any, data: Any) -> dict[str, Any]:
    """The collector's runs and pauses since the last reset; with
    ``{"reset": true}``, start counting afresh."""
    report = gc_timer.report()
    if isinstance(data, dict) and data.get("reset"):
        gc_timer.reset()
    return report


ACTIONS = {COLLECT_ACTION: collect, GC_STATS_ACTION: gc_stats}
