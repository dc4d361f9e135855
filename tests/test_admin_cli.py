"""The admin commands, run as a separate process the way an operator would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

import chatserver.admin
from chatserver.storage.sqlite import SQLiteStorage

SCRIPT = "import sys; from chatserver.admin import main; sys.exit(main(sys.argv[1:]))"
SRC = str(Path(chatserver.admin.__file__).resolve().parents[1])


def admin(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


@pytest.fixture
def db(tmp_path):
    return f"sqlite:{tmp_path / 'admin.sqlite3'}"


async def open_store(spec):
    storage = SQLiteStorage(spec.removeprefix("sqlite:"))
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


@pytest_twisted.ensureDeferred
async def test_lists_are_complete_beyond_one_page(tmp_path, db):
    storage = await open_store(db)
    try:
        for i in range(1203):
            await storage.add_user(f"user{i:04}")
            if i < 501:
                await storage.add_group(f"group{i:03}", [f"user{i:04}"])
    finally:
        await storage.stopService()
    users = admin("users", "list", "--storage", db, cwd=tmp_path).stdout.splitlines()
    assert users == [f"user{i:04}\tuser{i:04}" for i in range(1203)]
    groups = admin("groups", "list", "--storage", db, cwd=tmp_path).stdout.splitlines()
    assert groups == [f"group{i:03}\tuser{i:04}" for i in range(501)]
