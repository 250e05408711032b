"""Compare a plain and a guarded run of an SDK's own test suite, per test id (make sdk-suites).

    python scripts/sdk_suites/compare.py NAME plain.xml guarded.xml guarded.report

(run.py calls ``compare()`` itself after its two runs.)

Fails (exit 1) when a test that passed plain did not pass guarded, naming each such test, when
the two runs collected different tests, or when the guarded run guarded no stream (the report
is what streamguard.testing.sdk_suite_plugin wrote: one JSON line per pytest process).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def outcomes(junit_xml: Path) -> dict[str, str]:
    """Test id -> "passed", "failed", "error" or "skipped", from a pytest --junitxml file."""
    results: dict[str, str] = {}
    for case in ET.parse(junit_xml).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                break
        # A test that fails in teardown after passing has two entries: the worse one counts.
        if results.get(test_id, "passed") == "passed":
            results[test_id] = outcome
    return results


def compare(name: str, plain_xml: Path, guarded_xml: Path, report: Path) -> bool:
    """Print the comparison; True when every test that passed plain passed guarded."""
    plain, guarded = outcomes(plain_xml), outcomes(guarded_xml)
    lines = report.read_text(encoding="utf-8").splitlines() if report.exists() else []
    receipts = sum(json.loads(line)["receipts"] for line in lines if line.strip())
    counts = dict(Counter(plain.values())), dict(Counter(guarded.values()))
    print(f"{name}: plain {counts[0]}; guarded {counts[1]}")
    print(f"{name}: StreamGuard sealed {receipts} receipts in the guarded run")
    failed = False
    if plain.keys() != guarded.keys():
        failed = True
        for test_id in sorted(plain.keys() ^ guarded.keys()):
            print(f"  collected in one run only: {test_id}")
    lost = sorted(t for t, o in plain.items() if o == "passed" and guarded.get(t) != "passed")
    for test_id in lost:
        print(f"  passes plain, {guarded.get(test_id, 'missing')} guarded: {test_id}")
    gained = sorted(t for t, o in guarded.items() if o == "passed" and plain.get(t) != "passed")
    for test_id in gained:
        print(f"  (passes guarded only, {plain.get(test_id, 'missing')} plain: {test_id})")
    if receipts == 0:
        print(f"{name}: the guarded run guarded no stream, so it shows nothing")
        failed = True
    if lost:
        print(f"{name}: {len(lost)} tests pass plain but not with StreamGuard")
        failed = True
    if not failed:
        passed = sum(o == "passed" for o in plain.values())
        print(f"{name}: all {passed} tests that pass plain pass with StreamGuard")
    return not failed


if __name__ == "__main__":
    name, plain_xml, guarded_xml, report = sys.argv[1:5]
    sys.exit(0 if compare(name, Path(plain_xml), Path(guarded_xml), Path(report)) else 1)
