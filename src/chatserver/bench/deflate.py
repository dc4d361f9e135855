"""What would permessage-deflate (RFC 7692) save and cost on chat traffic?

    python -m chatserver.bench.deflate [--messages 4000] [--connections 200] [--json]

The server does not offer the extension. This measures what it would do if
it did, with Autobahn's own :class:`PerMessageDeflate` (the code the server
would run), on a seeded stream of direct chat messages (a short text, from a
vocabulary of common chat words), each as the wire carries it: the sender's
``create`` request, the reply, and the recipient's ``chatMessage`` push, all
encoded by :mod:`chatserver.wire`. Two users take turns, so each connection's
compression context sees replies and pushes alternately. Figures:

- bytes on the wire per message, client to server and server to client
  (frame headers included, and the client's mask);
- server CPU per message (``time.process_time``, best of five passes):
  inflating the request, deflating the reply and the push;
- server CPU to deflate one push for one more recipient: each connection has
  a context of its own, so a group push, framed once today, would have to be
  compressed once per recipient;
- RSS per connection holding a context, once it has carried
  ``--per-connection`` messages (``VmRSS``, Linux only).

Modes: ``off``; ``context takeover`` (what Autobahn accepts when a browser
offers the extension with no parameters: one context per direction for the
connection's life); ``no context takeover`` (a fresh context per message).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from autobahn.websocket.compress_deflate import PerMessageDeflate

from chatserver.handlers.chat import Timestamps
from chatserver.wire import encode, push, reply

WORDS = (
    "the a to and I you it is that of in we for on this be have are with was so not but at can "
    "what just do my me all your if get up about out know like will one time there now good ok "
    "yes no see go think meeting tomorrow today lunch call later thanks sure great sounds send "
    "file review code deploy fixed bug release morning tonight weekend project team update "
    "status question answer help done working"
).split()
WORDS_PER_MESSAGE = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30)
START = 1_795_000_000.0  # when the generated conversation starts (seconds since 1970)
MODES = ("off", "context takeover", "no context takeover")
# The server's limit on what a message may inflate to: --max-frame-bytes' default.
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass
class Figures:
    mode: str
    up_bytes_per_message: float
    down_bytes_per_message: float
    server_cpu_us_per_message: float
    server_cpu_us_per_push_recipient: float
    rss_kb_per_connection: float | None


#: One direct message's payloads: the request, the reply and the push.
Exchange = tuple[bytes, bytes, bytes]


def chat_traffic(count: int, seed: int = 1) -> list[Exchange]:
    """``count`` direct messages as (request, reply, push) frames' payloads."""
    rng = random.Random(seed)
    clock = Timestamps()
    frames = []
    for n in range(1, count + 1):
        words = [rng.choice(WORDS) for _ in range(rng.choice(WORDS_PER_MESSAGE))]
        text = " ".join(words).capitalize() + rng.choice((".", "?", "!", ""))
        data = {"to": f"u{rng.randrange(10_000)}", "text": text}
        stored = {
            "_id": str(100_000 + n),
            **data,
            "from": f"u{rng.randrange(10_000)}",
            "createdAt": clock.format(START + n * 0.37),
        }
        frames.append(
            (
                encode({"type": "create", "id": n, "data": data}),
                reply(n, stored),
                push("chatMessage", stored),
            )
        )
    return frames


def frame_bytes(payload_length: int, masked: bool = False) -> int:
    header = 2 if payload_length < 126 else 4 if payload_length < 65536 else 10
    return header + payload_length + (4 if masked else 0)


class _Context:
    """One connection's compression, both ends: the server's and the client's."""

    def __init__(self, mode: str) -> None:
        fresh = mode == "no context takeover"
        self.server = PerMessageDeflate(True, fresh, fresh, 0, 0, 0, MAX_MESSAGE_BYTES)
        self.client: PerMessageDeflate | None = PerMessageDeflate(False, fresh, fresh, 0, 0, 0)

    @staticmethod
    def deflate(side: PerMessageDeflate, payload: bytes) -> bytes:
        side.start_compress_message()
        compressed: bytes = side.compress_message_data(payload) + side.end_compress_message()
        return compressed

    def deflate_as_client(self, payload: bytes) -> bytes:
        """``payload`` compressed as this connection's client sends it."""
        assert self.client is not None, "the client's half was dropped"
        return self.deflate(self.client, payload)

    def inflate(self, payload: bytes) -> bytes:
        self.server.start_decompress_message()
        data: bytes = self.server.decompress_message_data(payload)
        self.server.end_decompress_message()
        return data


def _pairs(traffic: list[Exchange]) -> Iterator[tuple[int, int, Exchange]]:
    for n, frames in enumerate(traffic):
        yield n % 2, 1 - n % 2, frames


