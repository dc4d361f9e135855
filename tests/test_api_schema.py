"""Schemathesis, a property-based API tester, against the OpenAPI description
a server process serves at ``/api/openapi.json``: every operation, valid and
invalid inputs, every check (no 5xx, status codes, content types and bodies as
described, the key enforced, methods refused with 405 and ``Allow``)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ServerProcess

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).with_name("schemathesis.toml")
#: Examples per operation: CI-sized (about 15 s in all); raise it to search harder.
EXAMPLES = int(os.environ.get("CHATSERVER_API_EXAMPLES", "60"))


@pytest.fixture
def api_server(tmp_path):
    key = secrets.token_urlsafe(32)
    (tmp_path / "api.keys").write_text(key + "\n")
    server = ServerProcess.twistd(
        "--storage",
        "memory",
        "--dev-auth",
        "--api-key-file",
        str(tmp_path / "api.keys"),
        cwd=tmp_path,
    )
    yield server, key
    server.stop()


def test_schemathesis_finds_nothing_against_the_served_description(api_server, tmp_path):
    server, key = api_server
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{server.http_url}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "10",
    ]
    if seed := os.environ.get("CHATSERVER_API_SEED"):
        command += ["--seed", seed]  # to replay a run that failed (it prints its seed)
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    assert "No issues found" in output
    assert b"Traceback" not in server.log, server.log.decode()[-5000:]
