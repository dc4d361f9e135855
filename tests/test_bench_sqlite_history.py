"""The SQLite benchmark runs end to end on small numbers, and reuses its file."""

import re
import sqlite3
import subprocess
import sys


def bench(path, *args):
    return subprocess.run(
        [sys.executable, "-m", "chatserver.bench.sqlite_history", "--path", str(path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_history_conversations_and_creates(tmp_path):
    path = tmp_path / "bench.sqlite3"
    args = ("--messages", "20000", "--conversations", "300", "--queries", "3", "--creates", "2000")
    first = bench(path, *args)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "inserted 20,000/20,000" in out
    assert "alice's conversations: 300\n" in out
    pages = re.findall(r"^getConversations +(\d+) (first|after [\d,]+) +(\d+) ", out, re.M)
    assert [(limit, rows) for limit, _, rows in pages] == [
        ("20", "20"),
        ("20", "20"),
        ("100", "100"),
        ("100", "100"),
    ]
    assert pages[1][1] == "after 100" or pages[1][1] == "after 200"
    assert re.search(r"^create, direct: [\d,]+/s$", out, re.M)
    assert re.search(r"^create, group of 50: [\d,]+/s$", out, re.M)
    again = bench(path, *args[:4], "--queries", "1", "--creates", "0")
    assert again.returncode == 0, again.stderr
    assert "reusing" in again.stdout and "inserted" not in again.stdout


def test_refuses_a_file_that_is_not_its_own(tmp_path):
    path = tmp_path / "chat.sqlite3"
    path.write_bytes(b"")
    sqlite3.connect(path).execute("CREATE TABLE precious (x)").connection.close()
    result = bench(path, "--messages", "1000", "--conversations", "10")
    assert result.returncode == 1
    assert "is not a benchmark database" in result.stderr
