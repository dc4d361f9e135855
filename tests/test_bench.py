"""The benchmark runs end to end on tiny numbers and accounts for every message.

No timing is asserted: the machine may be busy with anything else.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatserver.bench.cli import parser, scenarios
from chatserver.bench.compare import Comparison, median_result
from chatserver.bench.loadgen import node_of
from chatserver.bench.population import Population
from chatserver.bench.processes import BENCH_ACTIONS, BENCH_STORAGE, unthrottled_options
from chatserver.bench.runner import Result, percentiles, slices, split, spread
from chatserver.bench.wsclient import _masked_frame
from tests.processes import ServerProcess

FIGURES = (
    "messages_per_second",
    "pushes_per_second",
    "reply_ms",
    "delivery_ms",
    "server_cpu_us_per_message",
    "server_cpu_us_per_push",
    "generator_cpu_us_per_message",
    "server_rss_connected_mb",
    "rss_per_connection_kb",
)


def bench(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m chatserver.bench ARGS`` as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "chatserver.bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def bench_json(*args: str) -> dict:
    completed = bench("--json", *args)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.fixture(scope="module")
def quick_run():
    return bench_json(
        "--quick",
        "--users",
        "20",
        "--messages",
        "300",
        "--duration",
        "1",
        "--rate",
        "200",
        "--storm-clients",
        "30",
        "--burst",
        "10",
    )


def test_every_scenario_reports_its_figures(quick_run):
    results = quick_run["results"]
    assert [r["kind"] for r in results] == ["direct", "group", "open", "storm"]
    assert quick_run["machine"]["clock_tick_hz"] > 0
    for result in results[:3]:
        for figure in FIGURES:
            assert result[figure] is not None, (result["scenario"], figure)
        assert set(result["delivery_ms"]) >= {"p50", "p99", "max"}
        assert result["server_gc"] is not None
    storm = results[3]
    assert storm["connections"] == 30
    assert storm["connect_seconds"] > 0
    assert storm["server_cpu_us_per_connection"] is not None


def test_every_message_is_acknowledged_and_delivered(quick_run):
    for result in quick_run["results"]:
        assert result["complete"], result
        assert result["errors"] == 0
        assert result["acked"] == result["sent"]
        assert result["deliveries"] == result["expected_deliveries"]
        assert result["echoes"] == result["acked"]
    direct, group, open_loop = quick_run["results"][:3]
    assert direct["acked"] == 300
    assert direct["pushes"] == 2 * 300  # the recipient's copy and the sender's
    assert group["pushes"] == 300 * 20  # one group of all 20 users
    assert open_loop["acked"] == 200  # 200 messages/s for 1 s


def test_bad_options_are_refused():
    completed = bench("--users", "1")
    assert completed.returncode == 2
    assert "at least 2" in completed.stderr


def test_client_frames_are_masked_and_unmask_to_the_payload():
    payload = b'{"type":"create","id":1,"data":{"to":"u1"}}' * 5
    frame = _masked_frame(0x1, payload)
    assert frame[0] == 0x81
    assert frame[1] == 0x80 | 126
    length = int.from_bytes(frame[2:4], "big")
    key, body = frame[4:8], frame[8:]
    assert length == len(body) == len(payload)
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == payload


def test_nodes_in_network_namespaces_or_on_loopback_where_there_are_none():
    """As root, each node runs in a namespace of its own, which the bench
    removes; elsewhere the bench says so and runs them on 127.0.0.1."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatserver.bench",
            "--json",
            *("--nodes", "2", "--netns", "--scenario", "group", "--users", "10"),
            *("--group-size", "10", "--messages", "50", "--duration", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    [result] = json.loads(out)["results"]
    assert result["complete"], result
    assert result["publishes_per_message"] == 1.0
    if "no network namespaces" in err:
        assert result["target"] == "chatserver 2 nodes"
    else:
        assert result["target"] == "chatserver 2 nodes netns"
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"chatbench{process.pid % 100_000}n" not in left


@pytest.mark.parametrize("nodes", [1, 2, 3, 5, 10])
def test_users_and_senders_are_spread_evenly_over_the_nodes(nodes):
    users = [node_of(i, nodes) for i in range(1000)]
    senders = [node_of(i, nodes) for i in spread(100, 1000)]
    for node in range(nodes):
        assert abs(users.count(node) - 1000 / nodes) <= nodes
        assert abs(senders.count(node) - 100 / nodes) <= 1 + nodes / 2


def test_work_is_split_exactly():
    assert slices(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert sum(split(1001, [3, 0, 5])) == 1001
    assert split(10, [1, 0, 1]) == [5, 0, 5]
    assert spread(3, 100) == [0, 33, 66]
    assert spread(10, 4) == [0, 1, 2, 3]
    stats = percentiles([1_000_000 * i for i in range(1, 101)])
    assert stats["p50"] == 51 and stats["max"] == 100 and stats["count"] == 100


def test_two_workers_deliver_every_message():
    run = bench_json(
        "--workers",
        "2",
        "--scenario",
        "direct",
        "--users",
        "20",
        "--messages",
        "300",
        "--duration",
        "1",
    )
    [result] = run["results"]
    assert result["target"] == "chatserver x2"
    assert result["acked"] == result["sent"] == 300
    assert result["deliveries"] == result["expected_deliveries"]
    # The CPU is every worker's (each shown), not the idle supervisor's alone.
    assert len(result["node_cpu_seconds"]) == 2
    assert result["server_cpu_seconds"] >= sum(result["node_cpu_seconds"])
    assert result["server_cpu_us_per_message"] is not None
    assert result["redis_cpu_seconds"] is not None
    assert result["redis_publishes"] is not None


def test_separate_nodes_deliver_across_nodes_and_report_each_nodes_cpu():
    run = bench_json(
        "--nodes",
        "3",
        "--scenario",
        "direct",
        "--scenario",
        "group",
        "--users",
        "20",
        "--group-size",
        "20",
        "--messages",
        "120",
        "--duration",
        "1",
    )
    direct, group = run["results"]
    for result in (direct, group):
        assert result["target"] == "chatserver 3 nodes"
        assert result["complete"], result
        assert result["acked"] == result["sent"] == 120
        # The users are spread over the nodes: each node's clients got deliveries.
        assert sum(result["node_deliveries"]) == result["deliveries"]
        assert all(result["node_deliveries"])
        assert len(result["node_cpu_seconds"]) == len(result["node_cpu_us_per_delivery"]) == 3
        assert result["server_cpu_us_per_delivery"] is not None
        assert result["redis_cpu_seconds"] is not None
    # A direct message crosses nodes unless its two users share one.
    assert 0 < direct["redis_publishes"] < direct["acked"]
    # The group has members on all three nodes: two publishes per message,
    # one per other node, whatever the group's size.
    assert group["redis_publishes"] == 2 * group["acked"]
    assert group["publishes_per_message"] == 2.0
    assert group["deliveries"] == 120 * 19


# -- --compare: our server side by side with another ------------------------


def bench_server(users: int) -> ServerProcess:
    """Our server serving the bench's population, started by hand as a user
    starts another server to compare with."""
    return ServerProcess(
        [
            sys.executable,
            "-m",
            "chatserver",
            "--endpoint",
            "tcp:0:interface=127.0.0.1",
            "--storage",
            BENCH_STORAGE,
            "--open-actions",
            BENCH_ACTIONS,
            *unthrottled_options(),
        ],
        env=Population(users, 50).environment(),
    )


@pytest.fixture(scope="module")
def compare_run():
    """Our server against a second instance of it given by URL and pid, and a
    third that the bench starts for each scenario (without the bench's
    garbage-collection actions, as another implementation may lack them)."""
    other = bench_server(20)
    command = " ".join(
        [
            sys.executable,
            "-m chatserver --endpoint tcp:{port}:interface=127.0.0.1",
            f"--storage {BENCH_STORAGE}",
            *unthrottled_options(),
        ]
    )
    try:
        yield bench_json(
            "--compare",
            f"other={other.url}/,{other.process.pid}",
            "--compare-command",
            f"again={command}",
            "--suite",
            "standard",
            "--scenario",
            "direct",
            "--scenario",
            "storm",
            "--users",
            "20",
            "--messages",
            "200",
            "--duration",
            "1",
            "--storm-clients",
            "20",
            "--burst",
            "10",
            "--rounds",
            "2",
        )
    finally:
        other.stop()


def test_compare_runs_every_scenario_against_every_server(compare_run):
    servers = ["chatserver", "other", "again"]
    assert compare_run["comparison"]["servers"] == servers
    assert [(r["target"], r["kind"]) for r in compare_run["results"]] == [
        (server, kind) for kind in ("direct", "storm") for server in servers
    ]
    for result in compare_run["results"]:
        assert result["complete"], result
        assert result["rounds"] == 2
        assert result["server_cpu_seconds"] is not None
        assert result["server_rss_connected_mb"] is not None
    # Each round's own figures are kept: 2 rounds x 3 servers per scenario.
    assert [len(runs) for runs in compare_run["rounds"]] == [6, 6]
    direct = compare_run["results"][0]
    assert direct["acked"] == 200 and direct["deliveries"] == direct["expected_deliveries"]


def test_compare_prints_each_servers_figure_and_our_ratio_to_it(compare_run):
    rows = compare_run["comparison"]["rows"]
    figures = [(row["scenario"], row["figure"]) for row in rows]
    assert ("direct, 20 users, closed loop, 2 in flight each", "server CPU µs/msg") in figures
    assert ("20 clients connecting in bursts of 10", "s until all authorized") in figures
    for row in rows:
        values, ratios = row["values"], row["ratios"]
        assert set(values) == {"chatserver", "other", "again"}
        for other in ("other", "again"):
            if values["chatserver"] is not None and values[other]:
                assert ratios[other] == pytest.approx(values["chatserver"] / values[other])


def test_compare_asks_for_a_collection_only_where_one_is_offered(compare_run):
    by_server = {r["target"]: r for r in compare_run["results"] if r["kind"] == "direct"}
    assert by_server["other"]["server_gc"] is not None
    assert by_server["again"]["server_gc"] is None


def test_the_seed_suite_is_the_loads_of_the_comparison():
    args = parser().parse_args(["--compare", "seed=ws://127.0.0.1:8080/,1"])
    assert [s.title for s in scenarios(args)] == [
        "direct, 100 users, fixed 5,000 msg/s",
        "direct, 100 users, closed loop, 10 in flight each",
        "direct, 5,000 users, fixed 5,000 msg/s",
        "group of 50, 1,000 users, fixed 500 msg/s",
        "5,000 clients connecting in bursts of 100",
        "direct, 1,000 users, fixed 2,000 msg/s",
    ]
    quick = parser().parse_args(["--compare", "ws://127.0.0.1:8080/", "--quick"])
    assert max(s.users for s in scenarios(quick)) == 1000
    standard = parser().parse_args(["--compare", "ws://127.0.0.1:8080/", "--suite", "standard"])
    assert [s.kind for s in scenarios(standard)] == ["direct"] * 3 + ["group", "open", "storm"]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--compare", "127.0.0.1:8080"], "expected [NAME=]ws://HOST:PORT/[,PID]"),
        (
            ["--compare", "ws://127.0.0.1:1/", "--compare", "ws://127.0.0.1:2/"],
            "two servers would be called 'compare'",
        ),
        (
            [
                *("--compare", "a=ws://127.0.0.1:1/", "--compare", "b=ws://127.0.0.1:2/"),
                *("--compare-pid", "1"),
            ],
            "--compare-pid and --compare-name go with exactly one --compare",
        ),
        (["--compare-command", "seed=node run.js"], "must say where {port} goes"),
        (["--compare-command", "node run.js --port {port}"], "expected NAME=COMMAND"),
        (["--compare", "ws://127.0.0.1:1/,999999999"], "no process 999999999"),
    ],
)
def test_bad_compare_options_are_refused_in_one_line(args, complaint):
    completed = bench(*args)
    assert completed.returncode == 2
    assert complaint in completed.stderr
    assert "Traceback" not in completed.stderr


