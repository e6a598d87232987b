"""docs/security.md names only tests that exist (each promise is held by a real test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_threat_model_names_exists():
    named = set(re.findall(r"`(tests/[^`]+::[^`]+)`", (ROOT / "docs/security.md").read_text()))
    assert len(named) >= 20
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    collected = {line.strip() for line in out.splitlines() if "::" in line}
    collected |= {c.split("[")[0] for c in collected}  # a parametrized test by its name
    assert not named - collected, sorted(named - collected)
