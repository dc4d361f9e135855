"""Start-up mistakes, as an operator makes them: each is one line on standard
error that names the problem and the fix, and a non-zero exit; never a
traceback. A store built to reconnect (MongoDB) stays up and logs one line
per retry interval, not a line per attempt of each pooled connection."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ROOT, TWISTD, ServerProcess


def twistd(cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TWISTD), "--nodaemon", "--pidfile=", "chatserver", *options],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def newer_database(tmp_path: Path) -> str:
    path = tmp_path / "newer.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    return f"sqlite:{path}"


MISTAKES = {
    "port-in-use": (None, "is already in use: stop what uses it, or choose another --port"),
    "unknown-storage": (["--storage", "nonsense"], "unknown storage 'nonsense': use memory"),
    "unimportable-storage": (
        ["--storage", "mystorage:MyStorage"],
        "cannot import 'mystorage': no such module in ",
    ),
    "storage-fails-to-import": (
        ["--storage", "broken:Store"],
        "cannot import 'broken': No module named 'not_installed'",
    ),
    "unimportable-actions": (["--actions", "nosuchmodule:ACTIONS"], "cannot import 'nosuchmodule'"),
    "not-a-store": (["--storage", "tests.conftest:USERS"], "does not provide IChatStorage"),
    "not-implementer": (
        ["--storage", "undeclared:Store"],
        "declare it with @implementer(IChatStorage)",
    ),
    "bad-endpoint": (["--endpoint", "garbage"], "--endpoint 'garbage' is not an endpoint"),
    "bad-endpoint-port": (["--endpoint", "tcp:notaport"], "--endpoint 'tcp:notaport' is not"),
    "sqlite-no-directory": (
        ["--storage", "sqlite:/nonexistent/dir/x.db"],
        "the directory /nonexistent/dir does not exist (create it, or give another sqlite:PATH)",
    ),
    "sqlite-newer-schema": (None, "newer than this release's"),
    "bad-option-value": (["--port", "99999"], "--port must be between 0 and 65535"),
    "unknown-option": (["--frob"], "option --frob not recognized"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_start_up_mistake_is_one_line_and_a_failure(
    tmp_path, mistake, taken_port, newer_database
):
    options, sentence = MISTAKES[mistake]
    if mistake == "port-in-use":
        options = ["--storage", "memory", "--port", str(taken_port)]
    elif mistake == "sqlite-newer-schema":
        options = ["--storage", newer_database]
    (tmp_path / "broken.py").write_text("import not_installed\n")
    (tmp_path / "undeclared.py").write_text(
        "class Store:\n    def authorize(self, credentials):\n        return None\n"
    )
    result = twistd(tmp_path, "--port", "0", *options)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) <= 3, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert any(sentence in line for line in lines), result.stderr


def test_the_log_says_where_the_chat_page_is(tmp_path):
    server = ServerProcess.twistd("--storage", "memory", cwd=tmp_path)
    try:
        expected = f"chat page at http://localhost:{server.port}/".encode()
        assert server.wait_for_log(expected)
    finally:
        server.stop()


def test_python_m_chatserver_reports_the_same_way(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chatserver", "--storage", "nonsense"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "chatserver: unknown storage 'nonsense': use memory, sqlite:PATH, "
        "mongodb://host:port/db or package.module:name"
    ]


def test_an_unreachable_mongodb_logs_once_per_retry_interval(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    server = ServerProcess.twistd(
        "--storage", f"mongodb://127.0.0.1:{closed}/chat?timeoutMS=500", cwd=tmp_path
    )
    try:
        retry = b"not reachable"
        assert server.wait_for_log(retry, timeout=60, count=3)
        log = server.log
        assert server.process.poll() is None  # it keeps trying
    finally:
        server.stop()
    # From the first retry line to the third: nothing but the retry lines.
    window = log[log.index(retry) :].splitlines()
    third = [i for i, line in enumerate(window) if retry in line][2]
    assert len(window[: third + 1]) == 3, b"\n".join(window[: third + 1]).decode()
    assert b"Traceback" not in log
    assert b"will retry in" not in log and b"Starting factory" not in log
