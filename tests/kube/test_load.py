"""Load on the real control plane: 3 trainings × 100 silos × 3 rounds at once through one
operator, then one round at the schema's 1,000 silos (bench/load.py: its own cluster, the hub
chart, the operator as deployed, the process kubelet's fast mode). The figures in
docs/benchmarks.md come from ``make bench-load`` (5 rounds)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.kube.cluster import ROOT

pytestmark = [pytest.mark.kube, pytest.mark.load]
OWN_CLUSTER = True  # starts a cluster of its own: runs before the silo cluster (conftest.py)


def test_three_trainings_of_100_silos_and_a_round_of_1000_complete_within_every_limit(
        tmp_path):
    proc = subprocess.run([sys.executable, "bench/load.py", "--trainings", "3", "--silos",
                           "100", "--rounds", "3", "--max-silos", "1000", "--out",
                           str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    detail = tmp_path / "load-detail.json"
    assert detail.exists(), proc.stderr[-3000:]
    row = json.loads(detail.read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], row)
    assert row["phases"] == ["Succeeded"] * 3 and row["completed_rounds"] == 9
    assert row["jobs"] == row["jobs_expected"] == 3 * 3 * 101
    assert row["job_creates"] == 3 * 3 * 101 and row["create_conflicts"] == 0
    assert not row["lost"] and not row["duplicate_names"] and not row["created_twice"]
    assert not row["forbidden"], row["forbidden"]
    assert row["requests_per_round"] <= 1.5 * row["requests_minimum_per_round"], row
    # spec.silos maxItems end to end: every Job created and started (the round reaches each
    # by reference: a few hundred bytes of env), the aggregator's message complete JSON with
    # every rejected silo marked, the round object inside etcd's 1.5 MiB.
    big = row["max_round"]
    assert big["phase"] == "Succeeded" and big["jobs"] == 1001, big
    assert big["largest_env_bytes"] < 1024 and big["aggregator_message_bytes"] <= 4096, big
    assert big["rejected_match"] and big["round_object_bytes"] < 1536 * 1024, big
    # Its 1,000 Jobs were listed in pages (limit 500): the apiserver answered with a continue
    # token and the operator followed it; no Job or pod list went without a limit.
    assert big["list_continued"] >= 1 and big["list_unlimited"] == 0, big
