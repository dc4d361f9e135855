"""Several server nodes sharing one Redis: pushes reach users on any node, and
presence is known across all of them.

Routing by node. Redis holds the cluster's presence map: the set of nodes
(``PREFIX:nodes``) and, per node, the set of users holding a session there
(``PREFIX:node:ID:users``). Each node mirrors the map in memory
(:class:`~chatserver.nodemap.NodeMap`): it loads it whenever it connects to
Redis (at start-up and after an outage), and it announces its own users'
first arrivals and last departures on the presence channel, where every node
hears them. A push is written to the local sessions directly and published at
most once per *other* node that holds a recipient, on that node's own channel,
with the recipients there: a message between two users of one node publishes
nothing; a group message reaching members on two other nodes is two
publishes, whatever the size of the group. Each node subscribes to four
channels whatever its number of users: its own, broadcast, control (ending
sessions everywhere) and presence.

Liveness. Each node refreshes a heartbeat key (``PREFIX:node:ID:alive``) with
a TTL of a few seconds every second, and asks Redis every second whether the
heartbeats of the nodes it knows still exist. A node whose heartbeat expired
(killed, or cut from Redis for longer than the TTL) is forgotten by every
other node, its users go offline there (after the presence grace), and its
keys are removed from Redis. A node that was only slow finds, at its next
heartbeat, that it had been removed, and announces all its users again. A node
stopping cleanly removes itself at once.

Guarantees. Redis pub/sub is at most once: pushes published while Redis is
down or restarting are lost (history stays the source of truth); local
delivery, storage and acknowledgements carry on; each node reconnects, loads
the map again and re-announces its users by itself. A push to a user who
signed in on another node a moment ago (before that node's announcement
arrived) can be missed in the same way.

The scripts address keys they compute, so Redis must be a single primary (as
pub/sub across nodes needs anyway), not Redis Cluster.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, urlparse

import orjson
import txredisapi
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chatserver import wire
from chatserver._internals import write_now
from chatserver.delivery import RegistryObserver
from chatserver.errors import Ending
from chatserver.nodemap import NodeMap
from chatserver.server import PRESENCE_GRACE, PresenceObserver

log = Logger()


class LocalSessions(Protocol):
    """What the cluster needs of this node's registry."""

    observers: list[RegistryObserver]

    def deliver(self, payload: bytes, user_ids: Iterable[str]) -> int: ...

    def deliver_all(self, payload: bytes) -> int: ...

    def end(self, user_ids: Iterable[str], ending: Ending, reason: str) -> int: ...

    def user_ids(self) -> frozenset[str]: ...

    def __contains__(self, user_id: str) -> bool: ...


#: Every message published starts with its node's id, this many bytes.
NODE_ID_BYTES = 16
#: Seconds between two heartbeats (and two checks of the other nodes').
HEARTBEAT_INTERVAL = 1.0
#: Seconds a heartbeat lives: a node silent for this long is taken for dead.
NODE_TTL = 3.0
#: The longest wait between two attempts to reach Redis.
MAX_RECONNECT_DELAY = 5.0
#: Seconds a clean stop waits for Redis to forget this node.
LEAVE_TIMEOUT = 2.0

# Forget the registered nodes whose heartbeat expired (KEYS[1]: the node set;
# ARGV[1]: the node keys' prefix). Every script that reads the map starts so,
# so that no reader sees a dead node's users and no dead node's keys linger.
_REAP = """
local members = redis.call('SMEMBERS', KEYS[1])
local live = {}
for _, node in ipairs(members) do
  if redis.call('EXISTS', ARGV[1] .. node .. ':alive') == 0 then
    redis.call('DEL', ARGV[1] .. node .. ':users')
    redis.call('SREM', KEYS[1], node)
  else
    table.insert(live, node)
  end
end
"""