def measure_messages(mode: str, traffic: list[Exchange]) -> tuple[float, float, float]:
    """Bytes each way and server CPU per message, for two users taking turns."""
    if mode == "off":
        up = sum(frame_bytes(len(r), masked=True) for r, _, _ in traffic)
        down = sum(frame_bytes(len(a)) + frame_bytes(len(p)) for _, a, p in traffic)
        return up / len(traffic), down / len(traffic), 0.0
    # What the clients send, compressed ahead: only the server's work is timed.
    contexts = [_Context(mode), _Context(mode)]
    sent = [contexts[s].deflate_as_client(r) for s, _, (r, _, _) in _pairs(traffic)]
    up = sum(frame_bytes(len(z), masked=True) for z in sent)
    down = 0
    best = float("inf")
    for _ in range(5):
        contexts = [_Context(mode), _Context(mode)]
        sent = [contexts[s].deflate_as_client(r) for s, _, (r, _, _) in _pairs(traffic)]
        out = []
        started = time.process_time()
        for (sender, recipient, (_, answer, pushed)), compressed in zip(
            _pairs(traffic), sent, strict=True
        ):
            contexts[sender].inflate(compressed)
            out.append(_Context.deflate(contexts[sender].server, answer))
            out.append(_Context.deflate(contexts[recipient].server, pushed))
        best = min(best, time.process_time() - started)
        down = sum(frame_bytes(len(z)) for z in out)
    return up / len(traffic), down / len(traffic), best / len(traffic) * 1e6


def measure_push(mode: str, traffic: list[Exchange], recipients: int) -> float:
    """Server CPU to deflate one push for one recipient of a group."""
    if mode == "off":
        return 0.0
    pushes = [p for _, _, p in traffic[:200]]
    best = float("inf")
    for _ in range(5):
        contexts = [_Context(mode) for _ in range(recipients)]
        started = time.process_time()
        for payload in pushes:
            for context in contexts:
                _Context.deflate(context.server, payload)
        best = min(best, time.process_time() - started)
    return best / (len(pushes) * recipients) * 1e6


def _rss_kb() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def measure_memory(
    mode: str, traffic: list[Exchange], connections: int, per_connection: int
) -> float | None:
    """RSS per connection holding a compression context (the server's side)."""
    if mode == "off":
        return 0.0
    gc.collect()
    before = _rss_kb()
    kept = []
    for c in range(connections):
        context = _Context(mode)
        for n in range(per_connection):
            request, answer, _ = traffic[(c * 31 + n) % len(traffic)]
            context.inflate(context.deflate_as_client(request))
            _Context.deflate(context.server, answer)
        context.client = None  # the client's half lives elsewhere
        kept.append(context)
    gc.collect()
    after = _rss_kb()
    if before is None or after is None:
        return None
    return (after - before) / connections


def run(messages: int, connections: int, per_connection: int) -> list[Figures]:
    traffic = chat_traffic(messages)
    for _, _, pushed in traffic[:50]:  # the measured code must give back what it was given
        context = _Context("context takeover")
        assert context.inflate(context.deflate_as_client(pushed)) == pushed
    results = []
    for mode in MODES:
        up, down, cpu = measure_messages(mode, traffic)
        results.append(
            Figures(
                mode,
                up,
                down,
                cpu,
                measure_push(mode, traffic, recipients=50),
                measure_memory(mode, traffic, connections, per_connection),
            )
        )
    return results


def table(results: list[Figures], traffic: list[Exchange]) -> str:
    text = sum(len(t) for t in (json.loads(r)["data"]["text"] for r, _, _ in traffic))
    off = results[0]
    lines = [
        f"permessage-deflate on {len(traffic):,} direct chat messages "
        f"(texts of {text / len(traffic):.0f} characters on average)",
        "",
        f"{'mode':<20} {'up B/msg':>12} {'down B/msg':>12} {'srv µs/msg':>11} "
        f"{'µs/push/recipient':>18} {'KB RSS/conn':>12}",
    ]

    def change(r: Figures, value: float, base: float) -> str:
        return f"{value:.0f}" if r is off else f"{value:.0f} ({value / base - 1:+.0%})"

    for r in results:
        rss = "n/a" if r.rss_kb_per_connection is None else f"{r.rss_kb_per_connection:.0f}"
        lines.append(
            f"{r.mode:<20} {change(r, r.up_bytes_per_message, off.up_bytes_per_message):>12} "
            f"{change(r, r.down_bytes_per_message, off.down_bytes_per_message):>12} "
            f"{r.server_cpu_us_per_message:>11.1f} {r.server_cpu_us_per_push_recipient:>18.1f} "
            f"{rss:>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000, help="direct messages (4000)")
    parser.add_argument(
        "--connections", type=int, default=200, help="connections for the RSS figure (200)"
    )
    parser.add_argument(
        "--per-connection", type=int, default=400, help="messages each carries first (400)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.messages, args.connections, args.per_connection) < 1:
        parser.error("--messages, --connections and --per-connection must be at least 1")
    results = run(args.messages, args.connections, args.per_connection)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(table(results, chat_traffic(args.messages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
