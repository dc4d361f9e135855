"""Run the server as a user does, in its own process, and find its port."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Another build's twistd may be named to compare builds (see tests/test_abuse.py).
TWISTD = Path(os.environ.get("CHATSERVER_TWISTD") or Path(sys.executable).parent / "twistd")
LISTENING = re.compile(rb"(?:Site|ChatServerFactory) starting on (\d+)")


class ServerProcess:
    """A chat server started with ``twistd -n chatserver`` (or any command
    that logs Twisted's "starting on PORT" line) on an ephemeral port.

    A thread reads its output all along: a server whose log pipe fills up
    blocks on its next log line.
    """

    def __init__(
        self,
        argv: list[str],
        cwd: Path | None = None,
        env: dict | None = None,
        files_limit: int | None = None,
    ) -> None:
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self._log = bytearray()
        self._changed = threading.Condition()

        def limit_files() -> None:
            if files_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (files_limit, files_limit))

        self.process = subprocess.Popen(
            argv,
            cwd=cwd or ROOT,
            env=environment,
            preexec_fn=limit_files if files_limit is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.wait_for(lambda log: LISTENING.search(log), timeout=30):
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.log.decode(errors='replace')}")
        self.port = int(LISTENING.search(self.log).group(1))
        self.url = f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> bytes:
        """Everything the server has written so far."""
        with self._changed:
            return bytes(self._log)

    def _read(self) -> None:
        stream = self.process.stdout
        while chunk := stream.read1(65536):
            with self._changed:
                self._log += chunk
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()  # the end: nothing more will come

    def wait_for(self, condition: Callable[[bytes], object], timeout: float) -> bool:
        """Wait until ``condition(log)`` holds (or the output ends, or
        ``timeout`` seconds pass); say whether it held."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(bytes(self._log)):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    return bool(condition(bytes(self._log)))
                self._changed.wait(remaining)
            return True

    def wait_for_log(self, pattern: bytes, timeout: float = 10, count: int = 1) -> bool:
        """Wait until ``pattern`` has appeared ``count`` times in the output."""
        return self.wait_for(lambda log: log.count(pattern) >= count, timeout)

    @classmethod
    def twistd(
        cls, *options: str, cwd: Path | None = None, port: int = 0, files_limit: int | None = None
    ) -> ServerProcess:
        """``twistd -n chatserver OPTIONS`` on ``port`` (0: an ephemeral one;
        a fixed one to restart a server where it was); ``files_limit`` caps
        its open file descriptors."""
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
            files_limit=files_limit,
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """The server's resident memory, in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Stop the server and collect the rest of its log; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout)  # the rest of its output
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


def make_group(storage: str, group: str, *members: str, cwd: Path) -> None:
    """Make (or replace) ``group`` in ``storage`` with ``members``, as an
    operator does; the members need no account (they sign in with
    ``--dev-auth`` or a JWT)."""
    admin("groups", "add", "--allow-unknown", group, *members, "--storage", storage, cwd=cwd)
