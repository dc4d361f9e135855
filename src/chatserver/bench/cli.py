"""``python -m chatserver.bench``: the command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from chatserver.bench.compare import compare, seed_suite
from chatserver.bench.processes import (
    BenchError,
    ClusterNodes,
    CommandServer,
    Generators,
    LocalServer,
    Namespaces,
    RedisServer,
    RemoteServer,
    Target,
)
from chatserver.bench.report import document, render
from chatserver.bench.runner import PROFILE_FORMATS, Result, Runner, Scenario, machine
from chatserver.bench.sysinfo import raise_open_files_limit

KINDS = ("direct", "group", "open", "storm")
SUITES = ("standard", "seed")
NAME = re.compile(r"^[\w.+-]+$")
COMPARE = re.compile(r"^(?:(?P<name>[\w.+-]+)=)?(?P<url>wss?://[^,\s]+)(?:,(?P<pid>\d+))?$")


def _counts(minimum: int, what: str) -> Callable[[str], list[int]]:
    """A parser of comma-separated counts, each at least ``minimum``."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"each {what} count must be at least {minimum}")
        return values

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m chatserver.bench",
        description="Measure chatserver (started in its own process) under load from "
        "separate load-generator processes, and print the figures.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=KINDS,
        help="run only this scenario (repeatable; default: all of them)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller loads: about 15 s in all instead of about a minute",
    )
    p.add_argument(
        "--users",
        type=_counts(2, "user"),
        help="connected users: the list for `direct` (e.g. 100,1000,10000); `group` and "
        "`open` use the largest (default: 100,1000,10000 for direct, 1000 for the others)",
    )
    p.add_argument(
        "--messages",
        type=_positive,
        help="messages per closed-loop run (default 30000; group 3000)",
    )
    p.add_argument(
        "--duration",
        type=float,
        help="seconds: the most a closed-loop run sends for, and how long `open` sends (10)",
    )
    p.add_argument(
        "--senders", type=_positive, default=100, help="clients that send, closed loop (100)"
    )
    p.add_argument(
        "--inflight",
        type=_positive,
        help="requests each sender keeps outstanding, closed loop (2; the seed suite: 10)",
    )
    p.add_argument("--rate", type=float, default=2000.0, help="messages/s of `open` (2000)")
    p.add_argument("--group-size", type=_positive, default=50, help="members per group (50)")
    p.add_argument("--storm-clients", type=_positive, help="clients in `storm` (5000)")
    p.add_argument("--burst", type=_positive, default=100, help="clients connecting at once (100)")
    p.add_argument("--generators", type=_positive, default=1, help="load-generator processes (1)")
    p.add_argument(
        "--storage",
        help="the server's --storage instead of the bench's memory storage; users then "
        "sign in by claimed id (the server runs with --dev-auth) unless --token-auth",
    )
    p.add_argument(
        "--token-auth",
        action="store_true",
        help="with --storage: sign in with token t<N> instead of claiming id u<N>",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more option for our server, e.g. --server-arg=--rate=50 (repeatable; the "
        "bench lifts the per-connection rate limit unless told otherwise)",
    )
    p.add_argument(
        "--suite",
        choices=SUITES,
        help="which scenarios: `standard` (the default without --compare) or `seed`, the "
        "side-by-side loads of the comparison with node-chat-server (the default with "
        "--compare or --compare-command)",
    )
    p.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        help="run every scenario against every server this many times, interleaved, and "
        "report the medians (1)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="[NAME=]URL[,PID]",
        help="also run every scenario against this running server (ws://...), whose "
        "process id, if given, lets the bench read its CPU and memory (repeatable)",
    )
    p.add_argument(
        "--compare-pid",
        type=int,
        metavar="PID",
        help="the process id of the one --compare server",
    )
    p.add_argument(
        "--compare-name", metavar="NAME", help="how the tables name the one --compare server"
    )
    p.add_argument(
        "--compare-command",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also run every scenario against a server that COMMAND starts, afresh for "
        "each scenario as ours is; {port} in it becomes a free port, {users} and "
        "{group_size} the scenario's population, also given as CHATSERVER_BENCH_USERS and "
        "CHATSERVER_BENCH_GROUP_SIZE (repeatable)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each measured window of our server with py-spy into DIR",
    )
    p.add_argument(
        "--profile-format",
        choices=sorted(PROFILE_FORMATS),
        default="raw",
        help="py-spy's format: raw (collapsed stacks, summarised in the output; the default), "
        "flamegraph (SVG) or speedscope",
    )
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="profile C frames too (py-spy --native)",
    )
    p.add_argument(
        "--workers",
        type=_counts(1, "worker"),
        help="server processes: a list such as 1,2 runs every scenario with each "
        "(above 1: --workers N on one port with a Redis the bench starts; CPU is summed "
        "over the workers and shown for each, with Redis's; default 1)",
    )
    p.add_argument(
        "--nodes",
        type=_counts(1, "node"),
        help="separate nodes: a list such as 1,2,3 runs every scenario on a cluster of each "
        "size, each node a server process of its own on a port of its own, all sharing a "
        "Redis the bench starts, with the users spread evenly over the nodes (so deliveries "
        "cross nodes); prints each node's CPU per delivery, Redis's CPU and publishes per message "
        "(only these clusters run unless --workers is given too)",
    )
    p.add_argument(
        "--netns",
        action="store_true",
        help="with --nodes: each node in a network namespace of its own, joined to the "
        "bench's by a veth pair (needs root and `ip`; made and removed by the bench); "
        "where they cannot be made, the nodes share 127.0.0.1, as without this option",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--save",
        type=Path,
        metavar="FILE",
        help="also write the figures as JSON to FILE (whatever is printed)",
    )
    return p


