"""The processes a benchmark drives: the server under test and the load
generators."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import IO, Any, cast

from chatserver.bench.loadgen import worker_main
from chatserver.bench.population import Population
from chatserver.bench.sysinfo import children, raise_open_files_limit

# Twisted logs "<factory> starting on PORT" when a port opens: the factory is
# ChatServerFactory, or the web site that serves it beside a page.
LISTENING = re.compile(rb"\b\w+ starting on (\d+)")
BENCH_STORAGE = "chatserver.bench.storage:bench_storage"
BENCH_ACTIONS = "chatserver.bench.storage:ACTIONS"
# The server's listen backlog: room for a burst of thousands of connections
# (Linux caps it at net.core.somaxconn).
BACKLOG = 4096
# Requests per second per connection: more than any scenario sends.
UNTHROTTLED_RATE = 1_000_000
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def unthrottled_options() -> list[str]:
    """Server options that lift the per-connection request rate limit, if
    the server has one: a closed-loop sender asks far faster than a person
    types. The limit stays switched on (at a rate never reached), so its cost
    per request is still measured.
    """
    from chatserver.options import Options

    names = {param[0] for param in Options.optParameters if isinstance(param, list)}
    if not {"rate", "burst"} <= names:
        return []
    return [f"--rate={UNTHROTTLED_RATE}", f"--burst={UNTHROTTLED_RATE}"]


class BenchError(Exception):
    """The benchmark could not run as asked."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the bench itself is killed,
    # the kernel sends the server SIGTERM rather than leave it running.
    with contextlib.suppress(Exception):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Target:
    """A server to measure.

    :ivar label: how the table names it.
    :ivar url: its WebSocket URL, once it is running.
    :ivar pid: its process id, if known: CPU and memory are read from /proc.
    :ivar collects: whether it offers the bench's garbage-collection actions
        (``None``: not known yet; the runner asks it once).
    :ivar profilable: whether py-spy can record it (it runs Python).
    :ivar redis: the Redis its nodes share, if it has several (its CPU and
        its publishes are then read too).
    """

    label = "server"
    url: str | None = None
    pid: int | None = None
    collects: bool | None = False
    profilable = False
    redis: RedisServer | None = None

    @property
    def urls(self) -> list[str]:
        """Where clients connect, one URL per node (see
        :func:`~chatserver.bench.loadgen.node_of` for which user goes where)."""
        return [self.url] if self.url is not None else []

    def node_pids(self) -> list[int]:
        """The processes that serve clients (nodes, workers), in a stable
        order: the bench reads the CPU of each."""
        return [self.pid] if self.pid is not None else []

    def cpu_pids(self) -> list[int]:
        """Every process whose CPU is the server's (the nodes and anything
        that supervises them): the bench sums their CPU."""
        return self.node_pids()

    def profile_pid(self) -> tuple[int, bool] | None:
        """The process py-spy records, and whether with its subprocesses."""
        return (self.pid, False) if self.pid is not None else None

    def begin(self, population: Population) -> None:
        """Be ready to serve ``population``."""

    def check_alive(self) -> None:
        """:raise BenchError: if the server is known to have exited."""

    def end(self) -> None:
        """The scenario is over."""


class RemoteServer(Target):
    """An already running server, e.g. another implementation to compare.

    It is not restarted between scenarios, so it must already know every user
    and group that any scenario uses (see :mod:`chatserver.bench.population`),
    and what earlier scenarios stored stays in its memory: a
    :class:`CommandServer` starts afresh each time, as our server does.
    """

    collects = None

    def __init__(self, url: str, pid: int | None, label: str = "compare") -> None:
        self.url = url
        self.pid = pid
        self.label = label


