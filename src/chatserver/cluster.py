"""Several server nodes sharing one Redis: pushes reach users on any node.

Each node subscribes to one channel per user connected to it (on the user's
first connection, unsubscribing on the last) and to one broadcast channel.
Delivering to a user pushes to their local connections directly and publishes
the already-encoded frame once on the user's channel, so only the nodes that
hold the user receive it. Redis pub/sub is at most once: pushes published
during a Redis outage are lost (history stays the source of truth), while
local delivery, storage and acknowledgements carry on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import orjson
import txredisapi
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from chatserver import wire
from chatserver.delivery import RegistryObserver
from chatserver.errors import Ending

log = Logger()


class LocalSessions(Protocol):
    """What the cluster needs of this node's registry."""

    observers: list[RegistryObserver]

    def deliver(self, payload: bytes, user_ids: Iterable[str]) -> int: ...

    def deliver_all(self, payload: bytes) -> int: ...

    def end(self, user_ids: Iterable[str], ending: Ending, reason: str) -> int: ...

    def __contains__(self, user_id: str) -> bool: ...


NODE_ID_BYTES = 16
# Subscribe in slices, so a node with many users does not send one huge command.
SUBSCRIBE_BATCH = 1000


class _RedisFactory(protocol.Factory):
    """Builds txredisapi protocols that keep replies as bytes."""

    isLazy = True  # txredisapi logs, rather than raises, auth errors then

    def __init__(self, cluster: RedisCluster, protocol_class: type) -> None:
        self.cluster = cluster
        self.protocol_class = protocol_class

    def buildProtocol(self, addr: object) -> txredisapi.BaseRedisProtocol:
        cluster = self.cluster
        p = self.protocol_class(charset=None, dbid=cluster.dbid, password=cluster.password)
        p.factory = self
        p.cluster = cluster
        return p

    def stopTrying(self) -> None:
        pass  # called by txredisapi on auth errors; ClientService decides retries

    def connectionError(self, why: str) -> None:
        log.error("Redis: {why}", why=why)


class _Subscriber(txredisapi.SubscriberProtocol):
    cluster: RedisCluster

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.cluster.received(channel, message)


