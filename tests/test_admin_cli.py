"""The admin commands, run as a separate process the way an operator would,
against SQLite and against a real MongoDB-compatible server (tests/mongo.py)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

import chatserver.admin
from chatserver import __version__
from chatserver.interfaces import IAccountStore
from chatserver.storage.loader import load_storage

SCRIPT = "import sys; from chatserver.admin import main; sys.exit(main(sys.argv[1:]))"
SRC = str(Path(chatserver.admin.__file__).resolve().parents[1])


def admin(*args, cwd):
    """Run ``chatserver.admin.main(args)`` in a process of its own."""
    return _run([sys.executable, "-c", SCRIPT, *args], cwd)


def chatserver(*args, cwd):
    """Run ``python -m chatserver ARGS``, as an operator does."""
    return _run([sys.executable, "-m", "chatserver", *args], cwd)


def _run(argv, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def one_line_error(result, code=1):
    """Assert that ``result`` failed with ``code`` and said why on one line of
    stderr, without a traceback; return that line."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


@pytest.fixture
def db(tmp_path):
    return f"sqlite:{tmp_path / 'admin.sqlite3'}"


async def open_store(spec):
    """The store ``spec`` names, opened as the server opens it."""
    storage = load_storage(spec)
    storage.startService()
    return storage