class CommandServer(Target):
    """Another server, started afresh for each scenario by a command line and
    always stopped, as our own server is.

    ``{port}`` in the command becomes a free loopback port, ``{users}`` and
    ``{group_size}`` the scenario's population, which the environment
    variables of :mod:`chatserver.bench.population` carry as well. The server
    is ready once that port accepts connections; its process (the command's,
    not a shell's: the command is split like a shell's words but not run by
    one) is the one whose CPU and memory are read.
    """

    collects = None

    def __init__(self, command: str, label: str) -> None:
        """
        :param command: the command line, with ``{port}`` where the port goes.
        :param label: how the tables name the server.
        :raise ValueError: if the command has no ``{port}`` or does not split.
        """
        self.words = shlex.split(command)
        if not self.words or not any("{port}" in word for word in self.words):
            raise ValueError(f"the command of {label!r} must say where {{port}} goes")
        self.label = label
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def argv(self, port: int, population: Population) -> list[str]:
        """The command for this port and population."""
        values = {
            "port": str(port),
            "users": str(population.users),
            "group_size": str(population.group_size),
        }
        out = []
        for word in self.words:
            for name, value in values.items():
                word = word.replace("{" + name + "}", value)
            out.append(word)
        return out

    def begin(self, population: Population) -> None:
        raise_open_files_limit()  # inherited by the server
        port = free_port()
        argv = self.argv(port, population)
        self._log = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **population.environment()},
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as e:
            self.end()
            raise BenchError(f"{self.label}: cannot run {argv[0]!r}: {e}") from None
        self.pid = self.process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                time.sleep(0.05)  # polling a process we just started for its port
                continue
            self.url = f"ws://127.0.0.1:{port}/"
            return
        tail = self.log().decode(errors="replace")[-4000:]
        self.end()
        raise BenchError(f"{self.label} did not listen on port {port}:\n{tail}")

    def log(self) -> bytes:
        """Everything the server has printed so far."""
        if self._log is None:
            return b""
        self._log.seek(0)
        return self._log.read()

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log().decode(errors="replace")[-4000:]
            raise BenchError(f"{self.label} exited with {self.process.returncode}:\n{tail}")

    def end(self) -> None:
        _stop(self.process)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.url = None
        self.pid = None


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``process`` (if it runs), and kill it if it lingers."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A loopback TCP port nothing listens on (for servers that need a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, keeping nothing
    on disk; it can be stopped and started again on the same port."""

    def __init__(self, workdir: str | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir or tempfile.gettempdir()
        self.start()

    def start(self) -> None:
        """Start it, and return once it answers PING."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.05)  # polling a process we just started; there is no event to wait on
        raise BenchError("redis-server did not start")

    @property
    def pid(self) -> int:
        """The redis-server process (its CPU is read from /proc)."""
        return self.process.pid

    def command_calls(self) -> dict[str, int]:
        """How many times each command ran since the server started (from
        ``INFO commandstats``), e.g. ``{"publish": 1200, "evalsha": 3}``.

        :raise BenchError: if the server does not answer.
        """
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"INFO commandstats\r\n")
                reply = b""
                # A bulk string: $LENGTH\r\n, then LENGTH bytes and \r\n.
                while b"\r\n" not in reply:
                    reply += _recv(sock)
                header, _, body = reply.partition(b"\r\n")
                length = int(header[1:])
                while len(body) < length:
                    body += _recv(sock)
        except (OSError, ValueError) as e:
            raise BenchError(f"redis-server did not answer INFO: {e}") from None
        calls = {}
        for line in body[:length].decode().splitlines():
            # cmdstat_publish:calls=3,usec=12,...
            name, _, stats = line.partition(":")
            if name.startswith("cmdstat_") and stats.startswith("calls="):
                calls[name.removeprefix("cmdstat_")] = int(stats.split(",")[0][6:])
        return calls

    def listen_on(self, addresses: Sequence[str]) -> None:
        """Listen on these addresses too (besides 127.0.0.1) from now on, or
        on 127.0.0.1 alone again if none (``CONFIG SET``, Redis 7 and later).

        Protected mode, which refuses clients from other addresses than the
        loopback's when Redis has no password, is off meanwhile: the bench's
        addresses are those of veth pairs that lead only to its own network
        namespaces.

        :raise BenchError: if Redis refuses.
        """
        self._config_set("bind", " ".join(["127.0.0.1", *addresses]))
        self._config_set("protected-mode", "no" if addresses else "yes")

    def _config_set(self, name: str, value: str) -> None:
        words = [b"CONFIG", b"SET", name.encode(), value.encode()]
        command = b"*%d\r\n" % len(words) + b"".join(
            b"$%d\r\n%b\r\n" % (len(word), word) for word in words
        )
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(command)
                reply = _recv(sock)
        except OSError as e:
            raise BenchError(f"redis-server did not answer CONFIG SET {name}: {e}") from None
        if not reply.startswith(b"+OK"):
            raise BenchError(f"redis-server refused CONFIG SET {name} {value}: {reply!r}")

    def stop(self) -> None:
        """Kill it (as a crash would)."""
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise OSError("connection closed")
    return data


