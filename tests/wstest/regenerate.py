"""Write ``tests/wstest/expected.toml`` from runs of the Autobahn|Testsuite.

    .venv/bin/python -m tests.wstest.regenerate [--runs 3]

Each run gets a server of its own (``twistd chatserver --storage memory
--dev-auth``); the outcomes of all runs must be identical, or nothing is
written. Cases are grouped by chapter and outcome; a group keeps the reason
the file gave it before, and a new group gets a ``FIXME`` reason to replace
by hand (the test refuses a FIXME). The pauses are kept as they were.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from tests.processes import ServerProcess
from tests.wstest import suite

HEADER = """\
# What the Autobahn|Testsuite 0.8.2 (wstest -m fuzzingclient, 517 cases)
# reports for `twistd chatserver --storage memory --dev-auth`, case by case.
# tests/test_autobahn_suite.py fails on any difference, on a case slower than
# 2 s (plus its pause below), or on a traceback in the server's log.
#
# The suite expects an echo server. Ours speaks a chat protocol: a text frame
# must be a JSON object (else 1007), binary frames are refused (1003), and a
# message may not exceed --max-frame-bytes, 256 KiB (else 1009). So cases that
# wait for an echo are FAILED, and cases that break the framing in a message
# that is not JSON are NON-STRICT (1007 comes before the expected 1002): by
# design, group by group, each with its reason.
#
# behavior and close: the suite's verdicts; code: the close code our server
# sent (absent: none arrived); clean: both Close frames passed before the TCP
# connection ended; timeouts: the suite's own timeouts that fired (none should).
#
# Regenerate (three runs, which must agree): .venv/bin/python -m tests.wstest.regenerate
"""


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cases(cases: list[str], indent: str = "    ") -> str:
    lines, line = [], ""
    for case in cases:
        item = f"{_string(case)}, "
        if len(indent) + len(line) + len(item) > 92:
            lines.append(indent + line.rstrip())
            line = ""
        line += item
    lines.append(indent + line.rstrip())
    return "[\n" + "\n".join(lines) + "\n]"


def render(groups: list[suite.Group], expected: suite.Expected) -> str:
    parts = [HEADER]
    for group in groups:
        o = group.outcome
        lines = [
            "[[group]]",
            f"reason = {_string(group.reason)}",
            f"behavior = {_string(o.behavior)}",
            f"close = {_string(o.close)}",
        ]
        if o.code is not None:
            lines.append(f"code = {o.code}")
        lines.append(f"clean = {'true' if o.clean else 'false'}")
        if o.timeouts:
            lines.append(f"timeouts = [{', '.join(_string(t) for t in o.timeouts)}]")
        n = len(group.cases)
        lines.append(f"# {n} case{'' if n == 1 else 's'}")
        lines.append(f"cases = {_cases(list(group.cases))}")
        parts.append("\n".join(lines) + "\n")
    for reason, seconds, cases in expected.pause_reasons:
        parts.append(
            "[[pause]]\n"
            f"reason = {_string(reason)}\n"
            f"seconds = {seconds:g}\n"
            f"cases = [{', '.join(_string(c) for c in cases)}]\n"
        )
    return "\n".join(parts)


def group(results: dict[str, suite.CaseResult], old: suite.Expected) -> list[suite.Group]:
    """Group by chapter and outcome, with the reasons ``old`` gave."""
    reasons = {}
    for g in old.groups:
        for case in g.cases:
            reasons[case.split(".")[0], g.outcome] = g.reason
    members: dict[tuple[str, suite.Outcome], list[str]] = defaultdict(list)
    for case in sorted(results, key=suite.case_key):
        members[case.split(".")[0], results[case].outcome].append(case)
    groups = [
        suite.Group(reasons.get(key, f"FIXME: why {key[0]}.x gives this"), key[1], tuple(cases))
        for key, cases in members.items()
    ]
    groups.sort(key=lambda g: suite.case_key(g.cases[0]))
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs that must agree (default 3)")
    parser.add_argument("--output", type=Path, default=suite.EXPECTED)
    args = parser.parse_args(argv)
    env = suite.environment()
    old = suite.load_expected() if suite.EXPECTED.exists() else suite.Expected((), {}, ())
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.runs):
            server = ServerProcess.twistd("--storage", "memory", "--dev-auth")
            try:
                results = suite.run(env, server.url, Path(tmp) / f"run{n}")
            finally:
                server.stop()
            if b"Traceback" in server.log:
                print(server.log.decode(errors="replace"), file=sys.stderr)
                print(f"run {n + 1}: a traceback in the server's log", file=sys.stderr)
                return 1
            slowest = max(results.values(), key=lambda r: r.seconds)
            print(
                f"run {n + 1}: {len(results)} cases, "
                f"{sum(r.seconds for r in results.values()):.1f} s in cases, "
                f"slowest {slowest.case} {slowest.seconds:.2f} s"
            )
            runs.append(results)
    first = runs[0]
    for n, other in enumerate(runs[1:], 2):
        changed = sorted(
            (c for c in set(first) | set(other) if c not in first or c not in other
             or first[c].outcome != other[c].outcome),
            key=suite.case_key,
        )  # fmt: skip
        if changed:
            for case in changed:
                a, b = first.get(case), other.get(case)
                print(
                    f"{case}: run 1 {a and a.outcome}, run {n} {b and b.outcome}", file=sys.stderr
                )
            print("the runs disagree: nothing written", file=sys.stderr)
            return 1
    groups = group(first, old)
    args.output.write_text(render(groups, old))
    print(f"wrote {args.output}: {len(groups)} groups")
    for chapter, behaviours in suite.counts(first.values()).items():
        print(f"  {chapter:>3}.x  " + ", ".join(f"{b} {n}" for b, n in behaviours.items()))
    fixme = [g for g in groups if g.reason.startswith("FIXME")]
    if fixme:
        print(f"{len(fixme)} groups need a reason (FIXME)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
