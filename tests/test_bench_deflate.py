"""The permessage-deflate measurement runs on tiny numbers and its figures
hang together. No timing is asserted: the machine may be busy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from autobahn.exception import PayloadExceededError

from chatserver.bench.deflate import MAX_MESSAGE_BYTES, MODES, _Context, chat_traffic, frame_bytes


def test_the_figures_of_every_mode():
    done = subprocess.run(
        [
            *(sys.executable, "-m", "chatserver.bench.deflate", "--json"),
            *("--messages", "200", "--connections", "5", "--per-connection", "20"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = {f["mode"]: f for f in json.loads(done.stdout)}
    assert list(figures) == list(MODES)
    off, kept, fresh = (figures[mode] for mode in MODES)
    assert off["server_cpu_us_per_message"] == 0
    for compressed in (kept, fresh):
        assert compressed["up_bytes_per_message"] < off["up_bytes_per_message"]
        assert compressed["down_bytes_per_message"] < off["down_bytes_per_message"]
        assert compressed["server_cpu_us_per_message"] > 0
        assert compressed["server_cpu_us_per_push_recipient"] > 0
    # A context carried from message to message compresses better than a fresh one.
    assert kept["down_bytes_per_message"] < fresh["down_bytes_per_message"]


def test_the_traffic_is_what_the_wire_carries():
    request, reply, push = (json.loads(frame) for frame in chat_traffic(3)[2])
    assert request["type"] == "create" and request["id"] == 3
    assert reply["id"] == 3 and reply["data"] == push["data"]
    assert push["type"] == "chatMessage"
    assert push["data"]["text"] == request["data"]["text"]
    assert (frame_bytes(125), frame_bytes(126), frame_bytes(70_000, masked=True)) == (
        127,
        130,
        70_014,
    )


def test_the_measured_server_keeps_the_inflate_limit():
    # As the server would: nothing inflates past --max-frame-bytes.
    context = _Context("context takeover")
    bomb = _Context.deflate(context.client, b"x" * (MAX_MESSAGE_BYTES + 1))
    assert len(bomb) < 1000
    with pytest.raises(PayloadExceededError):
        context.inflate(bomb)