# The whole map: [node, [user, ...], node, [...], ...] for the live nodes.
SNAPSHOT_SCRIPT = (
    _REAP
    + """
local out = {}
for _, node in ipairs(live) do
  table.insert(out, node)
  table.insert(out, redis.call('SMEMBERS', ARGV[1] .. node .. ':users'))
end
return out
"""
)

# Which of the nodes in ARGV[2..] have no heartbeat any more.
CHECK_SCRIPT = (
    _REAP
    + """
local dead = {}
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i] .. ':alive') == 0 then
    table.insert(dead, ARGV[i])
  end
end
return dead
"""
)

# Refresh this node's heartbeat (KEYS: node set, alive key; ARGV: node id, TTL
# in ms). Returns 1 if the node had been removed as dead meanwhile.
HEARTBEAT_SCRIPT = """
local removed = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return removed
"""

# Register this node with exactly these users and publish its full state
# (KEYS: node set, alive key, users key; ARGV: node id, TTL in ms, presence
# channel, message, users...). Atomic: no reader sees half of it.
REGISTER_SCRIPT = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
for i = 5, #ARGV, 1000 do
  redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# A user's arrival, or departure (KEYS: users key; ARGV: presence channel,
# message, user).
ANNOUNCE_ARRIVAL_SCRIPT = """
redis.call('SADD', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
ANNOUNCE_DEPARTURE_SCRIPT = """
redis.call('SREM', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

# A clean stop (KEYS: node set, alive key, users key; ARGV: node id, presence
# channel, message).
LEAVE_SCRIPT = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


# Redis answers a PUBLISH with the number of subscribers reached, which no
# node needs: each publish goes with CLIENT REPLY SKIP (Redis 3.2 and later),
# so that Redis sends no reply, and the publishing node neither wakes up to
# read one nor keeps a Deferred waiting for it. Expecting no reply, the
# command bypasses txredisapi: it is written to the connection at the end of
# the reactor turn (RedisCluster._flush), and a script written meanwhile goes
# after it, so the connection's commands keep their order.
_SKIP_REPLY = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$4\r\nSKIP\r\n"


def _publish_command(channel: bytes, message: bytes) -> bytes:
    """``PUBLISH channel message`` in RESP, its reply skipped."""
    return b"%b*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        _SKIP_REPLY,
        len(channel),
        channel,
        len(message),
        message,
    )


class _Incomplete(Exception):
    """The reply read so far is not whole yet."""


class RespReader:
    """Reads Redis replies (RESP2) as ``hiredis.Reader`` does, in Python.

    txredisapi's own reader, used when hiredis is not installed, reads a bulk
    string followed by more data by pausing the connection and reading the
    rest in a later reactor turn: three turns and six ``epoll_ctl`` calls for
    every message a subscriber receives. This one reads whatever has arrived
    at once, and gives what ``hiredis.Reader`` gives: bulk strings as bytes,
    status replies as bytes, integers as ints, arrays as lists, nil as
    None, errors as :class:`txredisapi.ResponseError` (returned, not raised).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from Redis."""
        if self._pos:
            # Keep only what is not read yet, so that the buffer stays small.
            self._buffer = self._buffer[self._pos :] + data
            self._pos = 0
        else:
            self._buffer += data

    def gets(self) -> object:
        """The next whole reply, or False if none has arrived whole yet.

        :raise txredisapi.InvalidData: if the bytes are not RESP.
        """
        if self._pos >= len(self._buffer):
            return False
        try:
            reply, self._pos = self._read(self._pos)
        except _Incomplete:
            return False
        return reply

    def _read(self, pos: int) -> tuple[object, int]:
        buffer = self._buffer
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind = buffer[pos]
        line = buffer[pos + 1 : end]
        pos = end + 2
        try:
            if kind == 0x24:  # $: a bulk string
                length = int(line)
                if length < 0:
                    return None, pos
                stop = pos + length
                if len(buffer) < stop + 2:
                    raise _Incomplete
                return buffer[pos:stop], stop + 2
            if kind == 0x2A:  # *: an array
                count = int(line)
                if count < 0:
                    return None, pos
                items = []
                for _ in range(count):
                    item, pos = self._read(pos)
                    items.append(item)
                return items, pos
            if kind == 0x3A:  # :
                return int(line), pos
        except ValueError:
            raise txredisapi.InvalidData(f"not a number in a reply: {line!r}") from None
        if kind == 0x2B:  # +
            return line, pos
        if kind == 0x2D:  # -
            return txredisapi.ResponseError(line.decode(errors="replace")), pos
        raise txredisapi.InvalidData(f"not a Redis reply: {bytes([kind]) + line!r}")


