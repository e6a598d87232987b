"""docs/reliability.md matches the tests: every row names a collected `faults` test, and every
`faults` test has a row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"


def _collected_faults() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "faults",
                          "-p", "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def test_every_row_names_a_faults_test_and_every_faults_test_has_a_row():
    rows = [line for line in DOC.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| fault")]
    named = {m for line in rows for m in re.findall(r"`(tests/[^`]+::[^`]+)`", line)}
    assert len(rows) >= 40 and named
    collected = _collected_faults()
    assert not named - collected, f"rows naming no collected faults test: {named - collected}"
    assert not collected - named, f"faults tests without a row: {collected - named}"