class RedisCluster(Service):
    """Routes pushes between nodes through Redis pub/sub.

    Give it to :func:`chatserver.build_server` as ``cluster=``; it is
    started with the server (the plugin does so with ``--redis``).
    """

    def __init__(self, url: str, reactor: object = None) -> None:
        """
        :param url: ``redis://[:password@]host[:port][/db][?prefix=chat]``;
            the prefix names the channels (pub/sub ignores the db number, so
            deployments sharing a Redis need different prefixes).
        """
        parsed = urlparse(url)
        if parsed.scheme != "redis":
            raise ValueError(f"not a redis:// URL: {url!r}")
        self.host = parsed.hostname or "localhost"
        self.port = parsed.port or 6379
        path = parsed.path.strip("/")
        self.dbid = int(path) if path else None
        self.password = parsed.password
        prefix = parse_qs(parsed.query).get("prefix", ["chatserver"])[0]
        self._user_prefix = f"{prefix}:user:".encode()
        self.broadcast_channel = f"{prefix}:all".encode()
        self.control_channel = f"{prefix}:control".encode()
        self.node_id = os.urandom(NODE_ID_BYTES // 2).hex().encode()
        self._reactor = reactor
        self._registry: LocalSessions | None = None
        # Presence observers (cluster-wide presence events: not yet).
        self.observers: list[Any] = []
        self._channels: set[bytes] = {self.broadcast_channel, self.control_channel}
        self._publisher: txredisapi.RedisProtocol | None = None
        self._subscriber: _Subscriber | None = None
        self._services: list[ClientService] = []
        self.published = 0
        self.received_count = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"RedisCluster({self.host}:{self.port}, node {self.node_id.decode()})"

    @property
    def connected(self) -> bool:
        """Whether both the publishing and the subscribing connection are up."""
        return self._publisher is not None and self._subscriber is not None

    # -- wiring ------------------------------------------------------------

    def bind(self, registry: LocalSessions) -> None:
        """Deliver locally through ``registry`` and follow its users."""
        self._registry = registry
        registry.observers.append(self)

    def user_arrived(self, user_id: str) -> None:
        """A user's first connection here: hear what is published for them."""
        channel = self._user_prefix + user_id.encode()
        self._channels.add(channel)
        if self._subscriber is not None:
            self._subscriber.subscribe([channel]).addErrback(self._ignore)

    def user_left(self, user_id: str) -> None:
        """A user's last connection here closed."""
        channel = self._user_prefix + user_id.encode()
        self._channels.discard(channel)
        if self._subscriber is not None:
            self._subscriber.unsubscribe([channel]).addErrback(self._ignore)

    # -- delivery ----------------------------------------------------------

    def push(self, event_type: str, data: object, user_ids: Iterable[str]) -> int:
        """Push to ``user_ids`` here, and publish for their other nodes.

        :return: the number of local sessions written to.
        """
        assert self._registry is not None
        user_ids = tuple(user_ids)
        payload = wire.push(event_type, data)
        sent = self._registry.deliver(payload, user_ids)
        publisher = self._publisher
        if publisher is None:
            self.dropped += len(user_ids)
            return sent
        message = self.node_id + payload
        prefix = self._user_prefix
        for user_id in user_ids:
            publisher.publish(prefix + user_id.encode(), message).addErrback(self._ignore)
        self.published += len(user_ids)
        return sent

    def push_all(self, event_type: str, data: object) -> int:
        """Push to every authorized session, on every node."""
        assert self._registry is not None
        payload = wire.push(event_type, data)
        sent = self._registry.deliver_all(payload)
        self._publish(self.broadcast_channel, payload)
        return sent

    def end_sessions(self, user_ids: Iterable[str], ending: Ending, reason: str) -> int:
        """End the sessions of ``user_ids`` here and on every other node."""
        assert self._registry is not None
        user_ids = list(user_ids)
        ended = self._registry.end(user_ids, ending, reason)
        control = {"end": user_ids, "ending": ending.value, "reason": reason}
        self._publish(self.control_channel, orjson.dumps(control))
        return ended

    def online(self, user_ids: Iterable[str]) -> dict[str, bool]:
        """Whether each user has a session on this node."""
        registry = self._registry
        return {u: registry is not None and u in registry for u in user_ids}

    def _publish(self, channel: bytes, payload: bytes) -> None:
        if self._publisher is None:
            self.dropped += 1
        else:
            self._publisher.publish(channel, self.node_id + payload).addErrback(self._ignore)
            self.published += 1

    def received(self, channel: bytes, message: bytes) -> None:
        """A frame published by a node (ourselves included) arrived."""
        if message[:NODE_ID_BYTES] == self.node_id or self._registry is None:
            return  # delivered locally already
        self.received_count += 1
        payload = message[NODE_ID_BYTES:]
        if channel == self.broadcast_channel:
            self._registry.deliver_all(payload)
        elif channel == self.control_channel:
            self._control(payload)
        elif channel.startswith(self._user_prefix):
            self._registry.deliver(payload, (channel[len(self._user_prefix) :].decode(),))

    def _control(self, payload: bytes) -> None:
        try:
            control = orjson.loads(payload)
            ending = Ending(control["ending"])
            user_ids = [str(u) for u in control["end"]]
            reason = str(control["reason"])
        except (ValueError, KeyError, TypeError):
            log.warn("Redis: ignoring a malformed control message")
            return
        assert self._registry is not None
        self._registry.end(user_ids, ending, reason)

    def collect(self) -> Iterator[Metric]:
        """Metrics, for prometheus_client."""
        yield GaugeMetricFamily(
            "chat_redis_connected", "Whether Redis is reachable.", int(self.connected)
        )
        yield CounterMetricFamily(
            "chat_redis_published", "Pushes published for other nodes.", self.published
        )
        yield CounterMetricFamily(
            "chat_redis_received", "Pushes received from other nodes.", self.received_count
        )
        yield CounterMetricFamily(
            "chat_redis_dropped", "Pushes not published: Redis was down.", self.dropped
        )

    @staticmethod
    def _ignore(failure: object) -> None:
        # A publish lost to a broken connection: the outage itself is logged once.
        return None

    # -- connections -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=5)
        policy = backoffPolicy(initialDelay=0.2, maxDelay=5.0)
        for protocol_class, ready in (
            (txredisapi.RedisProtocol, self._publisher_ready),
            (_Subscriber, self._subscriber_ready),
        ):
            factory = _RedisFactory(self, protocol_class)
            service = ClientService(
                endpoint, factory, retryPolicy=policy, prepareConnection=ready, clock=reactor
            )
            self._services.append(service)
            service.startService()

    def stopService(self) -> Deferred:
        super().stopService()
        services, self._services = self._services, []
        return gatherResults([s.stopService() for s in services], consumeErrors=True)

    def _publisher_ready(self, connection: txredisapi.RedisProtocol) -> Deferred:
        def ready(_: object) -> None:
            self._publisher = connection
            log.info("Redis: publishing to {host}:{port}", host=self.host, port=self.port)
            connection.whenDisconnected().addCallback(self._publisher_lost, connection)

        return connection.whenConnected().addCallback(ready)

    def _publisher_lost(self, _: object, connection: object) -> None:
        if self._publisher is connection:
            self._publisher = None
            if self.running:
                log.warn(
                    "Redis: connection to {host}:{port} lost; pushes to other nodes are "
                    "dropped until it is back",
                    host=self.host,
                    port=self.port,
                )

    def _subscriber_ready(self, connection: _Subscriber) -> Deferred:
        async def ready() -> None:
            await connection.whenConnected()
            channels = sorted(self._channels)
            for start in range(0, len(channels), SUBSCRIBE_BATCH):
                await connection.subscribe(channels[start : start + SUBSCRIBE_BATCH])
            self._subscriber = connection
            # Users who arrived while we were subscribing.
            missing = sorted(self._channels.difference(channels))
            if missing:
                await connection.subscribe(missing)
            log.info("Redis: subscribed to {n} channels", n=len(self._channels))
            connection.whenDisconnected().addCallback(self._subscriber_lost, connection)

        return Deferred.fromCoroutine(ready())

    def _subscriber_lost(self, _: object, connection: object) -> None:
        if self._subscriber is connection:
            self._subscriber = None