def test_medians_and_ratios():
    def result(target: str, cpu: float | None, p99: float, complete: bool = True) -> Result:
        return Result(
            target=target,
            scenario="open 10/s",
            kind="open",
            users=2,
            rate=10.0,
            acked=10,
            server_cpu_us_per_message=cpu,
            delivery_ms={"p50": p99 / 2, "p99": p99},
            complete=complete,
            problems=[] if complete else ["lost one"],
        )

    ours = median_result([result("us", 30.0, 1.0), result("us", 10.0, 3.0), result("us", 20.0, 2)])
    assert ours.server_cpu_us_per_message == 20.0
    assert ours.delivery_ms == {"p50": 1.0, "p99": 2.0}
    assert ours.rounds == 3 and ours.complete
    theirs = median_result([result("them", 40.0, 4.0), result("them", None, 4.0, False)])
    assert theirs.server_cpu_us_per_message == 40.0  # a round without the figure is left out
    assert not theirs.complete and theirs.problems == ["round 2: lost one"]
    comparison = Comparison(["us", "them"], [[ours, theirs]], rounds=3)
    cpu, p99 = comparison.lines()
    assert (cpu["figure"], cpu["values"], cpu["ratios"]) == (
        "server CPU µs/msg",
        {"us": 20.0, "them": 40.0},
        {"them": 0.5},
    )
    assert p99["ratios"] == {"them": 0.5}
    assert "0.50x" in comparison.render()
