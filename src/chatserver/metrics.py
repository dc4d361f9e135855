"""What the server counts, and its Prometheus exposition.

The hot path only bumps plain integers (a dict increment costs a fraction of a
prometheus_client metric's lock and label lookup); prometheus_client turns them
into metric families when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from chatserver.factory import ChatServerFactory

# Seconds; storage calls range from microseconds (memory) to seconds (a sick database).
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """Cumulative-at-scrape histogram: one bucket count bumped per observation."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(STORAGE_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(STORAGE_BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        total = 0
        out = []
        for bound, count in zip((*STORAGE_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class ServerStats:
    """Counters the protocol and the handler bump as they work."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (action, outcome)
        self.errors: Counter[str] = Counter()  # error code
        self.messages_stored = 0
        self.storage: dict[str, LatencyHistogram] = {}

    def observe_storage(self, operation: str, seconds: float) -> None:
        histogram = self.storage.get(operation)
        if histogram is None:
            histogram = self.storage[operation] = LatencyHistogram()
        histogram.observe(seconds)


class StatsCollector:
    """A prometheus_client collector reading one server's counters."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        factory = self.factory
        stats = factory.stats
        yield GaugeMetricFamily(
            "chat_connections_open", "Open WebSocket connections.", len(factory.connections)
        )
        yield GaugeMetricFamily(
            "chat_connections_authorized",
            "Open connections that have authorized.",
            factory.registry.connection_count,
        )
        yield GaugeMetricFamily(
            "chat_users_online", "Users with a connection here.", factory.registry.user_count
        )
        requests = CounterMetricFamily(
            "chat_requests",
            "Requests answered, by action and outcome.",
            labels=["action", "outcome"],
        )
        for (action, outcome), n in sorted(stats.requests.items()):
            requests.add_metric([action, outcome], n)
        yield requests
        errors = CounterMetricFamily("chat_errors", "Error replies, by code.", labels=["code"])
        for code, n in sorted(stats.errors.items()):
            errors.add_metric([code], n)
        yield errors
        yield CounterMetricFamily(
            "chat_rate_limited", "Requests refused by the rate limit.", stats.errors["rateLimited"]
        )
        yield CounterMetricFamily(
            "chat_messages_stored", "Chat messages stored (acknowledged).", stats.messages_stored
        )
        yield CounterMetricFamily(
            "chat_pushes", "Frames pushed to connections here.", factory.registry.pushes
        )
        storage = HistogramMetricFamily(
            "chat_storage_call_seconds", "Storage call latency.", labels=["operation"]
        )
        for operation, histogram in sorted(stats.storage.items()):
            storage.add_metric([operation], histogram.buckets(), histogram.sum)
        yield storage
        cluster = factory.cluster
        if cluster is not None:
            yield GaugeMetricFamily(
                "chat_redis_connected", "Whether Redis is reachable.", int(cluster.connected)
            )
            yield CounterMetricFamily(
                "chat_redis_published", "Pushes published for other nodes.", cluster.published
            )
            yield CounterMetricFamily(
                "chat_redis_received", "Pushes received from other nodes.", cluster.received_count
            )
            yield CounterMetricFamily(
                "chat_redis_dropped", "Pushes not published: Redis was down.", cluster.dropped
            )


def metrics_registry(factory: ChatServerFactory) -> CollectorRegistry:
    """A registry exposing ``factory``'s metrics (one per server, so that
    several servers in one process do not mix their figures)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatsCollector(factory))
    return registry