class LocalServer(Target):
    """Our server, started afresh for each scenario as ``python -m
    chatserver`` on an ephemeral loopback port, and always stopped.

    With ``workers`` above 1 it runs as ``--workers N`` on one port, the
    workers reaching each other through ``redis``; its CPU is then the sum of
    every worker's and the supervisor's (each worker's is also reported), and
    py-spy records the supervisor with its subprocesses; memory is not read.
    """

    label = "chatserver"
    collects = True
    profilable = True

    def __init__(
        self,
        storage: str | None = None,
        claimed_ids: bool = False,
        extra_args: list[str] | None = None,
        workers: int = 1,
        redis: RedisServer | None = None,
    ) -> None:
        """
        @param storage: a ``--storage`` value; C{None} for the bench's own
            memory storage, sized by the scenario.
        @param claimed_ids: run with ``--dev-auth``, so that users sign in by
            the id they claim rather than by token.
        @param extra_args: more options for the server, after the bench's own
            (so they win, e.g. ``--rate=50`` to measure with the default
            per-connection rate limit).
        """
        self.storage = storage or BENCH_STORAGE
        self.claimed_ids = claimed_ids
        self.extra_args = [*unthrottled_options(), *(extra_args or [])]
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.workers = workers
        self.redis = redis if workers > 1 else None
        # Where a single process listens, and what its command runs under
        # (``ip netns exec NAME`` for a node in a namespace of its own).
        self.interface = "127.0.0.1"
        self.wrapper: list[str] = []
        if workers > 1:
            if redis is None:
                raise ValueError("several workers need a Redis")
            self.label = f"chatserver x{workers}"
            self.collects = False
        self._supervisor: int | None = None

    def node_pids(self) -> list[int]:
        if self.workers == 1 or self._supervisor is None:
            return super().node_pids()
        return children(self._supervisor)

    def cpu_pids(self) -> list[int]:
        if self.workers == 1 or self._supervisor is None:
            return super().cpu_pids()
        # The supervisor idles, but what it spends is the server's too.
        return [self._supervisor, *self.node_pids()]

    def profile_pid(self) -> tuple[int, bool] | None:
        if self.workers == 1 or self._supervisor is None:
            return super().profile_pid()
        return (self._supervisor, True)

    def argv(self) -> list[str]:
        """The command that starts the server."""
        if self.workers > 1:
            assert self.redis is not None
            self.port = free_port()
            listen = [
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--redis",
                self.redis.url,
            ]
        else:
            listen = ["--endpoint", f"tcp:0:interface={self.interface}:backlog={BACKLOG}"]
        argv = [
            *self.wrapper,
            sys.executable,
            "-m",
            "chatserver",
            *listen,
            "--storage",
            self.storage,
            "--open-actions",
            BENCH_ACTIONS,
        ]
        if self.claimed_ids:
            argv.append("--dev-auth")
        return argv + self.extra_args

    def begin(self, population: Population) -> None:
        raise_open_files_limit()  # inherited by the server
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **population.environment()},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.pid = self.process.pid if self.workers == 1 else None
        self._supervisor = self.process.pid if self.workers > 1 else None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            log = self.log()
            match = LISTENING.search(log)
            if match and self.workers == 1:
                self.url = f"ws://{self.interface}:{int(match.group(1))}/"
                return
            if (
                self.workers > 1
                and len(LISTENING.findall(log)) >= self.workers
                and log.count(b"Redis: subscribed") >= self.workers
                and len(children(self.process.pid)) >= self.workers
            ):
                self.url = f"ws://127.0.0.1:{self.port}/"
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)  # polling the log of a process we just started
        text = self.log().decode(errors="replace")
        self.end()
        raise BenchError(f"the server did not start:\n{text[-4000:]}")

    def log(self) -> bytes:
        """Everything the server has logged so far."""
        if self._log is None:
            return b""
        self._log.seek(0)
        return self._log.read()

    def check_alive(self) -> None:
        """@raise BenchError: if the server has exited."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log().decode(errors="replace")[-4000:]
            raise BenchError(f"the server exited with {self.process.returncode}:\n{tail}")

    def end(self) -> None:
        process, self.process = self.process, None
        _stop(process)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.url = None
        self.pid = None
        self._supervisor = None


def _ip(*args: str) -> None:
    """Run ``ip ARGS``.

    :raise BenchError: if it fails.
    """
    try:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise BenchError(f"ip {' '.join(args)}: {e} {detail.decode(errors='replace')}") from None


class Namespaces:
    """A network namespace per node, each joined to this one by a veth pair
    with two link-local addresses (the node's side and ours): the nodes then
    reach Redis, and the load generators reach them, through a network
    interface as on separate hosts, though the packets never leave the
    machine. Made with ``ip netns add`` (root only) and always removed by
    :meth:`close`.
    """

    def __init__(self, count: int) -> None:
        """
        :raise BenchError: if they cannot be made (not root, no ``ip``); none
            is left behind then.
        """
        tag = os.getpid() % 100_000
        # A /30 per node in a 169.254.X.0/24 of this process's own.
        block = 100 + os.getpid() % 100
        if count > 63:
            raise BenchError("at most 63 nodes in namespaces")
        self.names: list[str] = []
        self.links: list[str] = []
        self.ours: list[str] = []
        self.theirs: list[str] = []
        try:
            for k in range(count):
                name = f"chatbench{tag}n{k}"
                ours, theirs = f"cb{tag}h{k}", f"cb{tag}n{k}"
                _ip("netns", "add", name)
                self.names.append(name)
                _ip("link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", name)
                self.links.append(ours)
                host, node = f"169.254.{block}.{4 * k + 1}", f"169.254.{block}.{4 * k + 2}"
                _ip("addr", "add", f"{host}/30", "dev", ours)
                _ip("link", "set", ours, "up")
                _ip("-n", name, "addr", "add", f"{node}/30", "dev", theirs)
                _ip("-n", name, "link", "set", theirs, "up")
                _ip("-n", name, "link", "set", "lo", "up")
                self.ours.append(host)
                self.theirs.append(node)
        except BenchError:
            self.close()
            raise

    def wrapper(self, index: int) -> list[str]:
        """The command prefix that runs a command in namespace ``index``."""
        return ["ip", "netns", "exec", self.names[index]]

    def close(self) -> None:
        """Remove every namespace and veth pair."""
        # The pairs first: removing a namespace removes its pair only later,
        # and the next cluster's pairs take the same names.
        links, self.links = self.links, []
        for link in links:
            with contextlib.suppress(BenchError):
                _ip("link", "del", link)
        names, self.names = self.names, []
        for name in names:
            with contextlib.suppress(BenchError):
                _ip("netns", "del", name)


class ClusterNodes(Target):
    """``nodes`` separate server processes (``python -m chatserver``, i.e.
    ``twistd -n chatserver``), each on a port of its own and all sharing
    ``redis``, as nodes on separate machines would: clients are spread over
    them evenly (:func:`~chatserver.bench.loadgen.node_of`), so most
    deliveries cross nodes through Redis. Started afresh for each scenario,
    one after the other, and always stopped.

    On 127.0.0.1, or with ``netns`` each in a network namespace of its own
    (:class:`Namespaces`), reaching Redis and reached by the load generators
    through a veth pair, as over a network.

    The CPU of each node is read (and their sum is the server's), and Redis's;
    memory is not. py-spy records the first node.
    """

    collects = False
    profilable = True

    def __init__(
        self,
        nodes: int,
        redis: RedisServer,
        storage: str | None = None,
        claimed_ids: bool = False,
        extra_args: list[str] | None = None,
        netns: bool = False,
    ) -> None:
        """
        :param nodes: how many nodes (1 is a cluster of one: a single
            process that still follows Redis, for a baseline).
        :param redis: the Redis they share.
        :param storage, claimed_ids, extra_args: as for :class:`LocalServer`.
        :param netns: each node in a network namespace of its own (root only).
        """
        self.nodes = nodes
        self.redis = self._redis = redis
        self.netns = netns
        self._namespaces: Namespaces | None = None
        self.label = f"chatserver {nodes} node{'s' if nodes > 1 else ''}"
        if netns:
            self.label += " netns"
        self.storage = storage
        self.claimed_ids = claimed_ids
        self.extra_args = extra_args or []
        self.servers: list[LocalServer] = []
        self._clusters = 0

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers if s.url is not None]

    def node_pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.pid is not None]

    def profile_pid(self) -> tuple[int, bool] | None:
        pids = self.node_pids()
        return (pids[0], False) if pids else None

    def begin(self, population: Population) -> None:
        # One after the other, each once the previous ones are subscribed: a
        # node then finds all of them in the map it loads, and they hear of
        # it from its registration, so no push is routed on a partial map.
        # A prefix of its own for each cluster: nothing a previous scenario
        # left in Redis can be taken for one of its nodes.
        self._clusters += 1
        prefix = f"prefix=bench-{os.getpid()}-{self._clusters}"
        redis = self._redis
        try:
            if self.netns:
                namespaces = self._namespaces = Namespaces(self.nodes)
                redis.listen_on(namespaces.ours)
            self.servers = []
            for index in range(self.nodes):
                host = "127.0.0.1"
                if self._namespaces is not None:
                    host = self._namespaces.ours[index]
                url = f"redis://{host}:{redis.port}/0?{prefix}"
                server = LocalServer(
                    self.storage, self.claimed_ids, [*self.extra_args, "--redis", url]
                )
                if self._namespaces is not None:
                    server.interface = self._namespaces.theirs[index]
                    server.wrapper = self._namespaces.wrapper(index)
                self.servers.append(server)
            for index, server in enumerate(self.servers):
                server.begin(population)
                ready = f"users online on {index} other nodes".encode()
                deadline = time.monotonic() + START_TIMEOUT
                while ready not in server.log():
                    server.check_alive()
                    if time.monotonic() > deadline:
                        tail = server.log().decode(errors="replace")[-4000:]
                        raise BenchError(f"node {index} did not join the others:\n{tail}")
                    time.sleep(0.05)  # polling the log of a process we just started
        except BaseException:
            self.end()
            raise
        self.url = self.servers[0].url

    def check_alive(self) -> None:
        for index, server in enumerate(self.servers):
            try:
                server.check_alive()
            except BenchError as e:
                raise BenchError(f"node {index}: {e}") from None

    def end(self) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            server.end()
        self.url = None
        namespaces, self._namespaces = self._namespaces, None
        if namespaces is not None:
            with contextlib.suppress(BenchError):
                self._redis.listen_on([])
            namespaces.close()


class Generators:
    """Load-generator processes, each serving commands over a pipe."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for worker in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main, args=(theirs, worker), name=f"bench-generator-{worker}"
            )
            process.daemon = True  # never outlive the bench
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)

    def __len__(self) -> int:
        return len(self.pipes)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def call(
        self, commands: Sequence[dict[str, Any] | None], timeout: float
    ) -> list[dict[str, Any]]:
        """Send ``commands[i]`` to process ``i`` (none where it is C{None}), all
        at once, and gather the answers.

        @raise BenchError: if a process fails the command, dies, or does not
            answer within ``timeout`` seconds.
        """
        waiting: dict[Connection, int] = {}
        for index, command in enumerate(commands):
            if command is not None:
                self.pipes[index].send(command)
                waiting[self.pipes[index]] = index
        answers: list[dict[str, Any]] = [{} for _ in commands]
        deadline = time.monotonic() + timeout
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"load generator did not answer within {timeout:.0f} s")
            # wait() answers with some of the objects it was given: our pipes.
            ready = cast(list[Connection], wait(list(waiting), timeout=min(remaining, 1.0)))
            for pipe in ready:
                index = waiting.pop(pipe)
                try:
                    answer = pipe.recv()
                except (EOFError, OSError):
                    raise BenchError(f"load generator {index} died") from None
                if not answer.pop("ok"):
                    raise BenchError(f"load generator {index}: {answer['error']}")
                answers[index] = answer
            for pipe, index in waiting.items():
                if not self.processes[index].is_alive() and not pipe.poll():
                    raise BenchError(f"load generator {index} died")
        return answers

    def call_all(self, command: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Send the same command to every process."""
        return self.call([command] * len(self.pipes), timeout)

    def close(self) -> None:
        """Stop every process (politely, then not)."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send({"op": "exit"})
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self.pipes:
            pipe.close()
