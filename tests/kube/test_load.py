"""Load on the real control plane: 3 trainings × 100 silos × 5 rounds at once through one
operator (bench/load.py: its own cluster, the hub chart, the operator as deployed, the process
kubelet's fast mode). The figures go to docs/benchmarks.md through ``make bench-load``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.kube.cluster import ROOT

pytestmark = [pytest.mark.kube, pytest.mark.load]
OWN_CLUSTER = True  # starts a cluster of its own: runs before the silo cluster (conftest.py)


def test_three_trainings_of_100_silos_complete_with_every_job_created_once(tmp_path):
    proc = subprocess.run([sys.executable, "bench/load.py", "--trainings", "3", "--silos",
                           "100", "--rounds", "5", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    detail = tmp_path / "load-detail.json"
    assert detail.exists(), proc.stderr[-3000:]
    row = json.loads(detail.read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], row)
    assert row["phases"] == ["Succeeded"] * 3 and row["completed_rounds"] == 15
    assert row["jobs"] == row["jobs_expected"] == 3 * 5 * 101
    assert row["job_creates"] == 3 * 5 * 101 and row["create_conflicts"] == 0
    assert not row["lost"] and not row["duplicate_names"] and not row["created_twice"]
    assert not row["forbidden"], row["forbidden"]
