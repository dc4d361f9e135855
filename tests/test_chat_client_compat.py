"""Wire compatibility with the real npm browser client, ``chat-client`` 1.0.3.

Starts the server with ``twistd`` and the storage from ``examples/custom_storage.py``,
then runs ``tests/compat/flow.js``, which drives the unchanged npm package (with
``ws`` as its WebSocket) through authorization, direct and group messages, read
receipts, history, error replies and the close of an unauthorized socket. Each step
of the flow is one test here, so a failure names the step.

Needs ``node`` and ``npm``: without them the tests are skipped, except when the
``CI`` environment variable is set, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.processes import ROOT, ServerProcess

COMPAT_DIR = ROOT / "tests" / "compat"
FLOW = COMPAT_DIR / "flow.js"
STORAGE = "examples.custom_storage:DemoStorage"

# The steps flow.js runs, in order.
STEPS = [
    "connect",
    "authorize",
    "authorize-rejected",
    "direct-message",
    "read",
    "group-message",
    "group-non-member",
    "client-message-id",
    "history-direct",
    "history-group",
    "invalid-message",
    "unknown-action",
    "no-stray-pushes",
    "unauthorized-close",
]

NPM_TIMEOUT = 300.0
FLOW_TIMEOUT = 180.0


@dataclass
class FlowRun:
    returncode: int | None  # None: killed after FLOW_TIMEOUT
    steps: dict[str, dict]
    stdout: str
    stderr: str
    server_log: str

    def report(self) -> str:
        return (
            f"flow.js exit code: {self.returncode}\n"
            f"--- flow.js stdout ---\n{self.stdout}\n"
            f"--- flow.js stderr (frames: '->' sent, '<-' received) ---\n{self.stderr}\n"
            f"--- server log ---\n{self.server_log}"
        )


def _require_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    missing = [name for name, path in (("node", node), ("npm", npm)) if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not found on PATH: chat-client compatibility not tested"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure)")
        pytest.skip(reason)
    assert node is not None and npm is not None
    return node, npm


def _node_modules_stale() -> bool:
    """True unless node_modules holds exactly the versions package-lock.json pins."""
    installed = COMPAT_DIR / "node_modules" / ".package-lock.json"
    if not installed.is_file():
        return True
    wanted = json.loads((COMPAT_DIR / "package-lock.json").read_text())["packages"]
    have = json.loads(installed.read_text()).get("packages", {})
    return any(
        path and have.get(path, {}).get("version") != info.get("version")
        for path, info in wanted.items()
    )


def _install_node_packages(npm: str) -> None:
    if not _node_modules_stale():
        return
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=COMPAT_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci failed in {COMPAT_DIR}:\n{result.stdout}\n{result.stderr}")


def _parse_steps(stdout: str) -> dict[str, dict]:
    steps: dict[str, dict] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and "step" in result:
            steps[result["step"]] = result
    return steps


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return output or ""


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowRun]:
    node, npm = _require_tools()
    _install_node_packages(npm)

    server = ServerProcess.twistd("--storage", STORAGE, cwd=tmp_path_factory.mktemp("chat"))
    try:
        result = subprocess.run(
            [node, str(FLOW), server.url],
            cwd=COMPAT_DIR,
            capture_output=True,
            text=True,
            timeout=FLOW_TIMEOUT,
            check=False,
        )
        returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stdout, stderr = None, _text(exc.stdout), _text(exc.stderr)
    finally:
        server.stop()

    yield FlowRun(
        returncode=returncode,
        steps=_parse_steps(stdout),
        stdout=stdout,
        stderr=stderr,
        server_log=server.log.decode(errors="replace"),
    )


@pytest.mark.parametrize("step", STEPS)
def test_flow_step(flow: FlowRun, step: str) -> None:
    result = flow.steps.get(step)
    if result is None:
        failed = [name for name, r in flow.steps.items() if not r.get("ok")]
        if failed:  # that step's test shows the details
            pytest.fail(f"step {step!r} never ran: the flow stopped at step {failed[0]!r}")
        pytest.fail(f"step {step!r} never ran\n{flow.report()}")
    assert result.get("ok") is True, f"step {step!r} failed: {result.get('error')}\n{flow.report()}"


def test_flow_ran_every_step_and_exited_cleanly(flow: FlowRun) -> None:
    assert list(flow.steps) == STEPS, f"flow.js ran {list(flow.steps)}\n{flow.report()}"
    assert flow.returncode == 0, flow.report()
