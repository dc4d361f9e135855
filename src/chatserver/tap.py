"""``twistd chatserver``: turn parsed options into a running service.

This module only wires: it loads what the options name, asks
:func:`chatserver.wiring.build_server` for the server, and adds a listener.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import resource
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import txaio
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from chatserver.limits import Limits
from chatserver.options import Options
from chatserver.storage.devauth import ClaimedIdAuthorizer
from chatserver.storage.loader import load_actions, load_storage
from chatserver.storage.override import AuthorizerOverride
from chatserver.wiring import build_server

log = Logger()


#: The garbage collector's thresholds in a server process. CPython's default
#: (700, 10, 10) runs a young collection every 700 net allocations, and a full
#: one, which stops the server for as long as it takes to scan every object
#: (130 ms with 5,000 users and 50,000 stored messages), every 100 young
#: ones: a few times in every 10 s at 5,000 messages/s, which was the whole
#: p99 delivery there (113 ms, against 3.9 ms with these). Cycles of garbage
#: live a little longer: at most 50,000 objects' worth.
GC_THRESHOLDS = (50_000, 20, 10)


class SettleMemory(Service):
    """Once started, moves every object that exists by then (modules, the
    service tree) out of the garbage collector's sight, so that full
    collections scan only what connections create, and collects less often
    (:data:`GC_THRESHOLDS`): the server pauses for less, and less often."""

    def startService(self) -> None:
        super().startService()
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


def fail_startup(sentence: str) -> NoReturn:
    """Stop start-up with ``sentence`` as one line on standard error and exit
    status 1: the operator reads what to fix, not a traceback.

    Written to the process's own standard error, since once twistd's logging
    has begun ``sys.stderr`` only feeds the log.
    """
    stream = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    stream.write(f"chatserver: {sentence}\n")
    stream.flush()
    raise SystemExit(1)


def describe_listen_error(error: BaseException) -> str:
    """One line saying why the server could not listen, and what to do."""
    if isinstance(error, CannotListenError):
        cause = error.socketError
        where = f"port {error.port}" + (f" on {error.interface}" if error.interface else "")
        code = getattr(cause, "errno", None)
        if code == errno.EADDRINUSE:
            return f"{where} is already in use: stop what uses it, or choose another --port"
        if code == errno.EACCES:
            return f"not allowed to listen on {where}: choose a port above 1023"
        if code == errno.EADDRNOTAVAIL:
            return f"cannot listen on {where}: this machine has no such address"
        return f"cannot listen on {where}: {getattr(cause, 'strerror', None) or cause}"
    return f"cannot listen: {error}"


class Listener(Service):
    """Listens on an endpoint while running.

    Unlike Twisted's ``StreamServerEndpointService``, a port that cannot be
    opened stops start-up at once with one line (:func:`fail_startup`)
    instead of a logged traceback and a server that idles without a port.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        listening: Callable[[IListeningPort], None] | None = None,
    ) -> None:
        """
        :param listening: called with the port once it is open.
        """
        self.endpoint = endpoint
        self.factory = factory
        self._listening = listening
        self._port: IListeningPort | None = None
        self._started = False
        self._opening = False
        self._waiting: list[Deferred[IListeningPort]] = []

    def whenListening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once it is open (at once if it is)."""
        if self._port is not None:
            return succeed(self._port)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def privilegedStartService(self) -> None:
        """Open the port (before twistd drops privileges, if it does)."""
        super().privilegedStartService()
        if self._started:
            return
        self._started = True
        failures: list[Failure] = []
        self._opening = True
        self.endpoint.listen(self.factory).addCallbacks(
            self._opened, self._not_opened, (), {}, (failures,)
        )
        self._opening = False
        if failures:  # TCP and SSL endpoints answer at once
            fail_startup(describe_listen_error(failures[0].value or Exception("unknown error")))

    def _not_opened(self, failure: Failure, failures: list[Failure]) -> None:
        if self._opening:
            failures.append(failure)  # start-up stops, with one line, once out of the Deferred
            return
        # An endpoint that answered later, with the reactor running.
        log.critical(
            "chatserver: {problem}", problem=describe_listen_error(failure.value or Exception())
        )
        from twisted.internet import reactor

        reactor.stop()

    def _opened(self, port: IListeningPort) -> None:
        self._port = port
        if self._listening is not None:
            self._listening(port)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(port)

    def startService(self) -> None:
        if not self._started:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Any:
        """Stop listening; fires once the port is closed."""
        super().stopService()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


def announce(secure: bool, web: bool) -> Callable[[IListeningPort], None]:
    """A ``listening`` callback that logs where clients and people connect."""

    def listening(port: IListeningPort) -> None:
        number = getattr(port.getHost(), "port", None)
        if number is None:
            return
        scheme = "https" if secure else "http"
        where = f"{scheme}://localhost:{number}/"
        if web:
            log.info("chat page at {where} (WebSocket on the same port)", where=where)
        else:
            log.info("WebSocket at {where}", where=where.replace("http", "ws", 1))

    return listening


def make_service_or_exit(options: Options) -> IService:
    """:func:`make_service` for the command line: a start-up mistake ends
    the process with one line (see :func:`fail_startup`)."""
    try:
        return make_service(options)
    except usage.UsageError as e:
        fail_startup(str(e))


# Descriptors kept for everything but client connections (storage, Redis, logs).
RESERVED_DESCRIPTORS = 64


def fit_to_descriptors(limits: Limits) -> Limits:
    """Raise the open-files limit to what the system allows, and keep the
    connections that have not authorized yet to half of it, so that slow or
    idle clients can never take every descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    room = max(16, (soft - RESERVED_DESCRIPTORS) // 2)
    if not limits.max_pending_connections or limits.max_pending_connections > room:
        log.info(
            "open files limit {soft}: at most {room} connections may wait to authorize",
            soft=soft,
            room=room,
        )
        return dataclasses.replace(limits, max_pending_connections=room)
    return limits


def make_service(options: Options, reactor: Any = None) -> IService:
    """A service that opens the storage (if it is a service), listens, and on
    stop closes the listener, then the connections, then the storage.

    :raise usage.UsageError: when an option names something unusable.
    """
    if reactor is None:
        from twisted.internet import reactor
    if options["workers"] > 1:
        from chatserver.supervisor import workers_service

        log.info("starting {n} workers on port {port}", n=options["workers"], port=options["port"])
        return workers_service(options)
    # Autobahn logs per connection (a client can make it write without end)
    # and, at debug level, every request head with its cookies and tokens:
    # only its errors are wanted. The server logs what matters itself.
    txaio.set_global_log_level("error")  # type: ignore[attr-defined]  # txaio's stubs lack it
    storage: Any
    # twistd, unlike `python -m`, leaves the working directory off sys.path:
    # `--storage mystore:MyStorage` must still find ./mystore.py.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        storage = load_storage(options["storage"])
        actions = load_actions(options["actions"]) if options["actions"] else None
        open_actions = load_actions(options["open-actions"]) if options["open-actions"] else None
    except ValueError as e:
        raise usage.UsageError(str(e)) from e

    # The repr, not the option: a MongoDB URI may carry a password.
    log.info("storage: {storage!r}", storage=storage)
    if options["dev-auth"]:
        log.warn(
            "INSECURE: --dev-auth is on; anyone can sign in as any user. "
            "Never expose this server to people you do not trust."
        )
        storage = AuthorizerOverride(storage, ClaimedIdAuthorizer())
    if options.jwt_authorizer is not None:
        log.info("sign-in: JWTs checked with {authorizer!r}", authorizer=options.jwt_authorizer)
        storage = AuthorizerOverride(storage, options.jwt_authorizer)
    if options.api_keys:
        log.info("server API on /api, keys in use: {n}", n=len(options.api_keys))
    cluster = None
    if options["redis"]:
        from chatserver.cluster import RedisCluster

        try:
            cluster = RedisCluster(options["redis"], reactor=reactor)
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        log.info("cluster mode: {cluster!r}", cluster=cluster)

    directory = options["directory"]
    server = build_server(
        storage,
        actions=actions,
        open_actions=open_actions,
        limits=fit_to_descriptors(options.limits),
        allowed_origins=options.allowed_origins,
        cluster=cluster,
        directory=None if directory == "none" else directory,
        web=not options["no-web"],
        verbose=options["verbose"],
        max_history=options["max-history"],
        server_info={"devAuth": bool(options["dev-auth"])},
        api_keys=options.api_keys,
        reactor=reactor,
    )
    SettleMemory().setServiceParent(server)
    endpoint: IStreamServerEndpoint
    if options["reuse-port"]:
        from chatserver.supervisor import ReusePortEndpoint

        endpoint = ReusePortEndpoint(reactor, options["port"])
    else:
        description = options.endpoint_description()
        try:
            endpoint = serverFromString(reactor, description)
        except (ValueError, TypeError) as e:
            raise usage.UsageError(
                f"--endpoint {description!r} is not an endpoint Twisted knows ({e}); "
                "e.g. tcp:4001 or ssl:4443:privateKey=key.pem:certKey=cert.pem"
            ) from e
    secure = str(options["endpoint"] or "").startswith("ssl:")
    Listener(endpoint, server.site, announce(secure, not options["no-web"])).setServiceParent(
        server
    )
    return server
