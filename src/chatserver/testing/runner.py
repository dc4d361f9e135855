"""``python -m chatserver.testing module:Factory``: check a store in one command.

Runs :class:`~chatserver.testing.StorageConformanceTests`, plus the suite of
every optional interface the store declares, against fresh stores made by
calling ``Factory()`` (a class, or any callable, found in ``module``, which
may sit in the working directory), and prints each rule of the contract with
whether the store keeps it. The exit status is 0 when every rule passes, 1
when one fails, 2 when the store cannot be tested at all.

Users and groups: a store that provides :class:`IAccountStore` is given them
through ``add_user(user_id, token=token)`` and ``add_group(group_id,
member_ids)``. Otherwise, ``module`` defines how, as two functions::

    def conformance_add_user(storage, user_id, token):
        ...  # make `token` authorize as `user_id`; may return the token that does

    def conformance_add_group(storage, group_id, member_ids):
        ...  # create the group, or replace its members

and, if the store needs closing after each test, ``conformance_close(storage)``.
These win over :class:`IAccountStore` when both exist. A store that is a
Twisted ``IService`` is started before each test and stopped after it, as
the server does. Every function may return a plain value, a Deferred or a
coroutine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.application.service import IService
from zope.interface import Interface

from chatserver.interfaces import (
    IAccountStore,
    IChatStorage,
    IConversationStore,
    ISessionRevocations,
    IUserDirectory,
)

PROG = "python -m chatserver.testing"

#: Each suite: the interface it checks, its mixin, and its module. The mixins
#: are imported only once pytest runs, so that it rewrites their assertions.
SUITES: tuple[tuple[type[Interface], str, str], ...] = (
    (IChatStorage, "StorageConformanceTests", "chatserver.testing.conformance"),
    (IUserDirectory, "DirectoryConformanceTests", "chatserver.testing.directory"),
    (IConversationStore, "ConversationConformanceTests", "chatserver.testing.conversations"),
    (IAccountStore, "AccountConformanceTests", "chatserver.testing.accounts"),
    (ISessionRevocations, "RevocationConformanceTests", "chatserver.testing.accounts"),
)

HOOKS = ("conformance_add_user", "conformance_add_group", "conformance_close")


class UsageError(Exception):
    """The store cannot be tested; the message says why, and what to do."""


@dataclass
class Target:
    """What to test: a factory of fresh stores, and how to provision them."""

    spec: str
    factory: Callable[[], Any]
    interfaces: list[type[Interface]]
    hooks: dict[str, Callable[..., Any]]


def resolve(spec: str) -> Target:
    """Import ``module:name`` and work out which suites apply.

    :raise UsageError: if ``spec`` names nothing that makes stores we can test.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise UsageError(f"name the store as module:Factory (e.g. mystore:MyStorage), not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UsageError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    factory: Any = module
    for part in name.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no {name!r}") from None
    if IChatStorage.providedBy(factory) or not callable(factory):
        raise UsageError(
            f"{spec} is a store, not a class or factory: the suite needs a fresh store "
            "for each test, so name something that makes one when called with no arguments"
        )
    try:
        sample = factory()
    except Exception as e:
        raise UsageError(f"calling {spec}() failed: {type(e).__name__}: {e}") from None
    if not IChatStorage.providedBy(sample):
        raise UsageError(
            f"{spec}() made {sample!r}, which does not provide IChatStorage: "
            "declare it with @implementer(IChatStorage)"
        )
    hooks = {hook: getattr(module, hook) for hook in HOOKS if callable(getattr(module, hook, None))}
    missing = [h for h in HOOKS[:2] if h not in hooks]
    if missing and not IAccountStore.providedBy(sample):
        raise UsageError(
            f"the suite cannot give {spec} users and groups: provide IAccountStore, or define "
            f"{' and '.join(f'{h}(...)' for h in missing)} in {module_name} "
            f"(see {PROG} --help)"
        )
    interfaces = [iface for iface, _, _ in SUITES if iface.providedBy(sample)]
    return Target(spec, factory, interfaces, hooks)


_target: Target | None = None


def conformance_classes() -> dict[str, type]:
    """The pytest class that checks the store being run, for the module that
    :func:`main` has pytest collect."""
    assert _target is not None
    target = _target
    mixins = [
        getattr(importlib.import_module(module), mixin)
        for iface, mixin, module in reversed(SUITES)
        if iface in target.interfaces
    ]

    class TestStorage(*mixins):  # type: ignore[misc]  # bases chosen at run time
        async def make_storage(self) -> Any:
            storage = target.factory()
            if IService.providedBy(storage):
                await _maybe(storage.startService())
            return storage

        async def close_storage(self, storage: Any) -> None:
            try:
                if "conformance_close" in target.hooks:
                    await _maybe(target.hooks["conformance_close"](storage))
            finally:
                if IService.providedBy(storage):
                    await _maybe(storage.stopService())

        def add_user(self, storage: Any, user_id: str, token: str) -> Any:
            if "conformance_add_user" in target.hooks:
                return target.hooks["conformance_add_user"](storage, user_id, token)
            return storage.add_user(user_id, token=token)

        def add_group(self, storage: Any, group_id: str, member_ids: list[str]) -> Any:
            if "conformance_add_group" in target.hooks:
                return target.hooks["conformance_add_group"](storage, group_id, member_ids)
            return storage.add_group(group_id, member_ids)

    return {"TestStorage": TestStorage}


async def _maybe(result: Any) -> Any:
    from twisted.internet.defer import maybeDeferred

    return await maybeDeferred(lambda: result)


# The test module pytest collects: it must import the suites itself, after
# asking pytest to rewrite their assertions.
_MODULE = """\
import pytest

pytest.register_assert_rewrite({modules})

from chatserver.testing.runner import conformance_classes

globals().update(conformance_classes())
"""


@dataclass
class Outcome:
    suite: str
    rule: str
    status: str  # PASS, FAIL, SKIP
    detail: str = ""


@dataclass
class Collector:
    """A pytest plugin that records each rule's outcome."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    rules: dict[str, tuple[str, str]] = field(default_factory=dict)

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        for item in items:
            function = getattr(item, "function", None)
            owner = function.__qualname__.split(".")[0] if function else ""
            suite = next((i.__name__ for i, mixin, _ in SUITES if mixin == owner), owner)
            self.rules[item.nodeid] = (suite, rule_of(item.name, function))
            self.order.append(item.nodeid)

    def pytest_runtest_logreport(self, report: Any) -> None:
        suite, rule = self.rules.get(report.nodeid, ("", report.nodeid))
        if report.skipped and report.nodeid not in self.outcomes:
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else ""
            self.outcomes[report.nodeid] = Outcome(
                suite, rule, "SKIP", reason.removeprefix("Skipped: ")
            )
        elif report.failed:
            detail = failure_text(report)
            if report.when != "call":
                detail = (
                    f"(while {'setting up' if report.when == 'setup' else 'cleaning up'}) {detail}"
                )
            self.outcomes[report.nodeid] = Outcome(suite, rule, "FAIL", detail)
        elif report.when == "call" and report.passed:
            self.outcomes.setdefault(report.nodeid, Outcome(suite, rule, "PASS"))


def rule_of(name: str, function: Any) -> str:
    """A test's rule in words: its docstring, plain, or else its name."""
    doc = (function.__doc__ or "") if function else ""
    if not doc.strip():
        return name.removeprefix("test_").replace("_", " ")
    return re.sub(r"\s+", " ", doc.replace("``", "")).strip()


def failure_text(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    lines = [line for line in text.splitlines() if line.strip() and "Use -v" not in line][:4]
    return "\n".join(textwrap.shorten(line, 300, placeholder=" ...") for line in lines)


def report(target: Target, collector: Collector, out: Any) -> tuple[int, int, int]:
    """Print the rules suite by suite; return how many passed, failed, were skipped."""
    provided = ", ".join(i.__name__ for i in target.interfaces)
    absent = [i.__name__ for i, _, _ in SUITES if i not in target.interfaces]
    print(f"Storage conformance of {target.spec}: provides {provided}", file=out)
    if absent:
        print(f"(not provided, not checked: {', '.join(absent)})", file=out)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    suite = None
    for nodeid in collector.order:
        outcome = collector.outcomes.get(nodeid)
        if outcome is None:
            continue
        if outcome.suite != suite:
            suite = outcome.suite
            print(f"\n{suite}", file=out)
        counts[outcome.status] += 1
        print(
            textwrap.fill(
                outcome.rule, 100, initial_indent=f"  {outcome.status}  ", subsequent_indent=" " * 8
            ),
            file=out,
        )
        if outcome.detail:
            print(textwrap.indent(outcome.detail, " " * 8), file=out)
    print(
        f"\n{counts['PASS']} rules kept, {counts['FAIL']} broken, {counts['SKIP']} skipped",
        file=out,
    )
    return counts["PASS"], counts["FAIL"], counts["SKIP"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check a chat store against the storage contract.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("store", help="the store's class or factory, as module:Name")
    parser.add_argument("-k", metavar="EXPRESSION", help="run only the tests pytest -k selects")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's own report too")
    args = parser.parse_args(argv)
    # As `python -m` does, unless -P or the like stopped it: the user's
    # module is usually in the directory they run this from.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    global _target
    try:
        _target = resolve(args.store)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    collector = Collector()
    with tempfile.TemporaryDirectory(prefix="chatserver-conformance-") as scratch:
        modules = sorted({module for i, _, module in SUITES if i in _target.interfaces})
        with open(os.path.join(scratch, "test_conformance.py"), "w") as f:
            f.write(_MODULE.format(modules=", ".join(map(repr, modules))))
        with open(os.path.join(scratch, "pytest.ini"), "w") as f:
            f.write("[pytest]\n")  # so that no configuration of the user's applies
        pytest_args = [
            os.path.join(scratch, "test_conformance.py"),
            "-c",
            os.path.join(scratch, "pytest.ini"),
            "--rootdir",
            scratch,
            "-p",
            "no:cacheprovider",
        ]
        if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            pytest_args += ["-p", "pytest_twisted"]
        if args.k:
            pytest_args += ["-k", args.k]
        if args.verbose:
            pytest_args += ["-v"]
        else:
            pytest_args += ["-p", "no:terminal"]
        status = pytest.main(pytest_args, plugins=[collector])
    _, failed, _ = report(_target, collector, sys.stdout)
    if failed:
        return 1
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        print(f"{PROG}: pytest stopped with {pytest.ExitCode(status).name}", file=sys.stderr)
        return 1 if status == pytest.ExitCode.TESTS_FAILED else 2
    return 0
