"""The one place that builds a chat server out of its parts.

:func:`build_server` takes a store and options and wires the registry, the
router (local or a cluster), the handler, the WebSocket factory, the HTTP
site, the metrics and the services that start and stop with the server. The
twistd plugin, ``python -m chatserver`` and applications embedding the server
all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from chatserver._internals import fired_result
from chatserver._version import __version__
from chatserver.api_schema import openapi_description
from chatserver.delivery import LocalRouter, Router, SessionRegistry
from chatserver.events import EventEmitter
from chatserver.factory import ChatServerFactory
from chatserver.handlers import Action, ChatHandler
from chatserver.handlers.conversations import Conversations
from chatserver.handlers.directory import CONTACTS, UsersAndGroups
from chatserver.handlers.presence import PresenceWatch
from chatserver.handlers.typing import Typing
from chatserver.http_api import APIKeys, ServerAPIResource
from chatserver.interfaces import (
    IChatStorage,
    ISessionRevocations,
    IStorageStatus,
    IUserDirectory,
)
from chatserver.limits import Limits, PendingConnections
from chatserver.metrics import ServerStats, metrics_registry
from chatserver.nodemap import LocalPresence
from chatserver.protocol import text_frame
from chatserver.revocations import DEFAULT_INTERVAL, RevocationWatcher
from chatserver.server import Presence, ServerAPI
from chatserver.site import READY_TIMEOUT, ChatRoot, ChatSite

DIRECTORY_ACTION = "getUsersAndGroups"


class _Drain(Service):
    """On stop, says goodbye to every client (1001) and lets in-flight
    requests finish, within the shutdown timeout."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.factory = factory

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.factory.shutdown()


class ChatServer(MultiService):
    """A built chat server: a Twisted service with its parts.

    Start it (``startService()``, or make it a child of your application's
    service) to start what it needs — the store if it is a service, the
    cluster, the revocation watcher — and listen with :attr:`site` (the
    WebSocket on any path, the web page, ``/health``, ``/ready``,
    ``/metrics``) or :attr:`factory` (a bare WebSocket). Stopping it stops
    its children one at a time in reverse order, each waiting for the one
    before: listeners first, then the connections (closed with 1001 once
    their requests are answered), then the store.

    :ivar api: the :class:`ServerAPI`: send, broadcast, online, events.
    :ivar factory: the Autobahn WebSocket factory.
    :ivar site: the HTTP site of the chat port.
    """

    def __init__(
        self,
        *,
        api: ServerAPI,
        factory: ChatServerFactory,
        site: ChatSite,
        storage: IChatStorage,
        registry: SessionRegistry,
        handler: ChatHandler,
    ) -> None:
        super().__init__()
        self.api = api
        self.factory = factory
        self.site = site
        self.storage = storage
        self.registry = registry
        self.handler = handler

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for child in reversed(list(self)):
            result = child.stopService()
            if isinstance(result, Deferred):
                await result