def _reader() -> Any:
    """hiredis's reader (in C) if it is installed, else :class:`RespReader`."""
    try:
        import hiredis
    except ImportError:
        return RespReader()
    return hiredis.Reader(protocolError=txredisapi.InvalidData, replyError=txredisapi.ResponseError)


class _WholeReplies:
    """A txredisapi protocol that reads every reply received at once (see
    :class:`RespReader`), with hiredis if it is installed.

    The replies reach txredisapi as its hiredis protocol hands them over.
    """

    _reader: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reader = _reader()

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        protocol = cast(Any, self)
        reader = self._reader
        if data:
            reader.feed(data)
        reply = reader.gets()
        while reply is not False:
            if isinstance(reply, str | bytes | list):
                reply = protocol.tryConvertData(reply)
            if reply == "QUEUED":
                protocol.transactions += 1
            else:
                reply = protocol.handleTransactionData(reply)
            protocol.replyReceived(reply)
            reply = reader.gets()


class _Publisher(_WholeReplies, txredisapi.RedisProtocol):  # type: ignore[misc]
    cluster: RedisCluster

    def connectionMade(self) -> Any:
        # Nagle off: Redis does not answer a publish (CLIENT REPLY SKIP), so
        # no reply carries its ACK back, and Nagle would hold the next small
        # publish until Linux's delayed ACK (up to 40 ms) came.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError):
                set_no_delay(True)
        return super().connectionMade()


class _RedisFactory(protocol.Factory):
    """Builds txredisapi protocols that keep replies as bytes, numbers too."""

    isLazy = True  # txredisapi logs, rather than raises, auth errors then

    def __init__(self, cluster: RedisCluster, protocol_class: type) -> None:
        self.cluster = cluster
        self.protocol_class = protocol_class

    def buildProtocol(self, addr: object) -> txredisapi.BaseRedisProtocol:
        cluster = self.cluster
        # Replies stay as Redis sent them: bytes, and integers where Redis
        # says so. (txredisapi would read a user id such as "007" as 7.)
        p = self.protocol_class(
            charset=None, dbid=cluster.dbid, password=cluster.password, convertNumbers=False
        )
        p.factory = self
        p.cluster = cluster
        return p

    def stopTrying(self) -> None:
        pass  # called by txredisapi on auth errors; ClientService decides retries

    def connectionError(self, why: str) -> None:
        log.error("Redis: {why}", why=why)


