"""Turning results into the printed tables, the JSON document and the check
against the project's targets."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatserver.bench.runner import Result


@dataclass(frozen=True)
class Goal:
    """A figure the project aims for."""

    figure: str
    limit: str
    check: Callable[[list[Result]], tuple[str, bool] | None]


def _one(results: Iterable[Result], kind: str, users: int | None = None) -> Result | None:
    for r in results:
        if r.kind == kind and (users is None or r.users == users) and r.target == "chatserver":
            return r
    return None


def _direct_at(users: int, limit: float) -> Callable[[list[Result]], tuple[str, bool] | None]:
    def check(results: list[Result]) -> tuple[str, bool] | None:
        r = _one(results, "direct", users)
        if r is None or r.server_cpu_us_per_message is None:
            return None
        return f"{r.server_cpu_us_per_message:.1f} µs", r.server_cpu_us_per_message <= limit

    return check


def _direct_scaling(results: list[Result]) -> tuple[str, bool] | None:
    small, large = _one(results, "direct", 100), _one(results, "direct", 10_000)
    if small is None or large is None:
        return None
    a, b = small.server_cpu_us_per_message, large.server_cpu_us_per_message
    if not a or b is None:
        return None
    return f"{b:.1f} µs = {b / a:.2f}x", b / a <= 1.3


def _group_push(results: list[Result]) -> tuple[str, bool] | None:
    r = _one(results, "group")
    if r is None or r.server_cpu_us_per_push is None or r.scenario != "group of 50":
        return None
    return f"{r.server_cpu_us_per_push:.1f} µs", r.server_cpu_us_per_push <= 8


def _idle_memory(results: list[Result]) -> tuple[str, bool] | None:
    measured = [
        (r, rss)
        for r in results
        if r.target == "chatserver" and (rss := r.rss_per_connection_kb) is not None
    ]
    if not measured:
        return None
    r, rss = max(measured, key=lambda m: m[0].connections)
    if r.connections < 1000:
        return None  # a few pages of RSS would swamp the figure
    return (
        f"{rss:.1f} KB ({r.connections} conns)",
        rss <= 10,
    )


def _storm(results: list[Result]) -> tuple[str, bool] | None:
    r = _one(results, "storm", 5000)
    if r is None or r.connect_seconds is None:
        return None
    ok = r.connect_seconds <= 3 and r.connections == 5000
    return f"{r.connect_seconds:.2f} s ({r.connections} authorized)", ok


def _open_p99(results: list[Result]) -> tuple[str, bool] | None:
    for r in results:
        if r.kind == "open" and r.users == 1000 and r.rate == 2000 and r.target == "chatserver":
            if r.delivery_ms is None:
                return None
            return f"{r.delivery_ms['p99']:.2f} ms", r.delivery_ms["p99"] <= 5
    return None


GOALS = [
    Goal("server CPU per direct message, 100 users", "<= 47 µs", _direct_at(100, 47)),
    Goal(
        "server CPU per direct message, 10,000 users",
        "<= 1.3x the 100-user figure",
        _direct_scaling,
    ),
    Goal("server CPU per group push (groups of 50)", "<= 8 µs", _group_push),
    Goal("RSS per idle authorized connection", "<= 10 KB", _idle_memory),
    Goal("5,000 clients in bursts of 100 authorized", "<= 3 s", _storm),
    Goal("p99 delivery at 2,000 msg/s, 1,000 users", "<= 5 ms", _open_p99),
]


def goals(results: list[Result]) -> list[dict[str, Any]]:
    """Each goal that these results say something about, with the figure."""
    out = []
    for goal in GOALS:
        checked = goal.check(results)
        if checked is not None:
            figure, met = checked
            out.append({"goal": goal.figure, "target": goal.limit, "measured": figure, "met": met})
    return out


# -- tables -----------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _ms(stats: dict[str, float] | None, *keys: str) -> str:
    if not stats:
        return "-"
    return "/".join(f"{stats[k]:.2f}" for k in keys)


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A plain-text table, the first ``left`` columns left-aligned, the others
    right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


_NODE_HEADERS = [
    "server",
    "scenario",
    "msg/s",
    "srv µs/msg",
    "srv µs/deliv",
    "per node µs/deliv",
    "per node CPU",
    "Redis µs/msg",
    "Redis CPU",
    "pub/msg",
]


def _node_row(r: Result) -> list[str]:
    per_node_cpu = "-"
    if r.node_cpu_seconds is not None and r.seconds:
        per_node_cpu = " ".join(_pct(c / r.seconds) for c in r.node_cpu_seconds)
    per_delivery = "-"
    if r.node_cpu_us_per_delivery is not None:
        per_delivery = " ".join(_f(c) for c in r.node_cpu_us_per_delivery)
    return [
        r.target,
        r.scenario,
        _f(r.messages_per_second, 0),
        _f(r.server_cpu_us_per_message),
        _f(r.server_cpu_us_per_delivery),
        per_delivery,
        per_node_cpu,
        _f(r.redis_cpu_us_per_message),
        _pct(r.redis_cpu_utilisation),
        _f(r.publishes_per_message, 2),
    ]


def render(results: list[Result], machine: dict[str, Any]) -> str:
    """The tables a person reads."""
    parts = [
        f"chatserver benchmark on {machine['cpus']} CPU(s), {machine['cpu_model']}, "
        f"Python {machine['python']}",
    ]
    rounds = max((r.rounds for r in results), default=1)
    if rounds > 1:
        parts.append(f"Every figure is the median of {rounds} rounds.")
    traffic = [r for r in results if r.kind != "storm"]
    if traffic:
        parts.append(
            "\nMessages (CPU from /proc/PID/stat utime+stime, in clock ticks of "
            f"1/{machine['clock_tick_hz']} s; latency in ms, p50/p99[/max])\n"
        )
        parts.append(
            table(
                [
                    "server",
                    "scenario",
                    "users",
                    "messages",
                    "msg/s",
                    "push/s",
                    "reply ms",
                    "delivery ms",
                    "srv µs/msg",
                    "srv µs/push",
                    "srv CPU",
                    "gen µs/msg",
                    "gen CPU",
                ],
                [
                    [
                        r.target,
                        r.scenario,
                        f"{r.users:,}",
                        f"{r.acked:,}",
                        _f(r.messages_per_second, 0),
                        _f(r.pushes_per_second, 0),
                        _ms(r.reply_ms, "p50", "p99"),
                        _ms(r.delivery_ms, "p50", "p99", "max"),
                        _f(r.server_cpu_us_per_message),
                        _f(r.server_cpu_us_per_push),
                        _pct(r.server_cpu_utilisation),
                        _f(r.generator_cpu_us_per_message),
                        _pct(r.generator_cpu_utilisation),
                    ]
                    for r in traffic
                ],
            )
        )
    spread_out = [
        r for r in traffic if r.node_cpu_seconds is not None or r.redis_cpu_seconds is not None
    ]
    if spread_out:
        parts.append(
            "\nNodes and Redis (srv: every node or worker summed; per node: its CPU per "
            "delivery to its own clients,\nwhen the bench spread the clients, else its share "
            "of a core; Redis: the redis-server process; pub/msg: PUBLISH commands per "
            "message)\n"
        )
        parts.append(table(_NODE_HEADERS, [_node_row(r) for r in spread_out]))
    parts.append(
        "\nConnections and memory (clients authorize in bursts; RSS after a full GC and "
        "settling; full GC ms: how long that collection stopped the server)\n"
    )
    parts.append(
        table(
            [
                "server",
                "scenario",
                "connections",
                "connect s",
                "slowest burst s",
                "srv µs/conn",
                "RSS base MB",
                "RSS conn MB",
                "RSS end MB",
                "KB/conn",
                "full GC ms",
            ],
            [
                [
                    r.target,
                    r.scenario,
                    f"{r.connections:,}",
                    _f(r.connect_seconds, 2),
                    _f(r.slowest_burst_seconds, 3),
                    _f(r.server_cpu_us_per_connection, 0),
                    _f(r.server_rss_baseline_mb),
                    _f(r.server_rss_connected_mb),
                    _f(r.server_rss_end_mb),
                    _f(r.rss_per_connection_kb, 2),
                    _f(r.server_full_gc_ms),
                ]
                for r in results
            ],
        )
    )
    measured = [r for r in results if r.server_gc or r.other_cpu_load is not None]
    if measured:
        parts.append(
            "\nDuring the measured window: the server's garbage collections, and the CPU "
            "that other processes used\n(in cores) or the hypervisor stole: when these "
            "are high, the figures above are not to be trusted\n"
        )
        rows = []
        for r in measured:
            gc = r.server_gc or {}
            counts = gc.get("collections") or [None, None, None]
            pause = gc.get("pause_ms")
            rows.append(
                [
                    r.target,
                    r.scenario,
                    *("-" if n is None else f"{n:,}" for n in counts),
                    _f(pause),
                    _f(gc.get("max_pause_ms"), 2),
                    _pct(pause / 1000 / r.seconds if pause is not None and r.seconds else None),
                    _f(r.other_cpu_load, 2),
                    _f(r.steal_cpu_load, 2),
                ]
            )
        parts.append(
            table(
                [
                    "server",
                    "scenario",
                    "gc gen0",
                    "gen1",
                    "gen2",
                    "pause ms",
                    "max pause ms",
                    "of window",
                    "other CPU",
                    "steal",
                ],
                rows,
            )
        )
    lags = [r for r in results if r.generator_max_lag_ms is not None]
    for r in lags:
        parts.append(
            f"\n{r.target} {r.scenario}: the generator fell at most "
            f"{r.generator_max_lag_ms:.2f} ms behind its schedule."
        )
    incomplete = [r for r in results if not r.complete]
    for r in incomplete:
        parts.append(
            f"\nINCOMPLETE {r.target} {r.scenario}: sent {r.sent}, acked {r.acked}, "
            f"errors {r.errors}, delivered {r.deliveries}/{r.expected_deliveries}, "
            f"echoes {r.echoes}, connect failures {r.connect_failures}. {r.problems[:3]}"
        )
    checked = goals(results)
    if checked:
        parts.append("\nTargets\n")
        parts.append(
            table(
                ["goal", "target", "measured", "met"],
                [
                    [g["goal"], g["target"], g["measured"], "yes" if g["met"] else "NO"]
                    for g in checked
                ],
            )
        )
    for r in results:
        if r.profile and r.profile.endswith(".txt"):
            parts.append(f"\nProfile of {r.target} {r.scenario}: {r.profile}\n")
            parts.append(summarize_profile(Path(r.profile)))
    return "\n".join(parts) + "\n"


def document(
    results: list[Result], machine: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document: the same figures as the tables."""
    return {
        "machine": machine,
        "settings": settings,
        "results": [r.as_dict() for r in results],
        "goals": goals(results),
    }


# -- profiles ---------------------------------------------------------------

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path})"


def summarize_profile(path: Path, top: int = 15) -> str:
    """The functions that cost most in a py-spy ``--format raw`` profile:
    by own samples (self) and by samples with the function on the stack
    (total), as percentages of all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    try:
        text = path.read_text()
    except OSError as e:
        return f"(no profile: {e})"
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    if not samples:
        return "(empty profile)"
    rows = [
        [name, f"{n / samples:.1%}", f"{total[name] / samples:.1%}"]
        for name, n in own.most_common(top)
    ]
    return table(["function (self time)", "self", "total"], rows) + f"\n{samples} samples"