def build_server(
    storage: IChatStorage,
    *,
    actions: Mapping[str, Action] | None = None,
    open_actions: Mapping[str, Action] | None = None,
    limits: Limits | None = None,
    allowed_origins: Sequence[str] | None = None,
    cluster: Any = None,
    directory: str | None = CONTACTS,
    web: bool = True,
    verbose: bool = False,
    max_history: int = 100,
    server_info: Mapping[str, object] | None = None,
    revocation_interval: float = DEFAULT_INTERVAL,
    api_keys: Sequence[str] | None = None,
    reactor: IReactorTime | None = None,
) -> ChatServer:
    """Build a chat server over ``storage``.

    :param storage: provides :class:`~chatserver.interfaces.IChatStorage`
        (and optionally the interfaces that unlock more, see there).
    :param actions: custom actions, ``name → action(session, data)``,
        returning the reply's data (or a Deferred or coroutine of it).
    :param open_actions: custom actions allowed before ``authorize``.
    :param limits: the :class:`Limits` to enforce (the defaults if ``None``).
    :param allowed_origins: origins whose web pages may connect (``None``: any).
    :param cluster: a :class:`~chatserver.cluster.RedisCluster` to reach
        users on other nodes and know who is online on any of them (it is
        then the router and the presence); ``None`` for a single node.
    :param directory: the ``getUsersAndGroups`` action: ``"contacts"`` (the
        caller's contacts and groups), ``"all"`` (every user: demos), or
        ``None`` (no such action). An action of that name in ``actions`` wins.
    :param web: serve the web chat page at ``/``.
    :param verbose: log each request (action, user, outcome; never its data).
    :param max_history: the cap on ``getMessages``'s ``limit``.
    :param server_info: what the open ``serverInfo`` action tells clients.
    :param revocation_interval: seconds between two polls of the store for
        revoked sessions (when it provides ``ISessionRevocations``).
    :param api_keys: serve the HTTP server API under ``/api`` to callers
        with one of these keys (see :mod:`chatserver.http_api`); ``None`` or
        empty: no ``/api``.
    :raise TypeError: if ``storage`` does not provide ``IChatStorage``.
    :raise ValueError: if one of ``api_keys`` is too weak to be one.
    """
    if not IChatStorage.providedBy(storage):
        raise TypeError(
            f"{storage!r} does not provide IChatStorage: declare it with "
            "@implementer(IChatStorage) and implement its five methods"
        )
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    assert reactor is not None
    limits = limits or Limits()
    events = EventEmitter()
    stats = ServerStats()
    registry = SessionRegistry(text_frame)
    router: Router
    presence: Presence
    if cluster is not None:
        cluster.bind(registry)
        router = presence = cluster
    else:
        router = LocalRouter(registry)
        presence = LocalPresence(registry, reactor)
    api = ServerAPI(router, registry, presence, events)

    actions = dict(actions or {})
    if directory is not None and DIRECTORY_ACTION not in actions:
        store_directory = storage if IUserDirectory.providedBy(storage) else None
        actions[DIRECTORY_ACTION] = UsersAndGroups(
            store_directory, registry, presence.online, reactor, mode=directory
        )
    handler = ChatHandler(
        storage,
        registry,
        router,
        events,
        reactor,
        actions=actions,
        open_actions=open_actions,
        max_history=max_history,
        storage_timeout=limits.storage_timeout,
        max_connections_per_user=limits.max_connections_per_user,
        stats=stats,
        server_info=server_info,
        take_result=fired_result,
    )
    handler.add_builtin("getConversations", Conversations(handler, storage))
    handler.add_builtin("typing", Typing(handler, storage.getGroupUserIds, router, reactor))
    watch = PresenceWatch(registry, presence, events)
    handler.add_builtin("watchPresence", watch)
    presence.observers.append(watch)
    admission = PendingConnections(limits.max_pending_connections)
    factory = ChatServerFactory(
        handler=handler,
        registry=registry,
        api=api,
        events=events,
        stats=stats,
        limits=limits,
        admission=admission,
        allowed_origins=allowed_origins,
        verbose=verbose,
        reactor=reactor,
    )
    parts: list[Any] = [stats, registry, factory]
    if cluster is not None:
        parts.append(cluster)
    api_resource = None
    if isinstance(api_keys, str | bytes):
        raise TypeError("api_keys is a list of keys, not one key")
    if api_keys:
        api_resource = ServerAPIResource(
            handler,
            api,
            APIKeys(api_keys),
            reactor,
            description=openapi_description(__version__),
            track=factory.track,
        )
        parts.append(api_resource)

    async def readiness() -> dict[str, str]:
        body: dict[str, str] = {}
        try:
            await handler.probe_storage(READY_TIMEOUT)
            body["storage"] = "ok"
        except Exception:
            body["storage"] = "error"
        if IStorageStatus.providedBy(storage):
            status = str(storage.status())
            if status != "ready":
                body["storage"] = status
        if cluster is not None:
            body["redis"] = "ok" if cluster.connected else "error"
        return body

    root = ChatRoot(
        factory,
        lambda: Deferred.fromCoroutine(readiness()),
        metrics_registry(parts),
        web=web,
        api=api_resource,
    )
    site = ChatSite(root, limits=limits, admission=admission, clock=reactor, websocket=factory)
    server = ChatServer(
        api=api, factory=factory, site=site, storage=storage, registry=registry, handler=handler
    )
    if IService.providedBy(storage) and getattr(storage, "parent", None) is None:
        storage.setServiceParent(server)
    if cluster is not None and IService.providedBy(cluster):
        cluster.setServiceParent(server)
    if ISessionRevocations.providedBy(storage) and revocation_interval:
        RevocationWatcher(storage, registry, reactor, revocation_interval).setServiceParent(server)
    _Drain(factory).setServiceParent(server)
    return server
