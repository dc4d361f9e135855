"""Several rounds and several servers: the median of each figure over the
rounds, and one table that puts the servers side by side with the ratio of
ours to each of the others."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

from chatserver.bench.report import table
from chatserver.bench.runner import Result, Scenario

# The number of problems a median result keeps word for word.
MAX_PROBLEMS = 10


def seed_suite(
    quick: bool = False,
    duration: float | None = None,
    storm_clients: int | None = None,
    burst: int = 100,
    group_size: int = 50,
    inflight: int | None = None,
) -> list[Scenario]:
    """The loads that compare us with node-chat-server (performance issue 14):

    - direct messages, 100 users, at a fixed 5,000 messages/s (CPU per
      message where batching cannot hide per-message costs);
    - direct messages, 100 users, closed loop, 10 requests in flight each
      (CPU per message and throughput);
    - direct messages, 5,000 users, at a fixed 5,000 messages/s (the seed
      scans every socket per push);
    - a group of 50 among 1,000 users at a fixed 500 messages/s (CPU per push);
    - 5,000 clients connecting in bursts of 100 (time until all are
      authorized; RSS with them all connected, and per idle connection);
    - direct messages, 1,000 users, at a fixed 2,000 messages/s (p99 delivery).

    :param quick: a fifth of the users and three-second windows, for a try.
    :param duration: seconds each load sends for (10; ``quick``: 3).
    :param storm_clients: clients in the storm (5,000; ``quick``: 1,000).
    :param inflight: requests each closed-loop sender keeps outstanding (10).
    """
    seconds = duration if duration is not None else (3.0 if quick else 10.0)
    many = 1000 if quick else 5000
    inflight = inflight or 10
    scenario = partial(Scenario, duration=seconds, burst=burst)
    return [
        scenario("open", users=100, rate=5000),
        scenario(
            "direct",
            users=100,
            senders=100,
            inflight=inflight,
            # The duration ends the loop, not the budget.
            messages=1_000_000,
        ),
        scenario("open", users=many, rate=5000),
        scenario("group", users=1000, group_size=group_size, rate=500),
        scenario("storm", users=storm_clients or many),
        scenario("open", users=1000, rate=2000),
    ]


# -- medians ------------------------------------------------------------------


def _median(values: Sequence[Any]) -> Any:
    """The median of numbers (an observed one for integers), or of dicts and
    lists of numbers element by element; ``None`` values are left out."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool):
        return all(present)
    if isinstance(first, int):
        return statistics.median_low(present)
    if isinstance(first, float):
        return statistics.median(present)
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(v, dict) and k in v for v in present)]
        return {k: _median([v[k] for v in present]) for k in keys}
    if isinstance(first, list) and all(isinstance(x, int | float) for x in first):
        width = min(len(v) for v in present)
        return [_median([v[i] for v in present]) for i in range(width)]
    return first


def median_result(rounds: Sequence[Result]) -> Result:
    """One result whose every figure is the median of ``rounds`` (the same
    scenario against the same server, once per round).

    Counts are medians too; ``complete`` holds only if every round was
    complete, and the problems of every round are kept (prefixed by round).
    """
    if len(rounds) == 1:
        return rounds[0]
    values: dict[str, Any] = {}
    for f in fields(Result):
        column = [getattr(r, f.name) for r in rounds]
        if f.name == "problems":
            values[f.name] = [
                f"round {i + 1}: {problem}" for i, r in enumerate(rounds) for problem in r.problems
            ][:MAX_PROBLEMS]
        elif f.name == "complete":
            values[f.name] = all(column)
        elif f.name == "rounds":
            values[f.name] = len(rounds)
        elif isinstance(column[0], str) or f.name == "profile":
            values[f.name] = next((v for v in column if v is not None), None)
        else:
            values[f.name] = _median(column)
    return Result(**values)


# -- the side-by-side table ---------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One figure of a scenario that the side-by-side table shows."""

    name: str
    value: Callable[[Result], float | None]
    digits: int = 1
    higher_is_better: bool = False


def _p99(stats: dict[str, float] | None) -> float | None:
    return stats["p99"] if stats else None


CPU_PER_MESSAGE = Figure("server CPU µs/msg", lambda r: r.server_cpu_us_per_message)
CPU_PER_PUSH = Figure("server CPU µs/push", lambda r: r.server_cpu_us_per_push, 2)
DELIVERY_P99 = Figure("p99 delivery ms", lambda r: _p99(r.delivery_ms), 2)
THROUGHPUT = Figure("msg/s", lambda r: r.messages_per_second, 0, higher_is_better=True)