@pytest_twisted.ensureDeferred
async def test_users_add_prints_only_a_token_that_authorizes(tmp_path, db):
    result = admin("users", "add", "alice", "--storage", db, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [token] = result.stdout.splitlines()
    assert len(token) >= 43 and token.strip() == token
    storage = await open_store(db)
    try:
        assert await storage.authorize({"token": token}) == {"id": "alice", "name": "alice"}
    finally:
        await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_users_list_and_remove(tmp_path, db):
    alice = admin("users", "add", "alice", "--storage", db, cwd=tmp_path).stdout.strip()
    assert admin("--storage", db, "users", "add", "bob", "Bob B", cwd=tmp_path).returncode == 0
    duplicate = admin("users", "add", "alice", f"--storage={db}", cwd=tmp_path)
    assert (duplicate.returncode, duplicate.stdout) == (1, "")
    assert "already exists" in duplicate.stderr

    listed = admin("users", "list", "--storage", db, cwd=tmp_path)
    assert listed.stdout == "alice\talice\nbob\tBob B\n"
    assert admin("users", "remove", "alice", "--storage", db, cwd=tmp_path).returncode == 0
    again = admin("users", "remove", "alice", "--storage", db, cwd=tmp_path)
    assert again.returncode == 1 and "no user 'alice'" in again.stderr
    assert admin("users", "list", "--storage", db, cwd=tmp_path).stdout == "bob\tBob B\n"

    storage = await open_store(db)
    try:
        assert await storage.authorize({"token": alice}) is None
    finally:
        await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_groups(tmp_path, db):
    for group in (["team", "alice", "bob"], ["pair", "carol", "dave"]):
        added = admin("groups", "add", *group, "--allow-unknown", "--storage", db, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
    listed = admin("groups", "list", "--storage", db, cwd=tmp_path)
    assert listed.stdout == "pair\tcarol\tdave\nteam\talice\tbob\n"
    assert admin("groups", "remove", "pair", "--storage", db, cwd=tmp_path).returncode == 0
    assert admin("groups", "remove", "pair", "--storage", db, cwd=tmp_path).returncode == 1
    assert admin("groups", "add", "empty", "--storage", db, cwd=tmp_path).returncode == 2

    storage = await open_store(db)
    try:
        assert await storage.getGroupUserIds({"groupId": "team"}) == ["alice", "bob"]
        assert await storage.getGroupUserIds({"groupId": "pair"}) == []
    finally:
        await storage.stopService()


def test_default_database_is_chat_sqlite3_in_the_working_directory(tmp_path):
    assert admin("users", "add", "alice", cwd=tmp_path).returncode == 0
    assert admin("users", "list", cwd=tmp_path).stdout == "alice\talice\n"
    assert (tmp_path / "chat.sqlite3").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["users"],
        ["users", "frob"],
        ["users", "list", "extra"],
        ["wat"],
        ["users", "list", "--storage", "mongodb://"],
        ["users", "list", "--storage", "memory"],
        ["users", "list", "--storage", "sqlite:"],
    ],
)
def test_usage_errors(tmp_path, args):
    result = admin(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--help" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no database was created


def test_help(tmp_path):
    result = admin("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "users" in result.stdout and "groups" in result.stdout


# -- every command on both stores we ship ----------------------------------------


@pytest.fixture(params=["sqlite", "mongodb"])
def store(request, tmp_path):
    """A ``--storage`` value: a new SQLite file, or a new database on the
    MongoDB-compatible server the tests start."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'admin.sqlite3'}"
    return request.getfixturevalue("mongodb_uri")


def placed(where, store, *args):
    """``args`` with ``--storage store`` before the command or after it."""
    return ("--storage", store, *args) if where == "before" else (*args, "--storage", store)


@pytest.mark.parametrize("where", ["before", "after"])
def test_storage_before_or_after_the_command(tmp_path, store, where):
    assert chatserver(*placed(where, store, "users", "add", "alice"), cwd=tmp_path).returncode == 0
    added = chatserver(*placed(where, store, "groups", "add", "team", "alice"), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = chatserver(*placed(where, store, "groups", "list"), cwd=tmp_path)
    assert (listed.returncode, listed.stdout) == (0, "team\talice\n")
    if store.startswith("mongodb:"):
        assert list(tmp_path.iterdir()) == []  # no SQLite file was made on the side


@pytest_twisted.ensureDeferred
async def test_users_on_each_store(tmp_path, store):
    added = chatserver("users", "add", "alice", "--storage", store, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    [alice] = added.stdout.splitlines()
    bob = chatserver("-s", store, "users", "add", "bob", "Bob B", cwd=tmp_path)
    assert bob.returncode == 0, bob.stderr
    line = one_line_error(chatserver(f"--storage={store}", "users", "add", "alice", cwd=tmp_path))
    assert "'alice'" in line and "exists" in line

    listed = chatserver("users", "list", "--storage", store, cwd=tmp_path)
    assert (listed.returncode, listed.stdout) == (0, "alice\talice\nbob\tBob B\n")

    storage = await open_store(store)
    try:
        verifyObject(IAccountStore, storage)
        user = await storage.authorize({"token": alice})
        assert user.get("id", user.get("_id")) == "alice"  # IAuthorizer: either key
        removed = chatserver("users", "remove", "alice", "--storage", store, cwd=tmp_path)
        assert (removed.returncode, removed.stdout, removed.stderr) == (0, "", "")
        assert await storage.authorize({"token": alice}) is None
    finally:
        await storage.stopService()
    again = chatserver("--storage", store, "users", "remove", "alice", cwd=tmp_path)
    assert one_line_error(again) == "error: no user 'alice'"
    listed = chatserver("users", "list", "--storage", store, cwd=tmp_path)
    assert listed.stdout == "bob\tBob B\n"


@pytest_twisted.ensureDeferred
async def test_new_token_and_revoke_on_each_store(tmp_path, store):
    old = chatserver("users", "add", "bob", "--storage", store, cwd=tmp_path).stdout.strip()
    storage = await open_store(store)
    try:
        _, cursor = await storage.revocationsAfter(None)
        renewed = chatserver("users", "new-token", "bob", "--storage", store, cwd=tmp_path)
        assert renewed.returncode == 0, renewed.stderr
        [new] = renewed.stdout.splitlines()
        assert new != old
        assert await storage.authorize({"token": old}) is None
        assert await storage.authorize({"token": new}) is not None
        # Any id may be revoked: users may sign in through something else.
        for user in ("bob", "someone-elsewhere"):
            revoked = chatserver("-s", store, "users", "revoke", user, cwd=tmp_path)
            assert (revoked.returncode, revoked.stdout, revoked.stderr) == (0, "", "")
        revoked_ids, _ = await storage.revocationsAfter(cursor)
        assert {"bob", "someone-elsewhere"} <= set(revoked_ids)
    finally:
        await storage.stopService()
    nobody = chatserver("users", "new-token", "zed", "--storage", store, cwd=tmp_path)
    assert one_line_error(nobody) == "error: no user 'zed'"


@pytest_twisted.ensureDeferred
async def test_groups_on_each_store(tmp_path, store):
    for user in ("alice", "bob", "carol"):
        assert chatserver("users", "add", user, "-s", store, cwd=tmp_path).returncode == 0

    def run(*args):
        return chatserver(*args, "--storage", store, cwd=tmp_path)

    assert run("groups", "add", "team", "alice", "bob", "--name", "The team").returncode == 0
    assert run("groups", "add", "pair", "carol", "alice").returncode == 0
    assert run("groups", "list").stdout == "pair\tcarol\talice\nteam\talice\tbob\n"

    added = run("groups", "add-member", "team", "carol")
    assert (added.returncode, added.stdout, added.stderr) == (0, "", "")
    again = run("groups", "add-member", "team", "carol", "bob")
    assert (again.returncode, again.stderr) == (0, "already in 'team': 'carol', 'bob'\n")
    assert run("groups", "list").stdout == "pair\tcarol\talice\nteam\talice\tbob\tcarol\n"

    assert run("groups", "remove-member", "team", "bob", "alice").returncode == 0
    outsider = run("groups", "remove-member", "team", "bob", "carol")
    assert one_line_error(outsider) == "error: not in group 'team': 'bob'"
    nowhere = run("groups", "add-member", "nowhere", "alice")
    assert one_line_error(nowhere) == "error: no group 'nowhere'"
    assert one_line_error(run("groups", "remove-member", "nowhere", "alice")).endswith("'nowhere'")

    # Adding again replaces the members.
    assert run("groups", "add", "pair", "bob", "carol").returncode == 0
    assert run("groups", "list").stdout == "pair\tbob\tcarol\nteam\tcarol\n"
    assert run("groups", "remove", "pair").returncode == 0
    assert one_line_error(run("groups", "remove", "pair")) == "error: no group 'pair'"
    assert run("groups", "list").stdout == "team\tcarol\n"

    storage = await open_store(store)
    try:
        assert await storage.getGroupUserIds({"groupId": "team"}) == ["carol"]
        assert (await storage.get_group("team"))["name"] == "The team"
        assert await storage.getGroupUserIds({"groupId": "pair"}) == []
    finally:
        await storage.stopService()


def test_unknown_members_are_refused_unless_allowed(tmp_path, store):
    def run(*args):
        return chatserver(*args, "--storage", store, cwd=tmp_path)

    assert run("users", "add", "alice").returncode == 0
    line = one_line_error(run("groups", "add", "team", "alice", "bob", "zed"))
    assert line.startswith("error: unknown users 'bob', 'zed' ")
    assert "alice" not in line and "--allow-unknown" in line
    assert run("groups", "list").stdout == ""  # nothing was made

    # The option may come anywhere, even between the members.
    allowed = run("groups", "add", "team", "alice", "--allow-unknown", "bob")
    assert allowed.returncode == 0, allowed.stderr
    line = one_line_error(run("groups", "add-member", "team", "carol"))
    assert line.startswith("error: unknown user 'carol' ")
    assert run("groups", "list").stdout == "team\talice\tbob\n"
    assert run("--allow-unknown", "groups", "add-member", "team", "carol").returncode == 0
    assert run("groups", "list").stdout == "team\talice\tbob\tcarol\n"


def test_mongodb_unreachable_fails_within_seconds_naming_the_host(tmp_path):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = chatserver("users", "list", "-s", f"mongodb://127.0.0.1:{port}/chat", cwd=tmp_path)
    elapsed = time.monotonic() - started
    line = one_line_error(result)
    assert f"127.0.0.1:{port}" in line and "unreachable" in line
    assert elapsed < 20  # the store's 5 s bound, plus starting Python


def test_sqlite_file_that_cannot_be_opened(tmp_path):
    path = tmp_path / "missing" / "chat.sqlite3"
    result = chatserver("users", "list", "-s", f"sqlite:{path}", cwd=tmp_path)
    line = one_line_error(result, code=2)  # the --storage given cannot be used
    assert f"cannot open the chat database {path}: the directory" in line


def test_a_store_without_accounts_is_refused(tmp_path):
    (tmp_path / "messages_only.py").write_text(
        "from zope.interface import implementer\n"
        "from chatserver.interfaces import IChatStorage\n"
        "@implementer(IChatStorage)\n"
        "class Store:\n"
        "    def __repr__(self):\n"
        "        return 'Store()'\n"
    )
    result = chatserver("users", "list", "--storage", "messages_only:Store", cwd=tmp_path)
    line = one_line_error(result, code=2)
    assert "Store() does not provide IAccountStore" in line and "--help" in line


@pytest.mark.parametrize(
    "args",
    [
        ["groups"],
        ["groups", "add-member", "team"],
        ["groups", "remove-member"],
        ["groups", "list", "extra"],
        ["users", "list", "--allow-unknown"],
        ["--storage", "sqlite:", "users", "list"],
        ["users", "list", "--storage"],
    ],
)
def test_usage_errors_through_python_m_chatserver(tmp_path, args):
    line = one_line_error(chatserver(*args, cwd=tmp_path), code=2)
    assert line.startswith("python -m chatserver") and "--help" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("users add", "USER [NAME]"),
        ("users list", ""),
        ("users remove", "USER"),
        ("users new-token", "USER"),
        ("users revoke", "USER"),
        ("groups add", "GROUP MEMBER [MEMBER ...]"),
        ("groups list", ""),
        ("groups remove", "GROUP"),
        ("groups add-member", "GROUP USER [USER ...]"),
        ("groups remove-member", "GROUP USER [USER ...]"),
    ],
)
def test_each_command_has_its_own_usage(tmp_path, command, arguments):
    result = chatserver(*command.split(), "--help", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    usage = " ".join(result.stdout.split("\n\n")[0].split())  # the usage, unwrapped
    assert usage.startswith(f"usage: python -m chatserver {command} [-h] [-s SPEC]")
    assert usage.endswith(arguments or "[-s SPEC]")
    assert ("--allow-unknown" in result.stdout) == (command in ("groups add", "groups add-member"))
    assert "--storage SPEC" in result.stdout


def test_version(tmp_path):
    result = chatserver("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"chatserver {__version__}\n",
        "",
    )


def test_top_level_help_lists_server_options_and_admin_commands(tmp_path):
    result = chatserver("--help", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    for server_option in ("--port", "--storage", "--dev-auth"):
        assert server_option in result.stdout
    for command in ("users add", "users list", "users remove", "groups add-member"):
        assert command in result.stdout
    for command in ("users revoke", "groups remove-member", "migrate-seed", "--allow-unknown"):
        assert command in result.stdout
    assert "Twisted version" not in result.stdout
    assert admin("--help", cwd=tmp_path).stdout.startswith("usage: python -m chatserver")


@pytest_twisted.ensureDeferred
async def test_lists_are_complete_beyond_one_page(tmp_path, store):
    storage = await open_store(store)
    try:
        for i in range(1203):
            await storage.add_user(f"user{i:04}")
            if i < 501:
                await storage.add_group(f"group{i:03}", [f"user{i:04}"])
    finally:
        await storage.stopService()
    users = admin("users", "list", "--storage", store, cwd=tmp_path).stdout.splitlines()
    assert users == [f"user{i:04}\tuser{i:04}" for i in range(1203)]
    groups = admin("groups", "list", "--storage", store, cwd=tmp_path).stdout.splitlines()
    assert groups == [f"group{i:03}\tuser{i:04}" for i in range(501)]
