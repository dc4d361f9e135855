"""The server as users run it: twistd's plugin and ``python -m chatserver``."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import pytest_twisted

from chatserver.client import connect
from tests.processes import ROOT, TWISTD, ServerProcess


@pytest.fixture
def dev_server(tmp_path):
    server = ServerProcess.twistd("--dev-auth", "--storage", "memory", cwd=tmp_path)
    yield server
    server.stop()


async def chat_between_two(url: str, credentials: tuple[dict, dict]) -> None:
    alice = await connect(url)
    bob = await connect(url)
    try:
        first = await alice.authorize(**credentials[0])
        second = await bob.authorize(**credentials[1])
        stored = await alice.send({"to": second["id"], "text": "over the plugin"})
        assert stored["from"] == first["id"]
        assert (await bob.next_push("chatMessage"))["_id"] == stored["_id"]
        history = await bob.get_messages(**{"with": first["id"]})
        assert [m["_id"] for m in history] == [stored["_id"]]
    finally:
        for client in (alice, bob):
            client.sendClose()
            await client.closed


@pytest_twisted.ensureDeferred
async def test_twistd_plugin_serves_and_stops_cleanly(dev_server):
    await chat_between_two(dev_server.url, ({"name": "alice"}, {"name": "bob"}))
    # twistd re-raises the signal it stopped on, so that the exit status says so.
    assert dev_server.stop() in (0, -signal.SIGTERM)
    log = dev_server.log.decode()
    assert "Main loop terminated" in log
    assert "INSECURE" in log
    assert "over the plugin" not in log  # message text is never logged


@pytest_twisted.ensureDeferred
async def test_plugin_loads_a_custom_storage_and_actions(tmp_path):
    server = ServerProcess.twistd(
        "--storage",
        "tests.conftest:demo_storage",
        "--actions",
        "tests.test_server_api:ACTIONS",
        "--verbose",
        cwd=tmp_path,
    )
    try:
        await chat_between_two(server.url, ({"token": "alice-token"}, {"token": "bob-token"}))
        client = await connect(server.url)
        await client.authorize(token="carol-token")
        assert (await client.request("whoami"))["user"] == "carol"
        client.sendClose()
        await client.closed
    finally:
        server.stop()
    log = server.log.decode()
    assert "whoami" in log  # --verbose logs each request
    assert "carol-token" not in log  # but never credentials


@pytest_twisted.ensureDeferred
async def test_python_m_chatserver_runs_the_same_server(tmp_path):
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "chatserver",
            "--dev-auth",
            "--endpoint",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=tmp_path,
    )
    try:
        await chat_between_two(server.url, ({"id": "x"}, {"id": "y"}))
    finally:
        assert server.stop() in (0, -signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_twistd_finds_a_storage_module_in_the_directory_it_starts_in(tmp_path):
    """A newcomer's `mystore.py` beside them, and nothing on PYTHONPATH: twistd,
    unlike `python -m`, does not put the current directory on sys.path."""
    (tmp_path / "mystore.py").write_text(
        "from chatserver import MemoryStorage\n"
        "\n"
        "def MyStorage():\n"
        "    return MemoryStorage(users={'a-token': {'id': 'a'}, 'b-token': {'id': 'b'}})\n"
    )
    argv = [str(TWISTD), "--nodaemon", "--pidfile=", "chatserver", "--storage", "mystore:MyStorage"]
    argv += ["--endpoint", "tcp:0:interface=127.0.0.1"]
    server = ServerProcess(argv, cwd=tmp_path, env={"PYTHONPATH": ""})
    try:
        await chat_between_two(server.url, ({"token": "a-token"}, {"token": "b-token"}))
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--storage", "nosuchmodule:thing"], "cannot import 'nosuchmodule': no such module"),
        (["--storage", "tests.conftest:nothing"], "module 'tests.conftest' has no 'nothing'"),
        (["--storage", "bogus"], "unknown storage"),
        (["--storage", "tests.conftest:USERS"], "does not provide IChatStorage"),
        (["--actions", "tests.conftest:USERS"], "not a mapping"),
        (["--port", "99999"], "--port"),
    ],
)
def test_bad_options_fail_fast_with_a_clear_message(tmp_path, option, message):
    result = subprocess.run(
        [str(TWISTD), "--nodaemon", "--pidfile=", "chatserver", *option],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in (result.stdout + result.stderr).decode()