def suite(args: argparse.Namespace) -> str:
    """The suite the options ask for."""
    if args.suite:
        chosen: str = args.suite
        return chosen
    return "seed" if args.compare or args.compare_command else "standard"


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios the options ask for, in order."""
    if suite(args) == "seed":
        plan = seed_suite(
            quick=args.quick,
            duration=args.duration,
            storm_clients=args.storm_clients,
            burst=args.burst,
            group_size=args.group_size,
            inflight=args.inflight,
        )
        return [s for s in plan if s.kind in (args.scenario or KINDS)]
    quick = args.quick
    direct_users = args.users or ([100, 1000] if quick else [100, 1000, 10_000])
    other_users = max(args.users) if args.users else (500 if quick else 1000)
    group_users = max(args.users) if args.users else (200 if quick else 1000)
    duration = args.duration if args.duration is not None else (3.0 if quick else 10.0)
    common = {"senders": args.senders, "inflight": args.inflight or 2, "burst": args.burst}
    out: list[Scenario] = []
    for kind in args.scenario or KINDS:
        if kind == "direct":
            messages = args.messages or (5000 if quick else 30_000)
            out.extend(
                Scenario("direct", users=n, messages=messages, duration=duration, **common)
                for n in direct_users
            )
        elif kind == "group":
            out.append(
                Scenario(
                    "group",
                    users=group_users,
                    messages=args.messages or (500 if quick else 3000),
                    duration=duration,
                    group_size=min(args.group_size, group_users),
                    **common,
                )
            )
        elif kind == "open":
            out.append(
                Scenario("open", users=other_users, rate=args.rate, duration=duration, **common)
            )
        elif kind == "storm":
            clients = args.storm_clients or (1000 if quick else 5000)
            out.append(Scenario("storm", users=clients, **common))
    return out


def other_servers(args: argparse.Namespace) -> list[Target]:
    """The servers to compare ours with, as the options name them.

    :raise ValueError: with a sentence for the person who typed them.
    """
    targets: list[Target] = []
    if (args.compare_pid or args.compare_name) and len(args.compare) != 1:
        raise ValueError("--compare-pid and --compare-name go with exactly one --compare")
    for spec in args.compare:
        match = COMPARE.match(spec)
        if match is None:
            raise ValueError(
                f"--compare {spec!r}: expected [NAME=]ws://HOST:PORT/[,PID], "
                "e.g. seed=ws://127.0.0.1:8080/,4242"
            )
        if match["url"].startswith("wss:"):
            raise ValueError(f"--compare {spec!r}: the load generator speaks ws:// only")
        pid = int(match["pid"]) if match["pid"] else args.compare_pid
        name = match["name"] or args.compare_name or "compare"
        targets.append(RemoteServer(match["url"], pid, name))
    for spec in args.compare_command:
        name, sep, command = spec.partition("=")
        if not sep or not NAME.match(name):
            raise ValueError(
                f"--compare-command {spec!r}: expected NAME=COMMAND, e.g. "
                "'seed=node run.js --port {port}'"
            )
        targets.append(CommandServer(command, name))
    labels = [t.label for t in targets]
    for target in targets:
        if labels.count(target.label) > 1 or target.label.startswith("chatserver"):
            raise ValueError(
                f"two servers would be called {target.label!r}: name each one "
                "(NAME=... or --compare-name), and not chatserver"
            )
    for target in targets:
        if target.pid is not None and not os.path.exists(f"/proc/{target.pid}"):
            raise ValueError(f"no process {target.pid} (the pid given for {target.label})")
    return targets


def namespaces_work() -> bool:
    """Whether this process can make network namespaces (it tries one);
    says why not on standard error."""
    try:
        Namespaces(1).close()
    except BenchError as e:
        print(
            f"bench: no network namespaces ({e.args[0].strip()}); the nodes share 127.0.0.1",
            file=sys.stderr,
        )
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 if every message was answered and delivered."""
    args = parser().parse_args(argv)
    if args.token_auth and not args.storage:
        parser().error("--token-auth goes with --storage")
    if args.netns and not args.nodes:
        parser().error("--netns goes with --nodes")
    try:
        others = other_servers(args)
    except ValueError as e:
        parser().error(str(e))
    raise_open_files_limit()
    plan = scenarios(args)
    workers_list: list[int] = args.workers or ([] if args.nodes else [1])
    redis = RedisServer() if max(workers_list, default=1) > 1 or args.nodes else None
    claimed_ids = bool(args.storage) and not args.token_auth
    targets: list[Target] = [
        LocalServer(
            args.storage,
            claimed_ids=claimed_ids,
            extra_args=args.server_arg,
            workers=workers,
            redis=redis,
        )
        for workers in workers_list
    ]
    netns = args.netns and namespaces_work()
    for nodes in args.nodes or ():
        assert redis is not None
        targets.append(
            ClusterNodes(nodes, redis, args.storage, claimed_ids, args.server_arg, netns)
        )
    targets.extend(others)

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    runs: list[tuple[int, Result]] = []
    many = args.rounds > 1 or len(targets) > 1
    generators = Generators(args.generators)
    try:
        runner = Runner(
            generators, args.profile, progress, args.profile_format, args.profile_native
        )
        for round_index in range(args.rounds):
            # Each round starts with another server, so that none always
            # runs first (or last) in a warming or cooling machine.
            turn = round_index % len(targets)
            order = targets[turn:] + targets[:turn]
            for index, scenario in enumerate(plan):
                for target in order:
                    try:
                        result = runner.run(
                            target, scenario, round_index if args.rounds > 1 else None
                        )
                    except BenchError as e:
                        if not many:
                            raise
                        # One failure need not cost the rest of a long
                        # comparison: note it, and go on with fresh generators
                        # (a timed-out one may still be busy with the old load).
                        progress(f"{target.label}: {scenario.title}: {e}")
                        result = Result(
                            target=target.label,
                            scenario=scenario.name,
                            kind=scenario.kind,
                            users=scenario.users,
                            title=scenario.title,
                            complete=False,
                            problems=[str(e)],
                        )
                        generators.close()
                        generators = runner.generators = Generators(args.generators)
                    runs.append((index, result))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if redis is not None:
            redis.stop()
        generators.close()
        for target in targets:
            target.end()

    info = machine()
    servers = [t.label for t in targets]
    results, comparison = compare(runs, servers, len(plan), args.rounds)
    if args.json or args.save:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        settings["suite"] = suite(args)
        settings["scenarios"] = [vars(s) for s in plan]
        out = document(results, info, settings)
        if args.rounds > 1:
            # Every round's figures, scenario by scenario.
            out["rounds"] = [
                [r.as_dict() for i, r in runs if i == index] for index in range(len(plan))
            ]
        if len(targets) > 1:
            out["comparison"] = comparison.document()
        text = json.dumps(out, indent=2)
        if args.save:
            args.save.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(render(results, info), end="")
        if len(targets) > 1:
            print(comparison.render(), end="")
    return 0 if all(r.complete for _, r in runs) else 1
