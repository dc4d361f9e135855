"""``python -m chatserver.testing module:Factory``, run as a user would: a
separate process, in a directory holding their store's module."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import chatserver
from chatserver.testing.runner import SUITES, rule_of

SRC = str(Path(chatserver.__file__).resolve().parents[1])

GOOD = """\
from chatserver import MemoryStorage


class GoodStore(MemoryStorage):
    '''Everything, provisioned through IAccountStore.'''
"""

SERVICE = """\
import itertools
import os
import tempfile

from chatserver import SQLiteStorage

DIRECTORY = tempfile.mkdtemp()
NUMBERS = itertools.count()


def make():
    # A Twisted service: the runner must start and stop it around each test.
    return SQLiteStorage(os.path.join(DIRECTORY, f"{next(NUMBERS)}.sqlite3"))
"""

BROKEN = """\
from twisted.internet.defer import succeed
from zope.interface import implementer

from chatserver import IChatStorage


@implementer(IChatStorage)
class BrokenStore:
    '''Forgets to reverse history, and lets anyone read anything.'''

    def __init__(self):
        self.users, self.groups, self.messages = {}, {}, []

    def authorize(self, credentials):
        return succeed(self.users.get(credentials.get("token")))

    def create(self, message):
        key = (message["from"], message.get("clientMessageId"))
        for stored in self.messages:
            if key[1] is not None and (stored["from"], stored.get("clientMessageId")) == key:
                return succeed(stored)
        stored = {**message, "_id": str(len(self.messages) + 1)}
        self.messages.append(stored)
        return succeed(stored)

    def getMessages(self, query):
        me, other = query["ids"]
        if query.get("isGroup"):
            found = [m for m in self.messages if m.get("isGroup") and m["to"] == other]
        else:
            found = [
                m for m in self.messages
                if not m.get("isGroup") and {m["from"], m["to"]} == {me, other}
            ]
        found.sort(key=lambda m: m["createdAt"])
        return succeed(found[query["skip"]: query["skip"] + query["limit"]])

    def read(self, messageId, userId):
        for message in self.messages:
            if message["_id"] == messageId:
                if message.get("isGroup"):
                    message.setdefault("readBy", [])
                    if userId not in message["readBy"]:
                        message["readBy"].append(userId)
                else:
                    message["read"] = True
                return succeed(message)
        return succeed(None)

    def getGroupUserIds(self, data):
        return succeed(list(self.groups.get(data["groupId"], [])))


def conformance_add_user(storage, user_id, token):
    storage.users[token] = {"id": user_id}


def conformance_add_group(storage, group_id, member_ids):
    storage.groups[group_id] = list(member_ids)
"""

NO_HOOKS = """\
from brokenstore import BrokenStore

instance = BrokenStore()
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stores")
    for name, text in (
        ("goodstore", GOOD),
        ("servicestore", SERVICE),
        ("brokenstore", BROKEN),
        ("nohooks", NO_HOOKS),
    ):
        (directory / f"{name}.py").write_text(text)
    return directory


def run(*args, cwd, pythonpath=()):
    paths = [*map(str, pythonpath), SRC, os.environ.get("PYTHONPATH", "")]
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        timeout=300,
    )


def checker(spec, cwd):
    return run("-m", "chatserver.testing", spec, cwd=cwd)


def lines_with(output, status):
    return [line.strip() for line in output.splitlines() if line.startswith(f"  {status}  ")]


