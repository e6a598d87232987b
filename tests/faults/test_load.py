"""Load at the scale the reliability issue names: 3 trainings × 100 silos × 5 rounds at once
through one operator (bench/load.py, kmock in a child process, the test Job controller)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.load, pytest.mark.operator]


def test_three_trainings_of_100_silos_complete_with_every_job_once_and_flat_memory(tmp_path):
    proc = subprocess.run([sys.executable, "bench/load.py", "--trainings", "3", "--silos",
                           "100", "--rounds", "5", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    row = json.loads((tmp_path / "load-detail.json").read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], row)
    assert row["phases"] == ["Succeeded"] * 3 and row["completed_rounds"] == 15
    assert row["jobs"] == row["jobs_expected"] == 3 * 5 * 101
    assert row["job_creates"] == 3 * 5 * 101 and row["create_conflicts"] == 0
    assert not row["lost"] and not row["duplicate_names"]
    assert row["heap_growth_mib"] < 5.0  # what the operator retains stays flat
