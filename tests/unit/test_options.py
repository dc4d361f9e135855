"""Command-line options."""

from __future__ import annotations

import pytest
from twisted.python import usage

from chatserver.options import Options


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_every_limit_is_an_option():
    options = parse("--rate", "5", "--max-in-flight", "4", "--ping-interval", "20")
    assert options.limits.rate == 5
    assert options.limits.max_in_flight == 4
    assert options.limits.ping_interval == 20


@pytest.mark.parametrize(
    "argv",
    [
        ("--port", "70000"),
        ("--max-history", "0"),
        ("--rate", "-1"),
        ("--ping-interval", "0.5"),
        ("--workers", "2"),
        ("--directory", "everyone"),
        ("--max-request-bytes", "999999999"),
    ],
)
def test_mistakes_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_directory_and_origins():
    options = parse(
        "--directory", "all", "--allowed-origins", "https://a.example, https://b.example"
    )
    assert options["directory"] == "all"
    assert options.allowed_origins == ["https://a.example", "https://b.example"]


def test_a_server_process_freezes_what_start_up_made_and_collects_less_often():
    import gc

    from chatserver.tap import GC_THRESHOLDS, SettleMemory

    before = gc.get_threshold()
    try:
        SettleMemory().startService()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_workers_refuse_a_store_each_would_hold_alone():
    with pytest.raises(usage.UsageError, match="a store the workers share"):
        parse(
            "--port",
            "4001",
            "--workers",
            "2",
            "--redis",
            "redis://127.0.0.1/0",
            "--storage",
            "memory",
        )
    assert (
        parse("--port", "4001", "--workers", "2", "--redis", "redis://127.0.0.1/0")["workers"] == 2
    )
