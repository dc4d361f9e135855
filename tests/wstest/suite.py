"""Run the Autobahn|Testsuite (``wstest -m fuzzingclient``) against a server
and compare what it reports, case by case, with ``expected.toml``.

The suite runs on Python 2.7 only. :func:`environment` builds a virtualenv
for it from ``requirements-py27.txt`` under ``~/.cache/chatserver/`` on first
use (about 30 s), named after a hash of that file, the virtualenv version
and the interpreter, so that a change of any makes a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-py27.txt"
EXPECTED = HERE / "expected.toml"
# Python 2.7 has no venv module; the last virtualenv that makes 2.7 envs.
VIRTUALENV = "virtualenv==16.7.12"
AGENT = "chatserver"
#: Seconds a case may take, beyond the pauses the suite makes on purpose.
MAX_CASE_SECONDS = 2.0
#: How long one run of the whole suite may take before it counts as hung.
RUN_TIMEOUT = 300
_QUIET = {"PYTHONWARNINGS": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


class SuiteUnavailable(Exception):
    """Python 2.7, which the suite needs, is not on this machine."""


@dataclass(frozen=True, order=True)
class Outcome:
    """What the suite says of one case: its verdicts on the case's
    behaviour and on the close, the close code our server sent (``None``:
    none arrived), whether the close was clean (both Close frames passed
    before the TCP connection ended), and which of the suite's own timeouts
    fired (a case that waits for one is slow)."""

    behavior: str
    close: str
    code: int | None
    clean: bool
    timeouts: tuple[str, ...] = ()

    def __str__(self) -> str:
        code = "no close code" if self.code is None else f"code {self.code}"
        clean = "clean close" if self.clean else "NOT a clean close"
        waited = f", timed out: {', '.join(self.timeouts)}" if self.timeouts else ""
        return f"{self.behavior} / close {self.close}, {code}, {clean}{waited}"


@dataclass(frozen=True)
class CaseResult:
    case: str
    outcome: Outcome
    seconds: float


@dataclass(frozen=True)
class Group:
    """Cases with one outcome and one reason for it."""

    reason: str
    outcome: Outcome
    cases: tuple[str, ...]


@dataclass(frozen=True)
class Expected:
    """The committed expectations: groups of cases with their outcome, and
    the pauses some cases make on purpose (seconds added to their budget)."""

    groups: tuple[Group, ...]
    pauses: Mapping[str, float]
    pause_reasons: tuple[tuple[str, float, tuple[str, ...]], ...]

    def outcome(self, case: str) -> tuple[Outcome, str] | None:
        for group in self.groups:
            if case in group.cases:
                return group.outcome, group.reason
        return None

    def allowed_seconds(self, case: str) -> float:
        return MAX_CASE_SECONDS + self.pauses.get(case, 0.0)


# -- the environment --------------------------------------------------------


def find_python27() -> Path | None:
    """``$CHATSERVER_PYTHON27``, else the newest 2.7 that pyenv has, else a
    ``python2.7`` on the path that runs (pyenv's shim is there even when
    it would refuse to run it)."""
    named = os.environ.get("CHATSERVER_PYTHON27")
    if named:
        return Path(named)
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates = sorted(root.glob("versions/2.7*/bin/python2.7"), reverse=True)
    found = shutil.which("python2.7")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        try:
            check = subprocess.run(
                [str(candidate), "-c", "import sys; assert sys.version_info[:2] == (2, 7)"],
                capture_output=True,
                timeout=30,
            )
        except OSError:
            continue
        if check.returncode == 0:
            return candidate
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chatserver"


def environment(python27: Path | None = None) -> Path:
    """The virtualenv holding ``wstest``, built on first use.

    Concurrent callers wait for one another on a lock file; a build that
    was interrupted is started again from scratch.

    :param python27: the interpreter (default: :func:`find_python27`).
    :return: the virtualenv's directory.
    :raise SuiteUnavailable: when there is no Python 2.7.
    :raise RuntimeError: when building it fails (with pip's output).
    """
    python27 = python27 or find_python27()
    if python27 is None or not python27.exists():
        raise SuiteUnavailable(
            "the Autobahn|Testsuite needs Python 2.7: install it (e.g. `pyenv install 2.7.18`) "
            "or point CHATSERVER_PYTHON27 at one"
        )
    digest = hashlib.sha256()
    for part in (REQUIREMENTS.read_bytes(), VIRTUALENV.encode(), str(python27).encode()):
        digest.update(part + b"\0")
    home = cache_dir()
    env = home / f"wstest-py27-{digest.hexdigest()[:16]}"
    done = env / ".complete"
    if done.exists():
        return env
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return env
        shutil.rmtree(env, ignore_errors=True)
        boot = env / "bootstrap"
        pip = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _build_step([str(python27), *pip, "--target", str(boot), VIRTUALENV])
        _build_step(
            [str(python27), "-m", "virtualenv", "--quiet", "--no-download", str(env)],
            PYTHONPATH=str(boot),
        )
        _build_step([str(env / "bin" / "python"), *pip, "--requirement", str(REQUIREMENTS)])
        _build_step([str(env / "bin" / "python"), "-c", "import autobahntestsuite.wstest"])
        shutil.rmtree(boot)
        done.write_text(REQUIREMENTS.read_text())
    return env


def _build_step(argv: list[str], **env: str) -> None:
    done = subprocess.run(
        argv,
        env={**os.environ, **_QUIET, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(
            f"building the wstest environment failed: {' '.join(argv)}\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


# -- a run -------------------------------------------------------------------


def run(env: Path, url: str, outdir: Path, cases: Sequence[str] = ("*",)) -> dict[str, CaseResult]:
    """Run ``cases`` against the server at ``url``; the reports (HTML and
    JSON) and wstest's output go to ``outdir``.

    :return: case id → its result.
    :raise RuntimeError: when wstest fails or reports no case.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    spec = outdir / "fuzzingclient.json"
    spec.write_text(
        json.dumps(
            {
                "outdir": str(outdir / "reports"),
                "servers": [{"agent": AGENT, "url": url}],
                "cases": list(cases),
                "exclude-cases": [],
                "exclude-agent-cases": {},
            }
        )
    )
    with open(outdir / "wstest.log", "wb") as output:
        done = subprocess.run(
            [str(env / "bin" / "wstest"), "--mode", "fuzzingclient", "--spec", str(spec)],
            cwd=outdir,
            env={**os.environ, **_QUIET},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
        )
    log = (outdir / "wstest.log").read_text(errors="replace")
    if done.returncode:
        raise RuntimeError(f"wstest exited with {done.returncode}:\n{log[-3000:]}")
    results = read_reports(outdir / "reports")
    if not results:
        raise RuntimeError(f"wstest reported no case:\n{log[-3000:]}")
    return results


_TIMEOUTS = {
    "wasOpenHandshakeTimeout": "opening handshake",
    "wasCloseHandshakeTimeout": "closing handshake",
    "wasServerConnectionDropTimeout": "server TCP close",
}


def read_reports(reports: Path) -> dict[str, CaseResult]:
    """Read the JSON reports wstest wrote in ``reports``."""
    index = reports / "index.json"
    if not index.exists():
        return {}
    results = {}
    for case, summary in json.loads(index.read_text()).get(AGENT, {}).items():
        details = json.loads((reports / summary["reportfile"]).read_text())
        outcome = Outcome(
            behavior=summary["behavior"],
            close=summary["behaviorClose"],
            code=summary.get("remoteCloseCode"),
            clean=bool(details.get("wasClean")),
            timeouts=tuple(name for key, name in _TIMEOUTS.items() if details.get(key)),
        )
        results[case] = CaseResult(case, outcome, summary["duration"] / 1000)
    return results


def case_key(case: str) -> tuple[int, ...]:
    """``"6.10.2"`` → ``(6, 10, 2)``, the suite's order."""
    return tuple(int(part) for part in case.split("."))


# -- expectations --------------------------------------------------------------


def load_expected(path: Path = EXPECTED) -> Expected:
    data = tomllib.loads(path.read_text())
    groups = tuple(
        Group(
            reason=g["reason"],
            outcome=Outcome(
                behavior=g["behavior"],
                close=g["close"],
                code=g.get("code"),
                clean=g["clean"],
                timeouts=tuple(g.get("timeouts", ())),
            ),
            cases=tuple(g["cases"]),
        )
        for g in data.get("group", ())
    )
    pauses: dict[str, float] = {}
    pause_reasons = []
    for p in data.get("pause", ()):
        pause_reasons.append((p["reason"], float(p["seconds"]), tuple(p["cases"])))
        for case in p["cases"]:
            pauses[case] = float(p["seconds"])
    return Expected(groups, pauses, tuple(pause_reasons))


def differences(expected: Expected, results: Mapping[str, CaseResult]) -> dict[str, str]:
    """Every case whose outcome is not the expected one, or that ran but is
    not expected, or is expected but did not run: case → a readable entry."""
    found = {}
    known = set()
    for group in expected.groups:
        for case in group.cases:
            known.add(case)
            result = results.get(case)
            if result is None:
                found[case] = f"{case}: expected {group.outcome}, but it did not run"
            elif result.outcome != group.outcome:
                pad = " " * len(case)
                found[case] = (
                    f"{case}: expected {group.outcome}\n"
                    f"{pad}       got {result.outcome}\n"
                    f"{pad}  (expected because: {group.reason})"
                )
    for case in sorted(set(results) - known, key=case_key):
        found[case] = f"{case}: not in the expected file; got {results[case].outcome}"
    return dict(sorted(found.items(), key=lambda item: case_key(item[0])))


def too_slow(expected: Expected, results: Iterable[CaseResult]) -> list[CaseResult]:
    """The cases that took longer than they may."""
    return [r for r in results if r.seconds > expected.allowed_seconds(r.case)]


def counts(results: Iterable[CaseResult]) -> dict[str, dict[str, int]]:
    """Chapter (``"6"``) → behaviour → how many cases."""
    table: dict[str, dict[str, int]] = {}
    for result in sorted(results, key=lambda r: case_key(r.case)):
        chapter = table.setdefault(result.case.split(".")[0], {})
        chapter[result.outcome.behavior] = chapter.get(result.outcome.behavior, 0) + 1
    return table


if __name__ == "__main__":
    # Build the environment ahead of the tests (CI does): python -m tests.wstest.suite
    try:
        print(environment())
    except SuiteUnavailable as e:
        raise SystemExit(f"error: {e}") from None
