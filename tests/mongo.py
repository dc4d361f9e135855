"""A real MongoDB-compatible server for the tests, which they start themselves.

The server is SecantusDB (``secantusd-py``, installed by the ``test`` extra,
pinned in pyproject.toml): it speaks MongoDB's wire protocol and query
language over WiredTiger, the storage engine ``mongod`` uses. The tests start
it on a free loopback port with in-memory storage, as they start their own
``redis-server``. Set ``MONGODB_URI`` to run them against a real ``mongod``
instead (then the checks that only hold for mongod's query planner run too).

The fixtures (``mongodb_server``, ``mongodb_uri``, ``secantus``) are
available to every test module through tests/conftest.py::

    def test_something(mongodb_uri):  # a fresh database name, dropped afterwards
        ...
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest

#: A real mongod (or any server) to use instead of starting SecantusDB.
MONGODB_URI = os.environ.get("MONGODB_URI", "")
#: Whether the checks that only hold for mongod itself (its query plans) apply.
REAL_MONGOD = bool(MONGODB_URI)

START_TIMEOUT = 60.0  # a cold start imports numpy and opens WiredTiger: ~2 s, more on a busy box
STOP_TIMEOUT = 15.0
LISTENING = re.compile(r"listening on (\S+):(\d+)")


def _secantusd() -> str:
    beside = Path(sys.executable).parent / "secantusd-py"
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if found is None:
        pytest.fail(
            "secantusd-py not found: the MongoDB tests need SecantusDB "
            "(pip install -e '.[test]' installs the pinned version)"
        )
    return found


def _die_with_parent() -> None:
    # Between fork and exec: if the test run is killed, the kernel stops the
    # database too rather than leave it running.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SecantusServer:
    """A ``secantusd-py`` process on loopback.

    :param storage_path: ``":memory:"`` (a temporary directory it removes on
        a clean stop) or a directory that outlives restarts.
    :param options: more command-line options (``--sync-on-commit``, ...).
    """

    def __init__(self, storage_path: str = ":memory:", options: tuple[str, ...] = ()) -> None:
        self.storage_path = storage_path
        self.options = options
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log: list[str] = []
        self._changed = threading.Condition()
        self.start()

    @property
    def base_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def uri(self, database: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self._log)

    def start(self) -> None:
        """Start it (on the port it had before, if it ran already) and return
        once it listens."""
        self._log = []
        self.process = subprocess.Popen(
            [
                _secantusd(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),  # 0 the first time: the kernel picks, the log says
                "--storage-path",
                self.storage_path,
                *self.options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        reader.start()
        found = self._wait_for(lambda log: LISTENING.search(log), START_TIMEOUT, reader)
        if not found:
            self.kill()
            raise RuntimeError(f"secantusd-py did not start:\n{self.log}")
        self.port = int(found.group(2))

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self._log.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait_for(
        self, condition: Callable[[str], re.Match | None], timeout: float, reader: threading.Thread
    ) -> re.Match | None:
        # Woken by each line it writes (or by its exit), not by a timer.
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (found := condition("".join(self._log))):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not reader.is_alive():
                    return None
                self._changed.wait(remaining)
            return found

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM: it closes WiredTiger)."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """Stop it as a crash would (SIGKILL)."""
        self._signal_and_wait(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def _signal_and_wait(self, sig: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def with_database(base_uri: str, database: str) -> str:
    """``base_uri`` with its path replaced by ``database`` (options kept)."""
    parts = urlsplit(base_uri)
    return urlunsplit(parts._replace(path=f"/{database}"))


def new_database_name() -> str:
    return f"chatserver_test_{secrets.token_hex(6)}"


def drop_database(uri: str) -> None:
    """Drop the database ``uri`` names (a blocking client: for teardown)."""
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(urlsplit(uri).path.lstrip("/"))


@pytest.fixture(scope="session")
def mongodb_server() -> Iterator[str]:
    """The base URI of the MongoDB server of this test run: ``MONGODB_URI``,
    or a SecantusDB started for the session (and stopped after it)."""
    if MONGODB_URI:
        yield MONGODB_URI
        return
    server = SecantusServer()
    try:
        yield server.base_uri
    finally:
        server.stop()


@pytest.fixture
def mongodb_uri(mongodb_server: str) -> Iterator[str]:
    """A URI naming a database of this test's own, dropped afterwards."""
    uri = with_database(mongodb_server, new_database_name())
    yield uri
    drop_database(uri)


@pytest.fixture
def secantus(tmp_path: Path) -> Iterator[SecantusServer]:
    """A SecantusDB of this test's own that keeps its data on disk, so the
    test may stop, crash, freeze and restart it."""
    server = SecantusServer(str(tmp_path / "secantus"), options=("--sync-on-commit",))
    try:
        yield server
    finally:
        server.kill()
