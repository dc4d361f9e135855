"""The load generator: a process that owns a slice of the users' connections
and runs the phases the orchestrator (:mod:`chatserver.bench.runner`) asks for.

It talks to the orchestrator over a ``multiprocessing`` pipe, one command (a
dict with ``op``) at a time, answering each with a dict. Its event loop keeps
running between commands, so pushes that arrive while the orchestrator thinks
are timestamped when they arrive, not when the next command comes.

Latency is measured from ``time.perf_counter_ns()`` stamps carried in each
message (``{"to": ..., "t": ns, "k": seq}``): the reply and the pushes carry
the stored message, so the receiver subtracts. ``perf_counter_ns`` reads
CLOCK_MONOTONIC, which all processes of a Linux machine share, so a message
sent by one generator process and delivered to another is still measured
correctly.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from array import array
from collections.abc import Callable
from multiprocessing.connection import Connection
from random import randrange
from typing import Any

import orjson

from chatserver.bench import sysinfo
from chatserver.bench.population import Population, credentials, group_id, user_id
from chatserver.bench.wsclient import WebSocketClient, parse_url

perf_counter_ns = time.perf_counter_ns
loads = orjson.loads
dumps = orjson.dumps

# The open loop's shortest sleep.
TICK_SECONDS = 0.001
# How many first errors a phase reports word for word.
MAX_REPORTED_ERRORS = 5


def node_of(index: int, nodes: int) -> int:
    """The node (of ``nodes``) that user ``index`` connects to.

    Every node gets as many users, and the closed loop's senders (every
    tenth user with 1,000 users and 100 senders) are spread over the nodes
    too, which ``index % nodes`` would not do with 2, 5 or 10 nodes.
    """
    return (index + index // nodes) % nodes


class PhaseFailed(Exception):
    """A phase could not complete (a connection failed, a deadline passed)."""


class _Phase:
    """Frames of a phase go here; the default ignores them."""

    def text_received(self, client: WebSocketClient, payload: bytes) -> None:
        pass

    def connection_ended(self, client: WebSocketClient, error: Exception | None) -> None:
        pass


class _Authorizing(_Phase):
    """Counts ``authorize`` replies of one burst."""

    def __init__(self, expected: int) -> None:
        self.remaining = expected
        self.answered: set[int] = set()
        self.failures: list[str] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if expected == 0:
            self.done.set_result(None)

    def text_received(self, client: WebSocketClient, payload: bytes) -> None:
        frame = loads(payload)
        if "id" not in frame:
            return  # a push: someone else's traffic
        data = frame.get("data")
        if frame.get("error") or not isinstance(data, dict):
            self._fail(client, f"authorize of {user_id(client.index)} failed: {frame!r}")
            return
        authorized_as = str(data.get("id", data.get("_id")))
        if authorized_as != user_id(client.index):
            self._fail(client, f"{user_id(client.index)} was authorized as {authorized_as!r}")
            return
        client.user_id = authorized_as
        self._count(client)

    def connection_ended(self, client: WebSocketClient, error: Exception | None) -> None:
        if client.user_id is None and client.opened.done():
            self._fail(client, f"{user_id(client.index)} closed before authorizing: {error}")

    def _fail(self, client: WebSocketClient, why: str) -> None:
        if client.index not in self.answered and len(self.failures) < MAX_REPORTED_ERRORS:
            self.failures.append(why)
        self._count(client)

    def _count(self, client: WebSocketClient) -> None:
        # Once per client, whether it answered, failed, or both.
        if client.index in self.answered:
            return
        self.answered.add(client.index)
        self.remaining -= 1
        if self.remaining <= 0 and not self.done.done():
            self.done.set_result(None)


class _Traffic(_Phase):
    """Sends ``create`` requests and counts replies and pushes.

    Closed loop: each sender keeps ``inflight`` requests outstanding and sends
    the next one from the reply handler, until the message budget or the
    deadline runs out. Open loop (``paced``): a timer task sends at a fixed
    rate from random senders, however many requests are outstanding; direct
    or group messages alike.
    """

    def __init__(self, command: dict[str, Any]) -> None:
        self.kind: str = command["kind"]
        self.paced: bool = command.get("paced", self.kind == "open")
        population = Population(command["users"], command["group_size"])
        self.population = population
        self.budget: int = command["messages"]
        self.inflight: int = command.get("inflight", 1)
        self.deadline_ns = perf_counter_ns() + int(command["duration"] * 1e9)
        self.user_ids = [user_id(i) for i in range(population.users)]
        self.group_ids = [group_id(k) for k in range(population.groups)]
        # owner[i]: the generator process holding user i, for telling each
        # process how many pushes to wait for.
        self.owner = command["owner"]
        self.workers = max(self.owner) + 1 if self.owner else 1
        self.sent_to = [0] * self.workers
        # Deliveries to the clients of each node (see node_of).
        self.nodes: int = command.get("nodes", 1)
        self.delivered_by_node = [0] * self.nodes
        self.group_counts = self._group_counts() if self.kind == "group" else []
        self.sent = self.acked = self.errors = self.echoes = self.delivered = self.other = 0
        self.outstanding = 0
        self.seq = 0
        self.error_samples: list[str] = []
        self.reply_ns = array("q")
        self.delivery_ns = array("q")
        self.max_lag_ns = 0
        loop = asyncio.get_running_loop()
        self.sending_done: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self.expected_deliveries: int | None = None
        self.expected_echoes = 0
        self.stopped_sending = False

    def _group_counts(self) -> list[list[int]]:
        counts = []
        for k in range(self.population.groups):
            per_worker = [0] * self.workers
            for member in self.population.members(k):
                per_worker[self.owner[member]] += 1
            counts.append(per_worker)
        return counts

    # -- sending ----------------------------------------------------------

    def send_one(self, client: WebSocketClient) -> None:
        """Send one message from ``client``: to a random other user, or to
        its group. The caller has checked the budget."""
        self.budget -= 1
        self.seq += 1
        sender = client.index
        if self.kind == "group":
            group = self.population.group_of(sender)
            assert group is not None, "a group load sends only from group members"
            counts = self.group_counts[group]
            for worker, count in enumerate(counts):
                self.sent_to[worker] += count
            # The sender's own copy is an echo, not a delivery.
            self.sent_to[self.owner[sender]] -= 1
            body = {"to": self.group_ids[group], "isGroup": True}
        else:
            recipient = randrange(self.population.users - 1)
            if recipient >= sender:
                recipient += 1
            self.sent_to[self.owner[recipient]] += 1
            body = {"to": self.user_ids[recipient]}
        body["k"] = self.seq
        body["t"] = perf_counter_ns()
        client.outstanding += 1
        self.outstanding += 1
        self.sent += 1
        client.send_text(dumps({"type": "create", "id": self.seq, "data": body}))

    def start_closed_loop(self, senders: list[WebSocketClient]) -> None:
        for _ in range(self.inflight):
            for client in senders:
                if self.budget <= 0:
                    break
                self.send_one(client)
        self._maybe_done_sending()

    async def open_loop(self, senders: list[WebSocketClient], rate: float) -> None:
        """Send ``budget`` messages at ``rate`` per second from random senders."""
        total = self.budget
        start = perf_counter_ns()
        interval_ns = 1e9 / rate
        while self.sent < total:
            now = perf_counter_ns()
            if now > self.deadline_ns:
                break
            due = min(total, int((now - start) / interval_ns) + 1)
            if due > self.sent:
                # How late the oldest message due now is: the generator's own lag.
                lag = now - (start + int(self.sent * interval_ns))
                if lag > self.max_lag_ns:
                    self.max_lag_ns = lag
            while self.sent < due:
                self.send_one(senders[randrange(len(senders))])
            next_due = start + self.sent * interval_ns
            # Event-loop timers have millisecond resolution: sleeping less
            # would spin. Whatever falls due meanwhile goes out on waking.
            await asyncio.sleep(max(TICK_SECONDS, (next_due - perf_counter_ns()) / 1e9))
        self.budget = 0
        self._maybe_done_sending()

    def _maybe_done_sending(self) -> None:
        if self.outstanding == 0 and (self.budget <= 0 or self.stopped_sending):
            if not self.sending_done.done():
                self.sending_done.set_result(None)

    # -- receiving --------------------------------------------------------

    def text_received(self, client: WebSocketClient, payload: bytes) -> None:
        now = perf_counter_ns()
        frame = loads(payload)
        data = frame.get("data")
        if "id" in frame:
            client.outstanding -= 1
            self.outstanding -= 1
            if frame.get("error") or type(data) is not dict:
                self.errors += 1
                if len(self.error_samples) < MAX_REPORTED_ERRORS:
                    self.error_samples.append(repr(frame))
            else:
                self.acked += 1
                self.reply_ns.append(now - data["t"])
            if not self.paced and self.budget > 0:
                if now < self.deadline_ns:
                    self.send_one(client)
                else:
                    self.stopped_sending = True
            if self.outstanding == 0:
                self._maybe_done_sending()
            return
        if frame.get("type") != "chatMessage" or type(data) is not dict:
            self.other += 1
            return
        if data.get("from") == client.user_id:
            self.echoes += 1
        else:
            self.delivered += 1
            self.delivered_by_node[node_of(client.index, self.nodes)] += 1
            self.delivery_ns.append(now - data["t"])
        if self.expected_deliveries is not None:
            self._maybe_drained()

    def _maybe_drained(self) -> None:
        expected = self.expected_deliveries
        if (
            expected is not None
            and self.delivered >= expected
            and self.echoes >= self.expected_echoes
            and not self.drained.done()
        ):
            self.drained.set_result(None)

    def expect(self, deliveries: int, echoes: int) -> None:
        """Wait (through L{drained}) for this many deliveries and echoes."""
        self.expected_deliveries = deliveries
        self.expected_echoes = echoes
        self._maybe_drained()


class Generator:
    """One load-generator process's connections and phases."""

    def __init__(self, pipe: Connection, worker: int) -> None:
        self.pipe = pipe
        self.worker = worker
        self.idle = _Phase()
        self.clients: list[WebSocketClient] = []
        self.traffic: _Traffic | None = None
        self.cpu_start = 0.0
        self.exit: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- commands ---------------------------------------------------------

    def read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read commands in a thread of their own, since the pipe must stay
        blocking (answers can be megabytes), and hand each to the loop.

        The loop's thread sends the answers meanwhile: a Connection's send
        and recv share only the file descriptor, which a socket allows."""
        while True:
            try:
                command = self.pipe.recv()
            except (EOFError, OSError):
                # The orchestrator is gone: stop rather than linger.
                loop.call_soon_threadsafe(self._stop)
                return
            loop.call_soon_threadsafe(self._start, command)
            if command["op"] == "exit":
                return

    def _start(self, command: dict[str, Any]) -> None:
        asyncio.get_running_loop().create_task(self._run(command))

    def _stop(self) -> None:
        if not self.exit.done():
            self.exit.set_result(None)

    async def _run(self, command: dict[str, Any]) -> None:
        handler: Callable[[dict[str, Any]], Any] = getattr(self, "op_" + command["op"])
        try:
            answer = {"ok": True, **(await handler(command))}
        except Exception as e:
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        try:
            self.pipe.send(answer)
        except OSError:
            self._stop()

    async def op_exit(self, command: dict[str, Any]) -> dict[str, Any]:
        await self.op_close(command)
        self._stop()
        return {}

    async def _open(self, url: str, index: int) -> WebSocketClient:
        host, port, path = parse_url(url)
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: WebSocketClient(self.idle, f"{host}:{port}", path, index), host, port
        )
        return await client.opened

    async def op_connect(self, command: dict[str, Any]) -> dict[str, Any]:
        """Connect and authorize users ``first`` … ``first+count-1``, ``burst``
        at a time: a burst starts when the one before is authorized. User
        ``i`` connects to ``urls[node_of(i, len(urls))]`` (one URL per node)."""
        urls, first, count, burst = (command[k] for k in ("urls", "first", "count", "burst"))
        timeout = command["timeout"]
        started = perf_counter_ns()
        slowest_burst = 0
        failures: list[str] = []
        failed = 0
        for start in range(first, first + count, burst):
            burst_started = perf_counter_ns()
            indices = range(start, min(start + burst, first + count))
            opened = await asyncio.wait_for(
                asyncio.gather(
                    *(self._open(urls[node_of(i, len(urls))], i) for i in indices),
                    return_exceptions=True,
                ),
                timeout,
            )
            clients = []
            for index, result in zip(indices, opened, strict=True):
                if isinstance(result, BaseException):
                    failed += 1
                    if len(failures) < MAX_REPORTED_ERRORS:
                        failures.append(f"{user_id(index)}: {type(result).__name__}: {result}")
                else:
                    clients.append(result)
            phase = _Authorizing(len(clients))
            for client in clients:
                client.sink = phase
                client.send_text(
                    dumps({"type": "authorize", "id": 1, "data": credentials(client.index)})
                )
            await asyncio.wait_for(asyncio.shield(phase.done), timeout)
            for client in clients:
                client.sink = self.idle
            failed += len(phase.failures) + max(0, phase.remaining)
            failures.extend(phase.failures[: MAX_REPORTED_ERRORS - len(failures)])
            self.clients.extend(c for c in clients if c.user_id is not None)
            slowest_burst = max(slowest_burst, perf_counter_ns() - burst_started)
        return {
            "seconds": (perf_counter_ns() - started) / 1e9,
            "slowest_burst_seconds": slowest_burst / 1e9,
            "authorized": sum(1 for c in self.clients if first <= c.index < first + count),
            "failed": failed,
            "failures": failures,
        }

    async def op_ask(self, command: dict[str, Any]) -> dict[str, Any]:
        """Call one of the bench's server-side actions (ours only: they are
        open actions of L{chatserver.bench.storage}) over a short-lived,
        unauthorized connection, closed at once so that it neither counts as
        a measured connection nor outlives the server's authorize deadline."""
        control = await asyncio.wait_for(self._open(command["url"], -1), 10)
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        class _Answer(_Phase):
            def text_received(self, client: WebSocketClient, payload: bytes) -> None:
                if not answered.done():
                    answered.set_result(payload)

            def connection_ended(self, client: WebSocketClient, error: Exception | None) -> None:
                # A server without the action may close rather than answer.
                if not answered.done():
                    answered.set_exception(PhaseFailed(f"{command['action']}: closed unanswered"))

        control.sink = _Answer()
        control.send_text(dumps({"type": command["action"], "id": 1, "data": command["data"]}))
        try:
            frame = loads(await asyncio.wait_for(answered, command.get("timeout", 30)))
        finally:
            control.close()
        if frame.get("error"):
            raise PhaseFailed(f"{command['action']} failed: {frame!r}")
        return {"data": frame.get("data")}

    async def op_run(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send messages from the given senders until the budget or the
        duration runs out and every request is answered."""
        # No collector pauses in the generator while it measures latency:
        # what it allocates per frame is freed by reference counting.
        gc.collect()
        gc.disable()
        self.cpu_start = time.process_time()
        traffic = self.traffic = _Traffic(command)
        for client in self.clients:
            client.sink = traffic
        wanted = set(command["senders"])
        senders = [c for c in self.clients if c.index in wanted]
        if traffic.budget > 0 and not senders:
            raise PhaseFailed("no connected sender in this process")
        if traffic.paced:
            asyncio.get_running_loop().create_task(traffic.open_loop(senders, command["rate"]))
        else:
            traffic.start_closed_loop(senders)
        await asyncio.wait_for(
            asyncio.shield(traffic.sending_done), command["duration"] + command["timeout"]
        )
        return {"sent": traffic.sent, "sent_to": traffic.sent_to}

    async def op_drain(self, command: dict[str, Any]) -> dict[str, Any]:
        """Wait for the pushes the other processes' sends owe this one, then
        report counts, latencies and this process's CPU time."""
        traffic = self.traffic
        if traffic is None:
            raise PhaseFailed("drain without run")
        # Every stored message is also pushed back to its sender (a direct
        # message to `from` as well as `to`; a group one to every member).
        traffic.expect(command["deliveries"], traffic.acked)
        try:
            await asyncio.wait_for(asyncio.shield(traffic.drained), command["timeout"])
        except TimeoutError:
            pass  # Report what arrived: the orchestrator compares the counts.
        cpu = time.process_time() - self.cpu_start
        gc.enable()
        for client in self.clients:
            client.sink = self.idle
        self.traffic = None
        return {
            "sent": traffic.sent,
            "acked": traffic.acked,
            "errors": traffic.errors,
            "error_samples": traffic.error_samples,
            "echoes": traffic.echoes,
            "delivered": traffic.delivered,
            "delivered_by_node": traffic.delivered_by_node,
            "other_pushes": traffic.other,
            "expected_deliveries": command["deliveries"],
            "reply_ns": traffic.reply_ns,
            "delivery_ns": traffic.delivery_ns,
            "max_lag_ns": traffic.max_lag_ns,
            "cpu_seconds": cpu,
        }

    async def op_close(self, command: dict[str, Any]) -> dict[str, Any]:
        """Close every connection and wait (briefly) until they are gone."""
        clients, self.clients = self.clients, []
        for client in clients:
            client.sink = self.idle
            client.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            c.transport is not None and not c.transport.is_closing() for c in clients
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)
        return {"closed": len(clients)}


async def _serve(pipe: Connection, worker: int) -> None:
    generator = Generator(pipe, worker)
    loop = asyncio.get_running_loop()
    reader = threading.Thread(target=generator.read_commands, args=(loop,), daemon=True)
    reader.start()
    try:
        await generator.exit
        await asyncio.sleep(0)  # let the answer to `exit` go out
    finally:
        for client in generator.clients:
            client.abort()


def worker_main(pipe: Connection, worker: int) -> None:
    """The entry point of a generator process: serve commands until told to
    exit or until the orchestrator goes away."""
    # Ctrl-C is for the orchestrator, which then tells this process to exit
    # (or closes the pipe, which does the same).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sysinfo.raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(pipe, worker))
    else:
        # uvloop costs less per callback and per socket write than asyncio's loop.
        uvloop.run(_serve(pipe, worker))
