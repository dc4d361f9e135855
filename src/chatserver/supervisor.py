"""Several server processes on one port, to use every core of a machine.

``--workers N`` runs N copies of the server, each listening on the same port
with ``SO_REUSEPORT`` (the kernel spreads new connections between them) and
reaching the others' users through Redis. The process that was started only
supervises: it restarts a worker that dies and stops them all on exit.
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IStreamServerEndpoint,
)
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

from chatserver.options import LISTEN_BACKLOG, Options


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listens on a TCP port that other processes may listen on too."""

    def __init__(self, reactor: IReactorSocket, port: int, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            # The port keeps its own duplicate of the descriptor.
            port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)  # type: ignore[arg-type]
        finally:
            sock.close()
        return succeed(port)


def workers_service(options: Options) -> ProcessMonitor:
    """A supervisor running ``options["workers"]`` server processes."""
    args = [*_without_workers(options.argv), "--reuse-port"]
    monitor = ProcessMonitor()
    monitor.threshold = 5  # a worker dying within 5 s of start is restarted with backoff
    for n in range(options["workers"]):
        monitor.addProcess(
            f"worker-{n}",
            [sys.executable, "-m", "chatserver", *args],
            env=dict(os.environ),
        )
    return monitor


def _without_workers(argv: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return kept
