"""The default set-up as a user meets it: `twistd -n chatserver` with no storage
option keeps its messages in SQLite, across restarts, with accounts made by the
admin command."""

from __future__ import annotations

import pytest
import pytest_twisted

from chatserver.client import RequestFailed, connect
from tests.processes import ServerProcess, admin


@pytest_twisted.ensureDeferred
async def test_default_storage_is_sqlite_and_survives_a_restart(tmp_path):
    alice_token = admin("users", "add", "alice", cwd=tmp_path)
    bob_token = admin("users", "add", "bob", cwd=tmp_path)
    admin("groups", "add", "team", "alice", "bob", cwd=tmp_path)

    server = ServerProcess.twistd(cwd=tmp_path)  # no --storage
    try:
        alice = await connect(server.url)
        assert (await alice.authorize(token=alice_token))["id"] == "alice"
        direct = await alice.send({"to": "bob", "text": "kept on disk"})
        group = await alice.send({"to": "team", "isGroup": True, "text": "team note"})
        alice.sendClose()
        await alice.closed
    finally:
        server.stop()
    assert str(tmp_path / "chat.sqlite3") in server.log.decode()  # says where

    server = ServerProcess.twistd(cwd=tmp_path)
    try:
        bob = await connect(server.url)
        await bob.authorize(token=bob_token)
        history = await bob.get_messages(**{"with": "alice"})
        assert [m["_id"] for m in history] == [direct["_id"]]
        history = await bob.get_messages(**{"with": "team", "isGroup": True})
        assert [m["text"] for m in history] == [group["text"]]
        read = await bob.read(direct["_id"])
        assert read["read"] is True
        stranger = await connect(server.url)
        with pytest.raises(RequestFailed) as refused:
            await stranger.authorize(token="not-a-token")
        assert refused.value.code == "authorizationFailed"
        for client in (bob, stranger):
            client.sendClose()
            await client.closed
    finally:
        server.stop()
    assert alice_token not in server.log.decode()
