"""Limits and the small mechanisms that enforce them."""

from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport

from chatserver.limits import Limits, PendingConnections, TokenBucket


def test_token_bucket_allows_bursts_then_the_rate():
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1) is True  # one token back after 1/rate seconds
    assert bucket.take(0.1) is False
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


@pytest.mark.parametrize(
    "fields",
    [
        {"rate": -1},
        {"max_request_bytes": 300_000},
        {"ping_interval": 0.5},
        {"ping_timeout": 0.2},
    ],
)
def test_invalid_limits_are_refused(fields):
    with pytest.raises(ValueError):
        Limits(**fields)


class Transport(StringTransport):
    def abortConnection(self) -> None:
        self.aborted = True


def test_the_oldest_pending_connection_makes_room():
    pending = PendingConnections(limit=2)
    first, second, third = Transport(), Transport(), Transport()
    assert pending.admit(first) and pending.admit(second)
    pending.admit(second)  # again: no change
    assert len(pending) == 2
    pending.admit(third)
    assert getattr(first, "aborted", False) and not getattr(second, "aborted", False)
    pending.settle(second)  # authorized
    pending.admit(Transport())
    assert not getattr(second, "aborted", False) and not getattr(third, "aborted", False)
    assert pending.evicted == 1


def test_no_cap():
    pending = PendingConnections(limit=0)
    assert pending.admit(Transport()) is False
    assert len(pending) == 0
