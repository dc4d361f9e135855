"""Run the server with its web page, find Chromium, and drive the demo page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.sync.client import connect as ws_connect

from tests.processes import ROOT, ServerProcess

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

    def call(self, action: str, data: object) -> Any:
        """Send a request and return its reply's data (pushes are skipped)."""
        return self.wait(self.send(action, data))

    def send(self, action: str, data: object) -> int:
        """Send a request without waiting for its reply; return its id."""
        request_id, self.next_id = self.next_id, self.next_id + 1
        self.ws.send(json.dumps({"type": action, "data": data, "id": request_id}))
        return request_id

    def wait(self, request_id: int) -> Any:
        """The data of the reply to request ``request_id`` (earlier replies
        and pushes are skipped)."""
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


class Relay:
    """Stands between a page and the server: every WebSocket the page opens
    goes through it (Playwright's WebSocket routing), so that a test can
    cut the page off from the server while the server is there, or hold
    back some of the frames the server sends to the page.

    Set it up before the page loads.
    """

    def __init__(self, page: Any) -> None:
        #: While true, the page's connections are closed as soon as they open
        #: (the page sees a server it cannot reach, and keeps trying).
        self.cut = False
        #: What the page sent, parsed (requests of every connection, in order).
        self.sent: list[dict] = []
        self._hold: Callable[[dict], bool] | None = None
        self._held: list[tuple[Any, str]] = []
        if not hasattr(page, "route_web_socket"):
            raise RuntimeError(
                "these tests need Playwright 1.48 or newer: pip install -U playwright"
            )
        page.route_web_socket(re.compile(r"/ws$"), self._route)

    def _route(self, ws: Any) -> None:
        if self.cut:
            ws.close(code=1001, reason="unreachable")
            return
        server = ws.connect_to_server()
        ws.on_message(lambda message: self._up(server, message))
        server.on_message(lambda message: self._down(ws, message))

    def _up(self, server: Any, message: str | bytes) -> None:
        if isinstance(message, str):
            self.sent.append(json.loads(message))
        server.send(message)

    def _down(self, ws: Any, message: str | bytes) -> None:
        if self._hold is not None and isinstance(message, str) and self._hold(json.loads(message)):
            self._held.append((ws, message))
        else:
            ws.send(message)

    def hold(self, predicate: Callable[[dict], bool]) -> None:
        """Keep back the frames from the server for which ``predicate(frame)``
        is true (and only those) until :meth:`release`."""
        self._hold = predicate

    @property
    def held(self) -> list[dict]:
        return [json.loads(message) for _, message in self._held]

    def release(self) -> None:
        """Deliver the frames held back, in order, and hold no more."""
        self._hold = None
        held, self._held = self._held, []
        for ws, message in held:
            ws.send(message)


def seed(path: Path, scene: dict) -> None:
    """Fill the SQLite database at ``path`` (see :mod:`tests.browser.seed`)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.browser.seed", str(path)],
        input=json.dumps(scene),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