def test_a_store_that_keeps_every_rule(scratch):
    result = checker("goodstore:GoodStore", scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith(
        "Storage conformance of goodstore:GoodStore: provides IChatStorage, IUserDirectory,"
        " IConversationStore, IAccountStore, ISessionRevocations\n"
    )
    for suite in ("IChatStorage", "IUserDirectory", "IConversationStore", "IAccountStore"):
        assert f"\n{suite}\n" in out
    assert lines_with(out, "FAIL") == [] and lines_with(out, "SKIP") == []
    passed = lines_with(out, "PASS")
    assert len(passed) > 70
    # Rules in words, from the tests' docstrings.
    assert "PASS  getMessages returns a conversation newest first." in passed
    assert any(line.startswith("PASS  getConversations orders conversations") for line in passed)
    assert out.rstrip().endswith(f"{len(passed)} rules kept, 0 broken, 0 skipped")


def test_a_store_that_is_a_service(scratch):
    result = checker("servicestore:make", scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken, 0 skipped" in result.stdout


def test_a_broken_store_gets_its_broken_rules_listed(scratch):
    result = checker("brokenstore:BrokenStore", scratch)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "(not provided, not checked: IUserDirectory, IConversationStore, IAccountStore," in out
    failed = lines_with(out, "FAIL")
    assert "FAIL  getMessages returns a conversation newest first." in failed
    assert (
        "FAIL  Only the recipient may read a direct message: read answers None to anyone else."
        in failed
    )
    assert (
        "FAIL  The sender and non-members may not read a group message: read answers None."
        in failed
    )
    # What went wrong, in words, under the rule.
    assert "AssertionError: getMessages must return the conversation newest first\n" in out
    assert "AssertionError: read by the sender of a direct message must answer None\n" in out
    # The rules it keeps are listed as kept: provisioning went through its hooks.
    passed = lines_with(out, "PASS")
    assert "PASS  authorize answers a user's token with that user (id or _id)." in passed
    assert "PASS  getGroupUserIds lists a group's members as strings." in passed
    assert out.rstrip().endswith(f"{len(passed)} rules kept, {len(failed)} broken, 0 skipped")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nowhere", "name the store as module:Factory (e.g. mystore:MyStorage), not 'nowhere'"),
        ("nosuchmodule:Store", "cannot import 'nosuchmodule': ModuleNotFoundError: "),
        ("goodstore:Nope", "module 'goodstore' has no 'Nope'"),
        ("nohooks:instance", "nohooks:instance is a store, not a class or factory"),
        ("nohooks:BrokenStore", "define conformance_add_user(...) and conformance_add_group(...)"),
        ("os:getcwd", "os:getcwd() made '"),
    ],
)
def test_a_store_that_cannot_be_checked_is_one_line(scratch, spec, message):
    result = checker(spec, scratch)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("python -m chatserver.testing: ")
    assert message in line


def test_help_documents_the_hooks(scratch):
    result = checker("--help", scratch)
    assert result.returncode == 0
    assert "def conformance_add_user(storage, user_id, token):" in result.stdout


def test_without_pytest_the_error_names_the_extra(tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "pytest.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pytest'\", name='pytest')\n"
    )
    expected = (
        "chatserver.testing needs pytest and pytest-twisted (pytest is missing): "
        "pip install 'chatserver[testing]'"
    )
    imported = run("-c", "import chatserver.testing", cwd=tmp_path, pythonpath=[hidden])
    assert imported.returncode == 1
    assert imported.stderr.splitlines()[-1] == f"ImportError: {expected}"
    command = run("-m", "chatserver.testing", "x:y", cwd=tmp_path, pythonpath=[hidden])
    assert command.returncode == 1
    assert command.stderr.splitlines() == [f"python -m chatserver.testing: {expected}"]


def test_the_readme_states_every_rule():
    bullets, lines = [], (Path(SRC).parent / "README.md").read_text().splitlines()
    for line in lines:
        if line.startswith("- "):
            bullets.append(line[2:])
        elif line.startswith("  ") and bullets and line.strip():
            bullets[-1] += " " + line.strip()
    stated = {" ".join(b.replace("`", "").split()) for b in bullets}
    missing = []
    for _, mixin, module in SUITES:
        suite = getattr(importlib.import_module(module), mixin)
        for name, test in vars(suite).items():
            if name.startswith("test_") and rule_of(name, test) not in stated:
                missing.append(f"{mixin}.{name}: {rule_of(name, test)}")
    assert missing == [], "README.md must state each rule, as a list item, as the test says it"
