"""The scenarios: what each one connects, sends and measures."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatserver.bench.population import Population
from chatserver.bench.processes import BenchError, Generators, Target
from chatserver.bench.storage import COLLECT_ACTION, GC_STATS_ACTION
from chatserver.bench.sysinfo import (
    CLOCK_TICK_HZ,
    CpuTimes,
    MachineTimes,
    cpu_times,
    rss_bytes,
)

# Slack on top of a phase's own duration before the bench gives up on it.
PHASE_TIMEOUT = 60.0
# How long another server has to answer the bench's garbage-collection action
# before the bench takes it that the server does not offer it.
PROBE_TIMEOUT = 5.0
SETTLE_SECONDS = 3.0


@dataclass
class Scenario:
    """One load to run.

    ``kind`` is ``direct`` (each message to a random other user), ``group``
    (each message to the sender's group), ``open`` (direct messages at a fixed
    ``rate``) or ``storm`` (``users`` clients connect and authorize ``burst``
    at a time, a burst starting once the previous one is authorized).

    ``direct`` and ``group`` run a closed loop (``senders`` clients each keep
    ``inflight`` requests outstanding) unless ``rate`` is set: then, like
    ``open``, messages go out at that fixed rate from random senders however
    many are outstanding, which is where per-message costs show that
    batching hides in a closed loop.
    """

    kind: str
    users: int
    messages: int = 0
    duration: float = 10.0
    senders: int = 100
    inflight: int = 2
    rate: float = 0.0
    group_size: int = 50
    burst: int = 100

    @property
    def paced(self) -> bool:
        """Whether messages go out at a fixed rate (an open loop)."""
        return self.kind != "storm" and self.rate > 0

    @property
    def name(self) -> str:
        if self.kind == "open":
            return f"open {self.rate:g}/s"
        if self.kind == "group":
            base = f"group of {self.group_size}"
            return f"{base}, {self.rate:g}/s" if self.paced else base
        if self.kind == "direct" and self.paced:
            return f"direct {self.rate:g}/s"
        return self.kind

    @property
    def title(self) -> str:
        """The scenario in words, as the side-by-side table names it."""
        if self.kind == "storm":
            return f"{self.users:,} clients connecting in bursts of {self.burst:,}"
        if self.kind == "group":
            what = f"group of {self.group_size}, {self.users:,} users"
        else:
            what = f"direct, {self.users:,} users"
        if self.paced:
            return f"{what}, fixed {self.rate:,.0f} msg/s"
        every = "each" if self.senders >= self.users else f"for {self.senders} senders"
        return f"{what}, closed loop, {self.inflight} in flight {every}"


@dataclass
class Result:
    """The figures of one scenario against one server (None: not measured)."""

    target: str
    scenario: str
    kind: str
    users: int
    connections: int = 0
    connect_seconds: float | None = None
    slowest_burst_seconds: float | None = None
    connect_failures: int = 0
    sent: int = 0
    acked: int = 0
    errors: int = 0
    pushes: int = 0
    deliveries: int = 0
    expected_deliveries: int = 0
    echoes: int = 0
    seconds: float | None = None
    messages_per_second: float | None = None
    pushes_per_second: float | None = None
    rate: float | None = None
    reply_ms: dict[str, float] | None = None
    delivery_ms: dict[str, float] | None = None
    generator_max_lag_ms: float | None = None
    server_cpu_seconds: float | None = None
    server_cpu_us_per_message: float | None = None
    server_cpu_us_per_push: float | None = None
    server_cpu_us_per_connection: float | None = None
    server_cpu_utilisation: float | None = None
    generator_processes: int = 1
    generator_cpu_seconds: float | None = None
    generator_cpu_us_per_message: float | None = None
    generator_cpu_us_per_push: float | None = None
    generator_cpu_utilisation: float | None = None
    server_rss_baseline_mb: float | None = None
    server_rss_connected_mb: float | None = None
    server_rss_end_mb: float | None = None
    rss_per_connection_kb: float | None = None
    server_gc: dict[str, Any] | None = None
    server_full_gc_ms: float | None = None
    node_cpu_seconds: list[float] | None = None
    node_deliveries: list[int] | None = None
    node_cpu_us_per_delivery: list[float] | None = None
    server_cpu_us_per_delivery: float | None = None
    redis_cpu_seconds: float | None = None
    redis_cpu_utilisation: float | None = None
    redis_cpu_us_per_message: float | None = None
    redis_publishes: int | None = None
    publishes_per_message: float | None = None
    other_cpu_load: float | None = None
    steal_cpu_load: float | None = None
    complete: bool = True
    problems: list[str] = field(default_factory=list)
    profile: str | None = None
    title: str = ""
    rounds: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(samples_ns: Sequence[int]) -> dict[str, float] | None:
    """p50, p99 and max of ``samples_ns``, in milliseconds (None if empty)."""
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1e6

    return {"p50": at(0.50), "p99": at(0.99), "max": ordered[-1] / 1e6, "count": n}


def spread(count: int, among: int) -> list[int]:
    """``count`` indices spread evenly over ``range(among)``."""
    count = min(count, among)
    return [i * among // count for i in range(count)] if count else []


def slices(users: int, workers: int) -> list[tuple[int, int]]:
    """(first, count) of the users each generator process owns."""
    base, extra = divmod(users, workers)
    out, first = [], 0
    for w in range(workers):
        count = base + (1 if w < extra else 0)
        out.append((first, count))
        first += count
    return out


def split(total: int, weights: list[int]) -> list[int]:
    """``total`` divided in proportion to ``weights``, summing to ``total``."""
    whole = sum(weights)
    if not whole:
        return [0] * len(weights)
    parts = [total * w // whole for w in weights]
    for i in range(total - sum(parts)):
        parts[i % len(parts)] += 1
    return parts


# py-spy's output formats, and the file name extension of each.
PROFILE_FORMATS = {"raw": "txt", "flamegraph": "svg", "speedscope": "speedscope.json"}


class Profiler:
    """py-spy sampling the server during a measured window, if asked for."""

    def __init__(
        self,
        directory: Path | None,
        pid: int | None,
        name: str,
        output_format: str = "raw",
        native: bool = False,
        subprocesses: bool = False,
    ) -> None:
        """
        :param subprocesses: record ``pid``'s child processes too (the
            workers of a supervisor), into the same output.
        :param output_format: one of :data:`PROFILE_FORMATS`: ``raw``
            (collapsed stacks, ``a;b;c count`` lines, which flamegraph.pl and
            speedscope read and :func:`~chatserver.bench.report.summarize_profile`
            ranks), ``flamegraph`` (SVG) or ``speedscope`` (JSON).
        :param native: sample C frames too (py-spy ``--native``).
        """
        self.process: subprocess.Popen[bytes] | None = None
        self.path: Path | None = None
        if directory is None or pid is None:
            return
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.path.exists(py_spy):
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.{PROFILE_FORMATS[output_format]}"
        self.process = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                output_format,
                "--output",
                str(self.path),
                *(["--native"] if native else []),
                *(["--subprocesses"] if subprocesses else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attaches before the window opens

    def stop(self) -> str | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return str(self.path)


class Noise:
    """How busy the machine was with anything but this benchmark over a
    window: CPU time of every other process (in CPUs, e.g. 0.5 = half a
    core), and time stolen by the hypervisor. Figures taken while others are
    busy are not to be trusted."""

    def __init__(self, generators: Generators, target: Target) -> None:
        self.pids = [os.getpid(), *generators.pids, *target.cpu_pids()]
        if target.redis is not None:
            self.pids.append(target.redis.pid)
        self.machine = MachineTimes.read()
        self.ours = self._ours()

    def _ours(self) -> int:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += cpu_times(pid).ticks
        return total

    def stop(self, result: Result, seconds: float) -> None:
        machine = MachineTimes.read()
        others = (machine.busy - self.machine.busy) - (self._ours() - self.ours)
        if seconds > 0:
            result.other_cpu_load = max(0, others) / CLOCK_TICK_HZ / seconds
            result.steal_cpu_load = (machine.steal - self.machine.steal) / CLOCK_TICK_HZ / seconds


class CpuReadings:
    """The CPU times of a server's processes at one moment: each node's (or
    worker's), anything else of the server's (a supervisor), and its Redis's
    with the commands Redis has run.

    Two readings taken around a window give the CPU of each over it
    (:meth:`since`); the processes are those of the first reading, so a
    worker that appears meanwhile is not counted halfway.
    """

    def __init__(
        self,
        nodes: dict[int, CpuTimes],
        others: dict[int, CpuTimes],
        redis: CpuTimes | None,
        redis_calls: dict[str, int] | None,
    ) -> None:
        self.nodes = nodes
        self.others = others
        self.redis = redis
        self.redis_calls = redis_calls

    @classmethod
    def read(cls, target: Target, like: CpuReadings | None = None) -> CpuReadings:
        """Read ``target``'s processes (those of ``like``, if given).

        :raise BenchError: if a process of the server is gone.
        """
        node_pids = list(like.nodes) if like is not None else target.node_pids()
        other_pids = (
            list(like.others)
            if like is not None
            else [p for p in target.cpu_pids() if p not in node_pids]
        )
        try:
            nodes = {pid: cpu_times(pid) for pid in node_pids}
            others = {pid: cpu_times(pid) for pid in other_pids}
        except OSError as e:
            raise BenchError(f"a server process is gone: {e}") from None
        redis = target.redis
        if redis is None:
            return cls(nodes, others, None, None)
        return cls(nodes, others, cpu_times(redis.pid), redis.command_calls())

    def since(self, earlier: CpuReadings) -> tuple[list[float], float, float | None]:
        """CPU seconds since ``earlier``: each node's, the server's in all,
        and Redis's (None without one)."""
        per_node = [t.seconds_since(earlier.nodes[pid]) for pid, t in self.nodes.items()]
        others = sum(t.seconds_since(earlier.others[pid]) for pid, t in self.others.items())
        redis = None
        if self.redis is not None and earlier.redis is not None:
            redis = self.redis.seconds_since(earlier.redis)
        return per_node, sum(per_node) + others, redis

    def publishes_since(self, earlier: CpuReadings) -> int | None:
        """PUBLISH commands Redis ran since ``earlier`` (None without Redis)."""
        if self.redis_calls is None or earlier.redis_calls is None:
            return None
        return self.redis_calls.get("publish", 0) - earlier.redis_calls.get("publish", 0)


class Runner:
    """Runs scenarios against targets with a pool of generator processes."""

    def __init__(
        self,
        generators: Generators,
        profile_dir: Path | None = None,
        progress: Any = None,
        profile_format: str = "raw",
        profile_native: bool = False,
    ) -> None:
        self.generators = generators
        self.profile_dir = profile_dir
        self.profile_format = profile_format
        self.profile_native = profile_native
        self.progress = progress or (lambda message: None)
        self._profile_name = "server"

    # -- helpers ----------------------------------------------------------

    def _settled_rss(self, target: Target) -> int | None:
        """The target's RSS once it stops moving (after a garbage collection,
        when the target offers one)."""
        if target.pid is None:
            return None
        if target.collects:
            self._ask(target, COLLECT_ACTION)
        deadline = time.monotonic() + SETTLE_SECONDS
        previous = rss_bytes(target.pid)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            current = rss_bytes(target.pid)
            if abs(current - previous) < 64 * 1024:
                return current
            previous = current
        return previous

    def _ask(
        self,
        target: Target,
        action: str,
        data: dict[str, Any] | None = None,
        timeout: float = PHASE_TIMEOUT / 2,
    ) -> Any:
        """Call one of the bench's server-side actions (see L{storage})."""
        command = {
            "op": "ask",
            "url": target.url,
            "action": action,
            "data": data or {},
            "timeout": timeout,
        }
        return self.generators.call([command], timeout + PHASE_TIMEOUT)[0]["data"]

    def _probe_collects(self, target: Target) -> None:
        """Find out, once, whether ``target`` offers the bench's garbage
        collection actions (another implementation may: see the README)."""
        if target.collects is not None:
            return
        try:
            self._ask(target, GC_STATS_ACTION, {"reset": True}, timeout=PROBE_TIMEOUT)
        except BenchError:
            target.collects = False
        else:
            target.collects = True

    def _gc_stats(self, target: Target, reset: bool) -> dict[str, Any] | None:
        if not target.collects:
            return None
        stats: dict[str, Any] = self._ask(target, GC_STATS_ACTION, {"reset": reset})
        return stats

    def _profiler(self, target: Target) -> Profiler:
        """py-spy on ``target`` if profiles were asked for and it runs Python."""
        directory = self.profile_dir if target.profilable else None
        recorded = target.profile_pid()
        pid, subprocesses = recorded if recorded is not None else (None, False)
        return Profiler(
            directory,
            pid,
            self._profile_name,
            self.profile_format,
            self.profile_native,
            subprocesses,
        )

    def _cpu(self, target: Target, like: CpuReadings | None = None) -> CpuReadings | None:
        """The CPU of every process of ``target`` (and of its Redis) now;
        None if none of its processes is known."""
        if like is None and not target.cpu_pids():
            return None
        return CpuReadings.read(target, like)

    def _connect(self, target: Target, scenario: Scenario, result: Result) -> list[int]:
        """Connect and authorize every user; returns the owner of each user."""
        parts = slices(scenario.users, len(self.generators))
        started = time.perf_counter()
        answers = self.generators.call(
            [
                {
                    "op": "connect",
                    "urls": target.urls,
                    "first": first,
                    "count": count,
                    "burst": scenario.burst,
                    "timeout": PHASE_TIMEOUT,
                }
                for first, count in parts
            ],
            PHASE_TIMEOUT * (1 + scenario.users // max(1, scenario.burst)),
        )
        result.connect_seconds = time.perf_counter() - started
        result.slowest_burst_seconds = max(a["slowest_burst_seconds"] for a in answers)
        result.connections = sum(a["authorized"] for a in answers)
        result.connect_failures = sum(a["failed"] for a in answers)
        for answer in answers:
            result.problems.extend(answer["failures"])
        owner = []
        for worker, (_, count) in enumerate(parts):
            owner.extend([worker] * count)
        return owner

    # -- scenarios --------------------------------------------------------

    def run(self, target: Target, scenario: Scenario, round_index: int | None = None) -> Result:
        """Run ``scenario`` against ``target`` and return its figures.

        :param round_index: which round of several this is, from 0 (it names the
            profile).
        """
        population = Population(
            scenario.users, scenario.group_size if scenario.kind == "group" else 0
        )
        result = Result(
            target=target.label,
            scenario=scenario.name,
            kind=scenario.kind,
            users=scenario.users,
            generator_processes=len(self.generators),
            title=scenario.title,
        )
        prefix = "" if round_index is None else f"round {round_index + 1}: "
        self.progress(f"{prefix}{target.label}: {scenario.title}")
        self._profile_name = "-".join(
            part
            for part in (
                re.sub(r"[^\w.-]+", "_", target.label),
                scenario.kind,
                str(scenario.users),
                f"{scenario.rate:g}ps" if scenario.paced else "",
                "" if round_index is None else f"r{round_index + 1}",
            )
            if part
        )
        target.begin(population)
        try:
            self._probe_collects(target)
            baseline = self._settled_rss(target)
            if scenario.kind == "storm":
                self._storm(target, scenario, result, baseline)
            else:
                self._traffic(target, scenario, population, result, baseline)
            if baseline is not None:
                result.server_rss_baseline_mb = baseline / 2**20
            target.check_alive()
        finally:
            with contextlib.suppress(BenchError):
                self.generators.call_all({"op": "close"}, PHASE_TIMEOUT)
            target.end()
        result.complete = (
            result.connect_failures == 0
            and result.errors == 0
            and result.acked == result.sent
            and result.deliveries == result.expected_deliveries
            and result.echoes == result.acked
        )
        return result

    def _memory(self, target: Target, result: Result, baseline: int | None) -> None:
        # The collection that settles memory also says how long a full one
        # stops the server for with this many connections.
        self._gc_stats(target, reset=True)
        connected = self._settled_rss(target)
        stats = self._gc_stats(target, reset=False)
        if stats is not None:
            result.server_full_gc_ms = stats["max_pause_ms"]
        if connected is None or baseline is None:
            return
        result.server_rss_connected_mb = connected / 2**20
        if result.connections:
            result.rss_per_connection_kb = (connected - baseline) / result.connections / 1024

    def _storm(
        self, target: Target, scenario: Scenario, result: Result, baseline: int | None
    ) -> None:
        self._gc_stats(target, reset=True)
        noise = Noise(self.generators, target)
        before = self._cpu(target)
        profiler = self._profiler(target)
        try:
            self._connect(target, scenario, result)
        finally:
            result.profile = profiler.stop()
        after = self._cpu(target, before)
        noise.stop(result, result.connect_seconds or 0.0)
        result.server_gc = self._gc_stats(target, reset=False)
        if before is not None and after is not None:
            per_node, result.server_cpu_seconds, result.redis_cpu_seconds = after.since(before)
            result.node_cpu_seconds = per_node if len(per_node) > 1 else None
            if result.connections:
                result.server_cpu_us_per_connection = (
                    result.server_cpu_seconds / result.connections * 1e6
                )
            if result.connect_seconds:
                result.server_cpu_utilisation = result.server_cpu_seconds / result.connect_seconds
        result.seconds = result.connect_seconds
        self._memory(target, result, baseline)

    def _traffic(
        self,
        target: Target,
        scenario: Scenario,
        population: Population,
        result: Result,
        baseline: int | None,
    ) -> None:
        if scenario.users < 2:
            raise BenchError("a traffic scenario needs at least 2 users")
        if scenario.kind == "group" and population.groups == 0:
            raise BenchError("a group scenario needs at least one whole group")
        owner = self._connect(target, scenario, result)
        if result.connect_failures:
            raise BenchError(
                f"{result.connect_failures} clients failed to connect: {result.problems}"
            )
        self._memory(target, result, baseline)

        workers = len(self.generators)
        # Group messages come from group members only.
        among = population.groups * population.group_size if scenario.kind == "group" else 0
        if scenario.paced:
            senders = list(range(among or scenario.users))
            messages = round(scenario.rate * scenario.duration)
            duration = scenario.duration * 1.5 + 5  # only a safety net: the rate sets the pace
        else:
            senders = spread(scenario.senders, among or scenario.users)
            messages = scenario.messages
            duration = scenario.duration
        by_worker: list[list[int]] = [[] for _ in range(workers)]
        for sender in senders:
            by_worker[owner[sender]].append(sender)
        budgets = split(messages, [len(s) for s in by_worker])
        commands = [
            {
                "op": "run",
                "kind": scenario.kind,
                "paced": scenario.paced,
                "users": scenario.users,
                "group_size": population.group_size,
                "owner": owner,
                "senders": by_worker[w],
                "messages": budgets[w],
                "inflight": scenario.inflight,
                "duration": duration,
                "rate": scenario.rate * len(by_worker[w]) / max(1, len(senders)),
                "nodes": max(1, len(target.urls)),
                "timeout": PHASE_TIMEOUT,
            }
            for w in range(workers)
        ]

        self._gc_stats(target, reset=True)
        noise = Noise(self.generators, target)
        before = self._cpu(target)
        profiler = self._profiler(target)
        started = time.perf_counter()
        try:
            ran = self.generators.call(commands, duration + 2 * PHASE_TIMEOUT)
            deliveries = [sum(r["sent_to"][w] for r in ran) for w in range(workers)]
            drained = self.generators.call(
                [{"op": "drain", "deliveries": d, "timeout": PHASE_TIMEOUT} for d in deliveries],
                2 * PHASE_TIMEOUT,
            )
            elapsed = time.perf_counter() - started
        finally:
            result.profile = profiler.stop()
        after = self._cpu(target, before)
        noise.stop(result, elapsed)
        result.server_gc = self._gc_stats(target, reset=False)

        result.seconds = elapsed
        result.rate = scenario.rate or None
        for d in drained:
            result.sent += d["sent"]
            result.acked += d["acked"]
            result.errors += d["errors"]
            result.echoes += d["echoes"]
            result.deliveries += d["delivered"]
            result.expected_deliveries += d["expected_deliveries"]
            result.problems.extend(d["error_samples"])
        result.pushes = result.deliveries + result.echoes
        result.messages_per_second = result.acked / elapsed
        result.pushes_per_second = result.pushes / elapsed
        reply, delivery = array("q"), array("q")
        for d in drained:
            reply.extend(d["reply_ns"])
            delivery.extend(d["delivery_ns"])
        result.reply_ms = percentiles(reply)
        result.delivery_ms = percentiles(delivery)
        if scenario.paced:
            result.generator_max_lag_ms = max(d["max_lag_ns"] for d in drained) / 1e6
        generator_cpu = sum(d["cpu_seconds"] for d in drained)
        result.generator_cpu_seconds = generator_cpu
        result.generator_cpu_utilisation = generator_cpu / elapsed / workers
        if result.acked:
            result.generator_cpu_us_per_message = generator_cpu / result.acked * 1e6
        if result.pushes:
            result.generator_cpu_us_per_push = generator_cpu / result.pushes * 1e6
        if before is not None and after is not None:
            self._cpu_figures(result, before, after, drained, len(target.urls))
        if target.pid is not None:
            result.server_rss_end_mb = rss_bytes(target.pid) / 2**20

    @staticmethod
    def _cpu_figures(
        result: Result,
        before: CpuReadings,
        after: CpuReadings,
        drained: list[dict[str, Any]],
        urls: int,
    ) -> None:
        """The server's CPU per message, push and delivery; with several
        processes, each one's; with a Redis, its CPU and publishes."""
        per_node, cpu, redis_cpu = after.since(before)
        elapsed = result.seconds or 0.0
        result.server_cpu_seconds = cpu
        if elapsed:
            result.server_cpu_utilisation = cpu / elapsed
        if result.acked:
            result.server_cpu_us_per_message = cpu / result.acked * 1e6
        if result.pushes:
            result.server_cpu_us_per_push = cpu / result.pushes * 1e6
        if result.deliveries:
            result.server_cpu_us_per_delivery = cpu / result.deliveries * 1e6
        # A cluster of one node has its line too, as the baseline of larger ones.
        clustered = len(per_node) > 1 or after.redis is not None
        if clustered:
            result.node_cpu_seconds = per_node
        if clustered and urls == len(per_node):
            # Clients were spread over the nodes by the bench: each node's
            # deliveries are those to its own clients.
            deliveries = [sum(d["delivered_by_node"][n] for d in drained) for n in range(urls)]
            result.node_deliveries = deliveries
            result.node_cpu_us_per_delivery = [
                c / n * 1e6 if n else 0.0 for c, n in zip(per_node, deliveries, strict=True)
            ]
        if redis_cpu is not None:
            result.redis_cpu_seconds = redis_cpu
            if elapsed:
                result.redis_cpu_utilisation = redis_cpu / elapsed
            if result.acked:
                result.redis_cpu_us_per_message = redis_cpu / result.acked * 1e6
            publishes = after.publishes_since(before)
            result.redis_publishes = publishes
            if publishes is not None and result.acked:
                result.publishes_per_message = publishes / result.acked


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "clock_tick_hz": CLOCK_TICK_HZ,
    }
