"""The benchmark runs end to end on tiny numbers and accounts for every message.

No timing is asserted: the machine may be busy with anything else.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatserver.bench.runner import percentiles, slices, split, spread
from chatserver.bench.wsclient import _masked_frame

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
