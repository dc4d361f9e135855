"""What the server counts, and its Prometheus exposition.

The hot path only bumps plain integers (a dict increment costs a fraction of a
prometheus_client metric's lock and label lookup). Each part that counts
something exposes a ``collect()`` yielding metric families, as a
prometheus_client collector does; the wiring registers those parts in one
:class:`~prometheus_client.CollectorRegistry` per server.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

# Seconds; storage calls range from microseconds (memory) to seconds (a sick database).
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Collector(Protocol):
    """A part of the server that has figures to show."""

    def collect(self) -> Iterator[Metric]: ...


class LatencyHistogram:
    """Cumulative-at-scrape histogram: one bucket count bumped per observation."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(STORAGE_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(STORAGE_BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*STORAGE_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class ServerStats:
    """Counters the protocol and the handlers bump as they work."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (action, outcome)
        self.errors: Counter[str] = Counter()  # error code
        self.closes: Counter[str] = Counter()  # why the server closed a connection
        self.messages_stored = 0
        self.storage: dict[str, LatencyHistogram] = {}

    def observe_storage(self, operation: str, seconds: float) -> None:
        histogram = self.storage.get(operation)
        if histogram is None:
            histogram = self.storage[operation] = LatencyHistogram()
        histogram.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "chat_requests",
            "Requests answered, by action and outcome.",
            labels=["action", "outcome"],
        )
        for (action, outcome), n in sorted(self.requests.items()):
            requests.add_metric([action, outcome], n)
        yield requests
        errors = CounterMetricFamily("chat_errors", "Error replies, by code.", labels=["code"])
        for code, n in sorted(self.errors.items()):
            errors.add_metric([code], n)
        yield errors
        closes = CounterMetricFamily(
            "chat_closed_by_server", "Connections the server closed, by reason.", labels=["reason"]
        )
        for reason, n in sorted(self.closes.items()):
            closes.add_metric([reason], n)
        yield closes
        yield CounterMetricFamily(
            "chat_rate_limited", "Requests refused by the rate limit.", self.errors["rateLimited"]
        )
        yield CounterMetricFamily(
            "chat_messages_stored", "Chat messages stored (acknowledged).", self.messages_stored
        )
        storage = HistogramMetricFamily(
            "chat_storage_call_seconds", "Storage call latency.", labels=["operation"]
        )
        for operation, histogram in sorted(self.storage.items()):
            storage.add_metric([operation], histogram.buckets(), histogram.sum)
        yield storage


def metrics_registry(parts: Iterable[Collector]) -> CollectorRegistry:
    """A registry exposing the figures of ``parts`` (one per server, so that
    several servers in one process do not mix their figures)."""
    registry = CollectorRegistry(auto_describe=True)
    for part in parts:
        registry.register(part)
    return registry
