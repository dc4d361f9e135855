"""Fill an SQLite chat database before a server opens it, through the store's
own interfaces: accounts with names, named groups, and messages with the
``createdAt`` of the scene's choosing (yesterday's conversation, for the date
separators), read by whom the scene says.

Run by the browser tests and the screenshot script as
``python -m tests.browser.seed PATH`` with the scene as JSON on stdin::

    {"users": [{"id": "bob", "name": "Bob Stone"}],
     "groups": [{"id": "team", "name": "Team", "members": ["alice", "bob"]}],
     "messages": [{"from": "bob", "to": "alice", "text": "hi", "ago": 86400,
                   "readBy": ["alice"]}]}

``ago`` is how many seconds before now the message was written.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from chatserver.storage.sqlite import SQLiteStorage


def created_at(seconds: float) -> str:
    """``seconds`` since the epoch as the server writes ``createdAt``."""
    millis = int(seconds * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


async def fill(path: str, scene: dict[str, Any]) -> None:
    storage = SQLiteStorage(path)
    storage.startService()
    try:
        for user in scene.get("users", []):
            await storage.add_user(user["id"], user.get("name"))
        for group in scene.get("groups", []):
            await storage.add_group(group["id"], group["members"], group.get("name"))
        now = time.time()
        for entry in scene.get("messages", []):
            message = {k: v for k, v in entry.items() if k not in ("ago", "readBy")}
            message["createdAt"] = created_at(now - entry.get("ago", 0))
            if message.get("isGroup"):
                message["isGroup"] = True
            stored = await storage.create(message)
            for reader in entry.get("readBy", []):
                await storage.read(str(stored["_id"]), reader)
    finally:
        await storage.stopService()


def main(reactor: Any, path: str) -> Any:
    return ensureDeferred(fill(path, json.load(sys.stdin)))


if __name__ == "__main__":
    react(main, [sys.argv[1]])
