"""Run the server with its web page, find Chromium, and drive the demo page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from websockets.sync.client import connect as ws_connect

from tests.processes import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1000, "height": 650}


def find_chromium() -> tuple[Path | None, str]:
    """Debian's Chromium, installed with apt-get in CI if it is missing.

    Returns the executable, or None and why there is none.
    """
    if CHROMIUM.exists():
        return CHROMIUM, ""
    if not os.environ.get("CI"):
        return None, f"{CHROMIUM} not found: install Debian's chromium package to run these"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{CHROMIUM} not found and cannot apt-get install chromium (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return None, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"
    if CHROMIUM.exists():
        return CHROMIUM, ""
    return None, f"apt-get install chromium did not provide {CHROMIUM}"


class ChatSocket:
    """A plain WebSocket client of the chat protocol, to set the scene."""

    def __init__(self, server: ServerProcess, name: str) -> None:
        self.ws = ws_connect(f"{server.url}/ws", open_timeout=10, legacy=True)
        self.next_id = 1
        self.user = self.call("authorize", {"name": name})

    def call(self, action: str, data: object) -> object:
        """Send a request and return its reply's data (pushes are skipped)."""
        request_id, self.next_id = self.next_id, self.next_id + 1
        self.ws.send(json.dumps({"type": action, "data": data, "id": request_id}))
        while True:
            frame = json.loads(self.ws.recv(timeout=10))
            if frame.get("id") == request_id:
                assert "error" not in frame, frame
                return frame["data"]

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> ChatSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
