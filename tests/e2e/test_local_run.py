"""The local backend end to end: the CLI, subprocess silos and aggregator, resume, failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import training_manifest, write_yaml
from tests.faults.conftest import INJECT

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "fedma.cli"]


def env():
    return {**os.environ, "PYTHONPATH": os.getcwd(), "COLUMNS": "200"}


def fedma(*args, timeout=600, extra=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True,
                          env={**env(), **(extra or {})}, timeout=timeout)


def test_run_trains_and_reports(tmp_path, tiny_models):
    manifest = write_yaml(tmp_path / "t.yaml", training_manifest(tmp_path, tiny_models, rounds=2))
    proc = fedma("run", str(manifest), "--out", str(tmp_path / "out"), "--parallel", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = report["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["silos"] == 2 for r in rows[1:])
    assert rows[-1]["heldout_loss"] < rows[0]["heldout_loss"]
    assert 0.0 <= rows[-1]["retrieval_accuracy"] <= 1.0
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "store" / "tiny" / "round-0002" / "global.safetensors").exists()


@pytest.mark.faults
def test_resume_after_interrupt_keeps_completed_rounds(tmp_path, tiny_models):
    manifest = write_yaml(tmp_path / "t.yaml",
                          training_manifest(tmp_path, tiny_models, rounds=3, n=30))
    out = tmp_path / "out"
    committed = tmp_path / "store/tiny/round-0001/global.safetensors.manifest.json"
    proc = subprocess.Popen([*CLI, "run", str(manifest), "--out", str(out)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    while not committed.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its silo subprocesses, mid-round 2
    proc.wait()
    assert committed.exists(), "round 1 never completed"
    assert not (tmp_path / "store/tiny/round-0003/global.safetensors.manifest.json").exists()
    digest = json.loads(committed.read_text())["sha256"]

    again = fedma("run", str(manifest), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout and "rounds 1–1 already complete" in again.stdout
    assert json.loads(committed.read_text())["sha256"] == digest  # never retrained
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2, 3]


def _dies(silo: str, times: int, tmp_path: Path) -> dict[str, str]:
    """The silo's process is SIGKILLed at start ``times`` times (tests/faults/inject)."""
    return {"PYTHONPATH": os.pathsep.join([str(INJECT), os.getcwd()]),
            "FEDMA_FAULT": ";".join(f"start:{silo}:{tmp_path / f'died-{i}'}"
                                    for i in range(times))}


def test_dead_silo_is_excluded_with_reason_and_quorum_carries_the_round(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models, silos=3, rounds=1)
    obj["spec"]["aggregation"].update(minSilos=2, backoffLimit=1)
    manifest = write_yaml(tmp_path / "t.yaml", obj)
    proc = fedma("run", str(manifest), "--out", str(tmp_path / "out"),
                 extra=_dies("silo-3", 2, tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "out" / "report.json").read_text())["rounds"][1]
    assert row["silos"] == 2
    assert "exit code -9" in row["excluded"]["silo-3"]
    assert "(attempt 2 of 2)" in row["excluded"]["silo-3"]


def test_quorum_impossible_fails_with_reason(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models, silos=2, rounds=1)
    obj["spec"]["aggregation"]["backoffLimit"] = 0
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(tmp_path / "o"),
                 extra=_dies("silo-2", 1, tmp_path))
    assert proc.returncode == 2
    assert "quorum impossible" in proc.stderr and "silo-2" in proc.stderr


def test_missing_data_is_refused_before_anything_runs(tmp_path, tiny_models):
    """Every silo's data is checked before a model loads: a missing manifest is named at
    once, with the other silos' problems, and nothing is trained or written to the store."""
    obj = training_manifest(tmp_path, tiny_models, silos=3, rounds=1)
    obj["spec"]["silos"][1]["data"]["path"] = str(tmp_path / "missing.jsonl")
    (tmp_path / "data" / "silo-3" / "images" / "0005.png").write_bytes(b"not a png")
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert f"{tmp_path / 'missing.jsonl'}: data manifest of silo silo-2 not found" in proc.stderr
    assert f"{tmp_path / 'data/silo-3/data.jsonl'}:6: image" in proc.stderr
    assert "unreadable" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "o").exists()


