"""Logs no client can flood, or forge lines in."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from chatserver.logs import Throttle, escape


def test_one_event_per_kind_per_interval_with_a_count_of_the_rest():
    events = []
    clock = Clock()
    throttle = Throttle(clock, interval=10, logger=Logger(observer=events.append))
    for _ in range(5):
        throttle.warn("k", "attack")
    throttle.warn("other", "different")
    clock.advance(10)
    throttle.warn("k", "attack")
    texts = [e["log_format"] for e in events]
    assert texts == ["attack", "different", "attack (4 similar suppressed)"]
    assert all(e["log_level"] == LogLevel.warn for e in events)


def test_kinds_are_bounded():
    clock = Clock()
    throttle = Throttle(clock, logger=Logger(observer=lambda e: None))
    for n in range(5000):
        throttle.info(f"k{n}", "x")
    assert len(throttle._last) <= 1024


def test_escape_keeps_one_printable_line():
    assert escape("a\nFORGED\r\x00\u202e") == "a\\x0aFORGED\\x0d\\x00\\u202e"
    assert escape("\ud800") == "\\ud800"
    assert escape(5) == "5"
    assert len(escape("x" * 1000)) <= 81
