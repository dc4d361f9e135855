"""Build the running server, as a Twisted service, from parsed options."""

from __future__ import annotations

import gc

import txaio
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from chatserver.cluster import RedisCluster
from chatserver.directory import UsersAndGroups
from chatserver.factory import ChatServerFactory
from chatserver.interfaces import IUserDirectory
from chatserver.options import Options
from chatserver.resources import ChatRoot, ChatSite
from chatserver.storage.combined import CombinedStorage
from chatserver.storage.devauth import ClaimedIdAuthorizer
from chatserver.storage.loader import load_actions, load_storage
from chatserver.workers import ReusePortEndpoint

log = Logger()


class InOrderService(MultiService):
    """Starts its children in order and stops them one at a time in reverse,
    each waiting for the one stopped before it (MultiService stops them all at
    once, which would close the storage under in-flight requests)."""

    async def _stop_in_order(self) -> None:
        for child in reversed(list(self)):
            await Deferred.fromCoroutine(_maybe(child.stopService()))

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())


async def _maybe(result: object) -> None:
    if isinstance(result, Deferred):
        await result


class SettleMemory(Service):
    """Once started, moves every object that exists by then (modules, the
    service tree) out of the garbage collector's sight: full collections then
    scan only what connections create, and pause the server for less."""

    def startService(self) -> None:
        super().startService()
        gc.collect()
        gc.freeze()


class DrainService(Service):
    """On stop, says goodbye to every client (1001) and lets in-flight
    requests finish, within the shutdown timeout."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.factory = factory

    def stopService(self) -> Deferred:
        Service.stopService(self)
        log.info(
            "closing {n} connections",
            n=len(self.factory.connections),
        )
        return self.factory.shutdown()


def make_service(options: Options, reactor: object = None) -> MultiService:
    """A service that opens the storage (if it is a service), listens, and on
    stop closes the listener, then the connections, then the storage.

    @raise usage.UsageError: when an option names something unusable.
    """
    reactor = reactor or global_reactor
    if options["workers"] > 1:
        from chatserver.workers import workers_service

        log.info("starting {n} workers on port {port}", n=options["workers"], port=options["port"])
        return workers_service(options)
    # Autobahn logs every frame at debug level: costly on the hot path, and noise.
    txaio.set_global_log_level("debug" if options["verbose"] else "info")
    try:
        storage = load_storage(options["storage"])
        actions = load_actions(options["actions"]) if options["actions"] else None
        open_actions = load_actions(options["open-actions"]) if options["open-actions"] else None
    except ValueError as e:
        raise usage.UsageError(str(e)) from e

    top = InOrderService()
    directory = storage if IUserDirectory.providedBy(storage) else None
    # The web demo's directory; an application's own action of that name wins.
    actions = {"getUsersAndGroups": UsersAndGroups(directory), **(actions or {})}
    if IService.providedBy(storage):
        storage.setServiceParent(top)
    # The repr, not the option: a MongoDB URI may carry a password.
    log.info("storage: {storage!r}", storage=storage)
    if options["dev-auth"]:
        log.warn(
            "INSECURE: --dev-auth is on; anyone can sign in as any user. "
            "Never expose this server to people you do not trust."
        )
        storage = CombinedStorage(ClaimedIdAuthorizer(), storage, storage)
    cluster = None
    if options["redis"]:
        try:
            cluster = RedisCluster(options["redis"], reactor=reactor)
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        cluster.setServiceParent(top)
        log.info("cluster mode: {cluster!r}", cluster=cluster)

    factory = ChatServerFactory(
        storage,
        actions=actions,
        open_actions=open_actions,
        limits=options.limits,
        allowed_origins=options.allowed_origins,
        cluster=cluster,
        verbose=options["verbose"],
        max_history=options["max-history"],
        server_info={"devAuth": bool(options["dev-auth"])},
        reactor=reactor,
    )
    SettleMemory().setServiceParent(top)
    DrainService(factory).setServiceParent(top)
    if options["reuse-port"]:
        endpoint = ReusePortEndpoint(reactor, options["port"])
    else:
        endpoint = serverFromString(reactor, options.endpoint_description())
    # One port for all: the WebSocket (an upgrade on any path), the page, /health, /metrics.
    site = ChatSite(ChatRoot(factory, web=not options["no-web"]))
    listener = StreamServerEndpointService(endpoint, site)
    # Fail start-up loudly if the port is taken, rather than log and idle.
    listener._raiseSynchronously = True
    listener.setServiceParent(top)
    top.factory = factory  # type: ignore[attr-defined]
    return top