def figures(result: Result) -> list[Figure]:
    """What the side-by-side table shows of a scenario like ``result``'s."""
    if result.kind == "storm":
        return [
            Figure("s until all authorized", lambda r: r.connect_seconds, 2),
            Figure("server CPU µs/connection", lambda r: r.server_cpu_us_per_connection, 0),
            Figure(f"RSS MiB, {result.users:,} connected", lambda r: r.server_rss_connected_mb),
            Figure("RSS KB per idle connection", lambda r: r.rss_per_connection_kb, 2),
        ]
    paced = result.rate is not None
    if result.kind == "group":
        return [CPU_PER_PUSH, DELIVERY_P99] if paced else [CPU_PER_PUSH, THROUGHPUT]
    return [CPU_PER_MESSAGE, DELIVERY_P99] if paced else [CPU_PER_MESSAGE, THROUGHPUT]


@dataclass
class Comparison:
    """Median results by scenario and server, ours first."""

    servers: list[str]
    # One list per scenario, one median result per server (None: not run).
    rows: list[list[Result | None]]
    rounds: int

    @property
    def ours(self) -> str:
        return self.servers[0]

    def lines(self) -> list[dict[str, Any]]:
        """Every figure of every scenario: its value per server and the
        ratio of ours to each other server's."""
        out = []
        for row in self.rows:
            present = [r for r in row if r is not None]
            if not present:
                continue
            for figure in figures(present[0]):
                values = {
                    server: (figure.value(r) if r is not None else None)
                    for server, r in zip(self.servers, row, strict=True)
                }
                ours = values[self.ours]
                ratios = {
                    server: (ours / value if ours is not None and value else None)
                    for server, value in values.items()
                    if server != self.ours
                }
                out.append(
                    {
                        "scenario": present[0].title or present[0].scenario,
                        "figure": figure.name,
                        "better": "higher" if figure.higher_is_better else "lower",
                        "values": values,
                        "ratios": ratios,
                        "digits": figure.digits,
                        "complete": {
                            server: (r.complete if r is not None else None)
                            for server, r in zip(self.servers, row, strict=True)
                        },
                        "other_cpu": {
                            server: (r.other_cpu_load if r is not None else None)
                            for server, r in zip(self.servers, row, strict=True)
                        },
                    }
                )
        return out

    def document(self) -> dict[str, Any]:
        """The side-by-side figures, for ``--json``."""
        lines = self.lines()
        for line in lines:
            del line["digits"]
        return {"ours": self.ours, "servers": self.servers, "rounds": self.rounds, "rows": lines}

    def render(self) -> str:
        """The side-by-side table a person reads."""
        others = self.servers[1:]
        headers = ["scenario", "figure", *self.servers, *(f"{self.ours}/{o}" for o in others)]
        rows = []
        previous = None
        for line in self.lines():
            digits = line["digits"]
            cells = [
                "" if line["scenario"] == previous else line["scenario"],
                line["figure"] + (" ↑" if line["better"] == "higher" else ""),
            ]
            for server in self.servers:
                value = line["values"][server]
                mark = "" if line["complete"][server] in (True, None) else " !"
                cells.append("-" if value is None else f"{value:,.{digits}f}{mark}")
            for other in others:
                ratio = line["ratios"][other]
                cells.append("-" if ratio is None else f"{ratio:.2f}x")
            rows.append(cells)
            previous = line["scenario"]
        noise = []
        for row in self.rows:
            present = [r for r in row if r is not None]
            if present:
                noise.append(
                    [
                        present[0].title or present[0].scenario,
                        *(
                            "-"
                            if r is None or r.other_cpu_load is None
                            else f"{r.other_cpu_load:.2f}"
                            for r in row
                        ),
                    ]
                )
        rounds = "one round" if self.rounds == 1 else f"medians of {self.rounds} interleaved rounds"
        parts = [
            f"\nSide by side ({rounds}; ratio = {self.ours} / other: below 1 is better for "
            "us, except for figures marked ↑, where higher is better; ! = a round was "
            "incomplete)\n",
            table(headers, rows, left=2),
            "\nOther processes' CPU during each measured window (cores, median): high "
            "figures mean a noisy machine\n",
            table(["scenario", *self.servers], noise),
        ]
        return "\n".join(parts) + "\n"


def compare(
    runs: Sequence[tuple[int, Result]], servers: Sequence[str], scenarios: int, rounds: int
) -> tuple[list[Result], Comparison]:
    """Gather the results of a run into one median result per scenario and
    server.

    :param runs: every result of the run with the index of its scenario in
        the plan; a result carries its server's label as ``target``.
    :param servers: the labels, ours first.
    :param scenarios: how many scenarios the plan has.
    :param rounds: how many rounds ran.
    :return: the median results (scenario by scenario, servers in order) and
        the side-by-side comparison.
    """
    cells: dict[tuple[int, str], list[Result]] = {}
    for index, result in runs:
        cells.setdefault((index, result.target), []).append(result)
    rows: list[list[Result | None]] = []
    medians: list[Result] = []
    for index in range(scenarios):
        row: list[Result | None] = []
        for server in servers:
            cell = cells.get((index, server))
            median = median_result(cell) if cell else None
            row.append(median)
            if median is not None:
                medians.append(median)
        rows.append(row)
    return medians, Comparison(list(servers), rows, rounds)
