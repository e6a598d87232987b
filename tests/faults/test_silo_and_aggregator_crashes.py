"""Processes dying by SIGKILL at each point of a round (local backend: the same state machine,
fedma.rounds, decides retries for the operator), and bad silo data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedma.store import MANIFEST_SUFFIX, Store, global_rel, sha256, update_rel
from tests.conftest import training_manifest, write_yaml
from tests.faults.conftest import fedma

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def _three_silos(tmp_path: Path, tiny_models: dict, **aggregation: object) -> Path:
    obj = training_manifest(tmp_path, tiny_models, silos=3, rounds=1)
    obj["spec"]["aggregation"].update({"backoffLimit": 1, **aggregation})
    obj["spec"].pop("evaluation")
    return write_yaml(tmp_path / "t.yaml", obj)


@pytest.mark.parametrize("point", ["start", "mid-training", "after-upload"])
def test_a_silo_killed_is_retried_and_the_round_completes_with_every_silo(
        tmp_path, tiny_models, point):
    manifest = _three_silos(tmp_path, tiny_models, minSilos=3)
    marker = tmp_path / "fired"
    proc = fedma("run", str(manifest), "--out", str(tmp_path / "out"), "--parallel", "1",
                 fault=f"{point}:silo-2:{marker}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists(), "the fault never fired"
    rdir = tmp_path / "out" / "rounds" / "round-0001"
    # The killed attempt wrote no termination summary; the retry did, and succeeded.
    assert not (rdir / "silo-2.attempt-1.json").exists()
    retry = json.loads((rdir / "silo-2.attempt-2.json").read_text())
    assert retry["status"] == "Succeeded"
    row = json.loads((tmp_path / "out" / "report.json").read_text())["rounds"][1]
    assert row["silos"] == 3 and not row["excluded"]
    store = Store(f"file://{tmp_path / 'store'}")
    manifest_out = store.get_manifest(global_rel("tiny", 1))
    assert manifest_out["included"] == ["silo-1", "silo-2", "silo-3"]
    # What was aggregated is the update the retry reported, and it is what the store holds.
    assert manifest_out["requested"]["silo-2"] == retry["update"]["digest"]
    rel = update_rel("tiny", 1, "silo-2")
    assert sha256(store.get_bytes(rel)) == retry["update"]["digest"]
    # No torn file anywhere: every artifact has its manifest, and no temporary is left.
    assert not list((tmp_path / "store").rglob("*.tmp"))
    for f in (tmp_path / "store").rglob("*.safetensors"):
        assert Path(str(f) + MANIFEST_SUFFIX).exists(), f


def test_an_aggregator_killed_mid_write_leaves_no_torn_projector_and_the_retry_is_identical(
        tmp_path, tiny_models):
    manifest = _three_silos(tmp_path, tiny_models)
    proc = fedma("run", str(manifest), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = Store(f"file://{tmp_path / 'store'}")
    out_rel = global_rel("tiny", 1)
    first = store.get_manifest(out_rel)
    rdir = tmp_path / "out" / "rounds" / "round-0001"
    include = [a for s, d in sorted(first["requested"].items()) for a in ("--include",
                                                                          f"{s}={d}")]
    target = tmp_path / "store" / out_rel
    target.unlink()  # as if round 1 had not been aggregated yet
    Path(str(target) + MANIFEST_SUFFIX).unlink()

    marker = tmp_path / "fired"
    killed = fedma("aggregate", "--round", str(rdir / "round.yaml"), *include,
                   fault=f"aggregate-mid-write:-:{marker}")
    assert killed.returncode == -9 and marker.exists(), killed.stderr[-2000:]
    partial = list(target.parent.glob(f".{target.name}.*.tmp"))
    assert partial and partial[0].stat().st_size > 0  # it really died halfway through
    assert not target.exists() and not store.committed(out_rel)  # nothing a reader could use

    retry = fedma("aggregate", "--round", str(rdir / "round.yaml"), *include,
                  "--summary-out", str(tmp_path / "retry.json"))
    assert retry.returncode == 0, retry.stderr[-3000:]
    again = json.loads((tmp_path / "retry.json").read_text())
    assert again["output"]["digest"] == first["sha256"]  # deterministic: the same bytes
    assert again["reused"] is False
    assert sha256(target.read_bytes()) == first["sha256"]


@pytest.mark.parametrize("damage", ["missing", "corrupt-image", "corrupt-manifest"])
def test_a_silo_with_missing_or_corrupt_data_is_excluded_naming_the_file_and_quorum_holds(
        tmp_path, tiny_models, damage):
    manifest = _three_silos(tmp_path, tiny_models, minSilos=2)
    data = tmp_path / "data" / "silo-3"
    if damage == "missing":
        shutil.rmtree(data)
        expect = "data manifest not found"
    elif damage == "corrupt-image":
        (data / "images" / "0005.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        expect = "0005.png"
    else:
        with (data / "data.jsonl").open("a") as f:
            f.write('{"image": "images/0001.png", "caption": \n')
        expect = "data.jsonl:25: not valid JSON"
    # The round as a cluster runs it: the silo finds its own data bad (``fedma run`` itself
    # refuses such a spec before it starts: tests/e2e/test_local_run.py). Not retried: the
    # same data fails the same way.
    from fedma.local.runner import LocalRunner
    from fedma.spec import load

    report = LocalRunner(load(manifest), tmp_path / "out", evaluate=False).run()
    row = report["rounds"][1]
    assert row["silos"] == 2
    assert expect in row["excluded"]["silo-3"], row["excluded"]
    assert row["excluded"]["silo-3"].endswith("(not retried: fix the data)")
    assert not (tmp_path / "out/rounds/round-0001/silo-3.attempt-2.log").exists()