def test_bad_yaml_field_is_a_clear_error(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models)
    obj["spec"]["training"]["batchSize"] = 0
    obj["spec"]["aggregation"]["strategy"] = "fedmagic"
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)))
    assert proc.returncode == 2
    assert "spec.training.batchSize: Input should be greater than or equal to 1" in proc.stderr
    assert "spec.aggregation.strategy" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.faults
def test_train_silo_failure_writes_termination_reason(tmp_path, tiny_models):
    from fedma.spec import dump, parse, round_spec

    obj = training_manifest(tmp_path, tiny_models, silos=1, rounds=1)
    obj["spec"]["silos"][0]["data"]["path"] = str(tmp_path / "nope.jsonl")
    rnd = round_spec(parse(obj), 1, None)
    term = tmp_path / "term.json"
    proc = fedma("train-silo", "--round", str(write_yaml(tmp_path / "r.yaml", dump(rnd))),
                 "--silo", "silo-1", "--termination-log", str(term))
    assert proc.returncode == 2
    summary = json.loads(Path(term).read_text())
    assert summary["status"] == "Failed" and "data manifest not found" in summary["reason"]


@pytest.mark.faults
def test_resume_with_a_changed_spec_is_refused(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models, rounds=1, n=8)
    manifest = write_yaml(tmp_path / "t.yaml", obj)
    assert fedma("run", str(manifest), "--out", str(tmp_path / "o")).returncode == 0
    obj["spec"]["training"]["learningRate"] = 0.5
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "spec.training changed since training 'tiny' started" in proc.stderr


@pytest.mark.s3
def test_run_over_s3_store(tmp_path, tiny_models, s3_env):
    import boto3

    obj = training_manifest(tmp_path, tiny_models, rounds=1, n=8,
                            store_uri="s3://fedma/e2e-run")
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_env).list_objects_v2(
        Bucket="fedma", Prefix="e2e-run/")["Contents"]}
    assert {"e2e-run/tiny/round-0001/global.safetensors",
            "e2e-run/tiny/round-0001/silos/silo-2/update.safetensors.manifest.json"} <= keys
    assert not (tmp_path / "store").exists()  # nothing went to local disk instead


@pytest.mark.faults
def test_stragglers_past_the_deadline_fail_the_round_cleanly(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models, rounds=1)
    obj["spec"]["aggregation"]["deadlineSeconds"] = 1  # silo processes need longer to start
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "quorum impossible" in proc.stderr
    assert "silo-1: missed the round's deadline (straggler)" in proc.stderr
    assert not (tmp_path / "store/tiny/round-0001/global.safetensors").exists()


@pytest.mark.parametrize("strategy", ["fedadam", "fedcmp"])
def test_server_state_flows_between_rounds(tmp_path, tiny_models, strategy):
    import yaml

    obj = training_manifest(tmp_path, tiny_models, rounds=2, n=8)
    obj["spec"]["aggregation"].update(strategy=strategy, options={"server_lr": 0.5})
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state1 = json.loads((tmp_path / "store/tiny/round-0001/server-state.safetensors"
                         ".manifest.json").read_text())
    round2 = yaml.safe_load((tmp_path / "o/rounds/round-0002/round.yaml").read_text())
    assert round2["spec"]["serverState"]["digest"] == state1["sha256"]
    assert (tmp_path / "store/tiny/round-0002/server-state.safetensors").exists()


def test_privacy_budget_is_reported_per_round(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setenv("FEDMA_DP_SEED", "from-a-secret")
    obj = training_manifest(tmp_path, tiny_models, rounds=2, n=8)
    obj["spec"]["aggregation"]["privacy"] = {"noiseMultiplier": 1.1, "clipNorm": 0.5}
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "o/report.json").read_text())["rounds"]
    assert 0 < rows[1]["epsilon"] < rows[2]["epsilon"]
    manifest = json.loads((tmp_path / "store/tiny/round-0002/global.safetensors.manifest.json")
                          .read_text())
    assert manifest["report"]["_privacy"]["rounds"] == 2