class _Subscriber(_WholeReplies, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    cluster: RedisCluster

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.cluster.received(channel, message)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisCluster(Service):
    """Routes pushes between nodes through Redis, and knows who is online on
    any node (it is the server's router and its presence).

    Give it to :func:`chatserver.build_server` as ``cluster=``; it is
    started with the server (the plugin does so with ``--redis``).

    :ivar node_id: this node's id (random, new at every start), as bytes.
    :ivar observers: told ``presence_changed(user, online)`` when a user's
        first session anywhere in the cluster authorizes, and when their
        last one anywhere closed (after the grace).
    """

    def __init__(
        self,
        url: str,
        reactor: IReactorTime | None = None,
        *,
        heartbeat: float = HEARTBEAT_INTERVAL,
        node_ttl: float = NODE_TTL,
        presence_grace: float = PRESENCE_GRACE,
    ) -> None:
        """
        :param url: ``redis://[:password@]host[:port][/db][?prefix=chat]``;
            the prefix names the keys and channels (pub/sub ignores the db
            number, so deployments sharing a Redis need different prefixes).
        :param heartbeat: seconds between two heartbeats of this node, and
            two checks of the others'.
        :param node_ttl: seconds without a heartbeat after which a node is
            taken for dead (by every node: give all nodes the same).
        :param presence_grace: seconds between a user's last session closing
            anywhere and observers hearing "offline".
        :raise ValueError: if ``url`` is not a ``redis://`` URL.
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
        self._prefix = prefix
        self.node_id = os.urandom(NODE_ID_BYTES // 2).hex().encode()
        self._node = self.node_id.decode()
        self._nodes_key = f"{prefix}:nodes".encode()
        self._node_keys = f"{prefix}:node:".encode()
        self._alive_key = self._node_keys + self.node_id + b":alive"
        self._users_key = self._node_keys + self.node_id + b":users"
        self.broadcast_channel = f"{prefix}:all".encode()
        self.control_channel = f"{prefix}:control".encode()
        self.presence_channel = f"{prefix}:presence".encode()
        self.node_channel = self._channel_of(self._node)
        self._heartbeat = heartbeat
        self._ttl_ms = str(max(1, round(node_ttl * 1000))).encode()
        # After this node reconnects, the others may still be reconnecting:
        # give them the longest reconnection delay (and its jitter) plus a
        # heartbeat's life before their users go offline here.
        self._spare = MAX_RECONNECT_DELAY + 1.0 + node_ttl
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert reactor is not None
        self._reactor = reactor
        self._presence_grace = presence_grace
        self._registry: LocalSessions | None = None
        self._map: NodeMap | None = None
        self.observers: list[PresenceObserver] = []
        self._publisher: txredisapi.RedisProtocol | None = None
        self._subscriber: _Subscriber | None = None
        # The publishing connection this node's users were registered on:
        # announcements go out only on it, after the registration.
        self._registered_on: txredisapi.RedisProtocol | None = None
        self._syncing = False
        self._sync_again = False
        self._beating = False
        self._loop: LoopingCall | None = None
        self._services: list[ClientService] = []
        # Publishes not written yet (see _send), and the call that writes them.
        self._outgoing: list[bytes] = []
        self._flush_call: IDelayedCall | None = None
        self.published = 0
        self.received_count = 0
        self.dropped = 0
        self.announcements = 0
        self.nodes_lost = 0

    def __repr__(self) -> str:
        return f"RedisCluster({self.host}:{self.port}, node {self._node})"

    @property
    def connected(self) -> bool:
        """Whether both the publishing and the subscribing connection are up."""
        return self._publisher is not None and self._subscriber is not None

    @property
    def map(self) -> NodeMap:
        """This node's mirror of the presence map (once bound)."""
        assert self._map is not None, "bind() the cluster to a registry first"
        return self._map

    def _channel_of(self, node: str) -> bytes:
        return f"{self._prefix}:to:{node}".encode()

    # -- wiring ------------------------------------------------------------

    def bind(self, registry: LocalSessions) -> None:
        """Deliver locally through ``registry`` and follow its users."""
        self._registry = registry
        self._map = NodeMap(registry, self._reactor, self._presence_grace)
        # One list, so that observers added to either are told.
        self._map.observers = self.observers
        registry.observers.append(self)

    def user_arrived(self, user_id: str) -> None:
        """A user's first session here: online here, announced to the others."""
        self.map.local_arrived(user_id)
        self._announce(user_id, True)

    def user_left(self, user_id: str) -> None:
        """A user's last session here closed."""
        self.map.local_left(user_id)
        self._announce(user_id, False)

    def _announce(self, user_id: str, arrived: bool) -> None:
        # At once rather than batched with the reactor turn's other arrivals:
        # the sooner the others know, the smaller the window in which a push
        # to a user who has just signed in here is not routed here.
        publisher = self._publisher
        if self._registered_on is not publisher or publisher is None:
            return  # the next registration announces every user there is then
        news = {"on": [user_id]} if arrived else {"off": [user_id]}
        message = self.node_id + orjson.dumps(news)
        script = ANNOUNCE_ARRIVAL_SCRIPT if arrived else ANNOUNCE_DEPARTURE_SCRIPT
        args = [self.presence_channel, message, user_id]
        self._eval(publisher, script, [self._users_key], args).addErrback(self._ignore)
        self.announcements += 1

    # -- delivery ----------------------------------------------------------

    def push(self, event_type: str, data: object, user_ids: Iterable[str]) -> int:
        """Push to ``user_ids``: to their sessions here directly, and once to
        each other node holding at least one of them (none if all are here).

        :return: the number of local sessions written to.
        """
        assert self._registry is not None
        user_ids = tuple(user_ids)
        payload = wire.push(event_type, data)
        sent = self._registry.deliver(payload, user_ids)
        targets = self.map.route(user_ids)
        if not targets:
            return sent
        publisher = self._publisher
        if publisher is None:
            self.dropped += len(targets)
            return sent
        node_id = self.node_id
        for node, recipients in targets.items():
            message = node_id + orjson.dumps(recipients) + b"\n" + payload
            self._send(_publish_command(self._channel_of(node), message))
        self.published += len(targets)
        return sent

    def push_all(self, event_type: str, data: object) -> int:
        """Push to every authorized session, on every node (one publish)."""
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
        # To every node, not only those the map names: a session that has
        # just authorized elsewhere may not be announced yet.
        control = {"end": user_ids, "ending": ending.value, "reason": reason}
        self._publish(self.control_channel, orjson.dumps(control))
        return ended

    def online(self, user_ids: Iterable[str]) -> dict[str, bool]:
        """Whether each user has a session on any node (or had one until
        less than the presence grace ago, as observers were told)."""
        return self.map.online(user_ids)

    def _publish(self, channel: bytes, payload: bytes) -> None:
        if self._publisher is None:
            self.dropped += 1
        else:
            self._send(_publish_command(channel, self.node_id + payload))
            self.published += 1

    def _send(self, command: bytes) -> None:
        # Publishes wait for the end of the reactor turn, to leave in one
        # write with the others of the turn.
        self._outgoing.append(command)
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Write the publishes of this reactor turn to Redis, at once.

        Straight to the socket when nothing is queued for it: a queued write
        would cost two ``epoll_ctl`` calls and a reactor turn more per push.
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        outgoing, self._outgoing = self._outgoing, []
        publisher = self._publisher
        if outgoing and publisher is not None and publisher.transport is not None:
            write_now(publisher.transport, b"".join(outgoing))

    def _eval(
        self, publisher: txredisapi.RedisProtocol, script: str, keys: list[bytes], args: list[Any]
    ) -> Deferred[Any]:
        """``publisher.eval``, after the publishes queued before it: the
        connection's commands reach Redis in the order they were made."""
        self._flush()
        d: Deferred[Any] = publisher.eval(script, keys, args)
        return d

    def received(self, channel: bytes, message: bytes) -> None:
        """A message published by a node (ourselves included) arrived."""
        sender = message[:NODE_ID_BYTES]
        if sender == self.node_id or self._registry is None:
            return  # delivered locally already
        body = message[NODE_ID_BYTES:]
        try:
            if channel == self.node_channel:
                recipients, _, payload = body.partition(b"\n")
                self._registry.deliver(payload, [str(u) for u in orjson.loads(recipients)])
                self.received_count += 1
            elif channel == self.presence_channel:
                self._presence(sender.decode(), orjson.loads(body))
            elif channel == self.broadcast_channel:
                self.received_count += 1
                self._registry.deliver_all(body)
            elif channel == self.control_channel:
                self._control(orjson.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warn("Redis: ignoring a malformed message on {channel}", channel=channel)

    def _presence(self, node: str, news: dict[str, Any]) -> None:
        if news.get("gone"):
            self.map.forget(node)
        elif "users" in news:
            self.map.replace(node, [str(u) for u in news["users"]])
        else:
            arrived = [str(u) for u in news.get("on", ())]
            left = [str(u) for u in news.get("off", ())]
            self.map.announce(node, arrived, left)

    def _control(self, control: dict[str, Any]) -> None:
        ending = Ending(control["ending"])
        user_ids = [str(u) for u in control["end"]]
        reason = str(control["reason"])
        assert self._registry is not None
        self._registry.end(user_ids, ending, reason)

    def collect(self) -> Iterator[Metric]:
        """Metrics, for prometheus_client."""
        yield GaugeMetricFamily(
            "chat_redis_connected", "Whether Redis is reachable.", int(self.connected)
        )
        yield CounterMetricFamily(
            "chat_redis_published",
            "Pushes published for other nodes (one per node holding recipients).",
            self.published,
        )
        yield CounterMetricFamily(
            "chat_redis_received", "Pushes received from other nodes.", self.received_count
        )
        yield CounterMetricFamily(
            "chat_redis_dropped", "Pushes not published: Redis was down.", self.dropped
        )
        yield CounterMetricFamily(
            "chat_redis_presence_announcements",
            "Announcements of users arriving on or leaving this node.",
            self.announcements,
        )
        if self._map is not None:
            yield GaugeMetricFamily(
                "chat_redis_nodes", "Other nodes known to be alive.", len(self._map.nodes())
            )
            remote = self._map.remote_users()
            local = self._registry.user_ids() if self._registry is not None else frozenset()
            yield GaugeMetricFamily(
                "chat_redis_users_online",
                "Users with a session on any node of the cluster.",
                len(remote | local),
            )
        yield CounterMetricFamily(
            "chat_redis_nodes_lost",
            "Nodes forgotten because their heartbeat expired.",
            self.nodes_lost,
        )

    @staticmethod
    def _ignore(failure: object) -> None:
        # A command lost to a broken connection: the outage itself is logged once.
        return None

    # -- connections -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        reactor = self._reactor
        endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=5)
        policy = backoffPolicy(initialDelay=0.2, maxDelay=MAX_RECONNECT_DELAY)
        for protocol_class, ready in (
            (_Publisher, self._publisher_ready),
            (_Subscriber, self._subscriber_ready),
        ):
            factory = _RedisFactory(self, protocol_class)
            service = ClientService(
                endpoint,
                factory,
                retryPolicy=policy,
                prepareConnection=cast(Callable[[IProtocol], object], ready),
                clock=reactor,
            )
            self._services.append(service)
            service.startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._loop.start(self._heartbeat, now=False).addErrback(
            lambda f: log.failure("Redis: the heartbeat stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._map is not None:
            self._map.stop()
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        self._flush()  # the last publishes go before the node does
        publisher = self._publisher
        registered, self._registered_on = self._registered_on, None  # no more announcements
        if registered is publisher and publisher is not None:
            # Tell the others now, rather than let them wait for the heartbeat
            # to expire.
            message = self.node_id + orjson.dumps({"gone": True})
            d = self._eval(
                publisher,
                LEAVE_SCRIPT,
                [self._nodes_key, self._alive_key, self._users_key],
                [self.node_id, self.presence_channel, message],
            )
            try:
                await d.addTimeout(LEAVE_TIMEOUT, self._reactor)
            except Exception:
                pass  # the heartbeat expires by itself
        services, self._services = self._services, []
        await gatherResults([s.stopService() for s in services], consumeErrors=True)

    def _publisher_ready(self, connection: txredisapi.RedisProtocol) -> Deferred[None]:
        def ready(_: object) -> None:
            self._publisher = connection
            log.info("Redis: publishing to {host}:{port}", host=self.host, port=self.port)
            connection.whenDisconnected().addCallback(self._publisher_lost, connection)
            self._sync()

        d: Deferred[None] = connection.whenConnected().addCallback(ready)
        return d

    def _publisher_lost(self, _: object, connection: object) -> None:
        if self._publisher is connection:
            self._publisher = None
            self._registered_on = None
            if self.running:
                log.warn(
                    "Redis: connection to {host}:{port} lost; pushes to other nodes are "
                    "dropped until it is back",
                    host=self.host,
                    port=self.port,
                )

    def _subscriber_ready(self, connection: _Subscriber) -> Deferred[None]:
        async def ready() -> None:
            await connection.whenConnected()
            channels = [
                self.node_channel,
                self.presence_channel,
                self.broadcast_channel,
                self.control_channel,
            ]
            await connection.subscribe(channels)
            self._subscriber = connection
            connection.whenDisconnected().addCallback(self._subscriber_lost, connection)
            self._sync()

        return Deferred.fromCoroutine(ready())

    def _subscriber_lost(self, _: object, connection: object) -> None:
        if self._subscriber is connection:
            self._subscriber = None

    # -- the map, heartbeats ----------------------------------------------------

    def _sync(self) -> None:
        """Once both connections are up: register this node's users and load
        the whole map (again, after an outage: announcements were missed)."""
        if not self.connected:
            return
        if self._syncing:
            self._sync_again = True
            return
        self._syncing = True
        d = Deferred.fromCoroutine(self._load())
        d.addErrback(lambda f: log.warn("Redis: loading the presence map failed: {e}", e=f.value))
        d.addBoth(self._synced)

    def _synced(self, _: object) -> None:
        self._syncing = False
        if self._sync_again:
            self._sync_again = False
            self._sync()

    async def _load(self) -> None:
        publisher = self._publisher
        assert publisher is not None
        await self._register(publisher)
        reply = await self._eval(publisher, SNAPSHOT_SCRIPT, [self._nodes_key], [self._node_keys])
        snapshot = {
            _text(reply[i]): [_text(u) for u in reply[i + 1]]
            for i in range(0, len(reply), 2)
            if _text(reply[i]) != self._node
        }
        self.map.reconnected(snapshot, self._spare)
        log.info(
            "Redis: subscribed to 4 channels; {users} users online on {nodes} other nodes",
            users=len(self.map.remote_users()),
            nodes=len(snapshot),
        )

    def _register(self, publisher: txredisapi.RedisProtocol) -> Deferred[Any]:
        assert self._registry is not None
        # What happens from now on is announced after this, on the same
        # connection, so the others see it in order.
        self._registered_on = publisher
        users = sorted(self._registry.user_ids())
        message = self.node_id + orjson.dumps({"users": users})
        d: Deferred[Any] = self._eval(
            publisher,
            REGISTER_SCRIPT,
            [self._nodes_key, self._alive_key, self._users_key],
            [self.node_id, self._ttl_ms, self.presence_channel, message, *users],
        )
        self.announcements += 1
        return d

    def _tick(self) -> None:
        publisher = self._publisher
        if publisher is None or self._registered_on is not publisher or self._beating:
            return  # not registered yet, or the last beat is still waiting for Redis
        self._beating = True
        d = Deferred.fromCoroutine(self._beat(publisher))
        d.addErrback(self._ignore)
        d.addBoth(self._beaten)

    def _beaten(self, _: object) -> None:
        self._beating = False

    async def _beat(self, publisher: txredisapi.RedisProtocol) -> None:
        removed = await self._eval(
            publisher,
            HEARTBEAT_SCRIPT,
            [self._nodes_key, self._alive_key],
            [self.node_id, self._ttl_ms],
        )
        if removed and self._registered_on is publisher and not self._syncing:
            log.warn("Redis: this node had been taken for dead; announcing its users again")
            await self._register(publisher)
        suspects = self.map.nodes()
        dead = await self._eval(
            publisher, CHECK_SCRIPT, [self._nodes_key], [self._node_keys, *suspects]
        )
        for node in self.map.expired(_text(n) for n in dead):
            self.nodes_lost += 1
            log.warn("Redis: node {node} stopped answering; its users are offline", node=node)
