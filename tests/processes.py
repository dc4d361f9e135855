"""Run the server as a user does, in its own process, and find its port."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
LISTENING = re.compile(rb"(?:Site|ChatServerFactory) starting on (\d+)")


class ServerProcess:
    """A chat server started with ``twistd -n chatserver`` (or any command
    that logs Twisted's "starting on PORT" line) on an ephemeral port."""

    def __init__(self, argv: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.log = b""
        self.process = subprocess.Popen(
            argv,
            cwd=cwd or ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.port = self._wait_for_port(deadline=time.monotonic() + 30)
        self.url = f"ws://127.0.0.1:{self.port}"

    @classmethod
    def twistd(cls, *options: str, cwd: Path | None = None, port: int = 0) -> ServerProcess:
        """``twistd -n chatserver OPTIONS`` on ``port`` (0: an ephemeral one;
        a fixed one to restart a server where it was)."""
        return cls(
            [
                str(TWISTD),
                "--nodaemon",
                "--pidfile=",
                "chatserver",
                "--endpoint",
                f"tcp:{port}:interface=127.0.0.1",
                *options,
            ],
            cwd=cwd,
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read_some(self, deadline: float) -> bool:
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                return False
        chunk = os.read(self.process.stdout.fileno(), 65536)
        self.log += chunk
        return bool(chunk)

    def _wait_for_port(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log)
            if match:
                return int(match.group(1))
            if not self._read_some(deadline):
                break
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log.decode(errors='replace')}")

    def wait_for_log(self, pattern: bytes, timeout: float = 10, count: int = 1) -> bool:
        """Read the server's output until ``pattern`` has appeared ``count``
        times in all, or ``timeout`` seconds pass; say whether it did."""
        deadline = time.monotonic() + timeout
        while self.log.count(pattern) < count:
            if time.monotonic() > deadline or not self._read_some(deadline):
                return self.log.count(pattern) >= count
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Stop the server and collect the rest of its log; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            rest, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rest, _ = self.process.communicate()
        self.log += rest or b""
        return self.process.returncode


def admin(*args: str, cwd: Path) -> str:
    """Run ``python -m chatserver ARGS`` (users, groups) as an operator does;
    return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "chatserver", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
