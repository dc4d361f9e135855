"""``twistd chatserver``: turn parsed options into a running service.

This module only wires: it loads what the options name, asks
:func:`chatserver.wiring.build_server` for the server, and adds a listener.
"""

from __future__ import annotations

import dataclasses
import gc
import resource
from typing import Any

import txaio
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from chatserver.limits import Limits
from chatserver.options import Options
from chatserver.storage.devauth import ClaimedIdAuthorizer
from chatserver.storage.loader import load_actions, load_storage
from chatserver.storage.override import AuthorizerOverride
from chatserver.wiring import build_server

log = Logger()


class SettleMemory(Service):
    """Once started, moves every object that exists by then (modules, the
    service tree) out of the garbage collector's sight: full collections then
    scan only what connections create, and pause the server for less."""

    def startService(self) -> None:
        super().startService()
        gc.collect()
        gc.freeze()


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
    if options["reuse-port"]:
        from chatserver.supervisor import ReusePortEndpoint

        endpoint = ReusePortEndpoint(reactor, options["port"])
    else:
        endpoint = serverFromString(reactor, options.endpoint_description())
    listener = StreamServerEndpointService(endpoint, server.site)
    # Fail start-up loudly if the port is taken, rather than log and idle.
    listener._raiseSynchronously = True
    listener.setServiceParent(server)
    return server
