"""What a new user meets first, through the real CLI: answers before the heavy imports, one
``error:`` line per expected failure, plain output off a terminal, Ctrl-C on a terminal,
failures that are not retried when a retry cannot help, and a resume that heals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedma.spec import dump, parse, round_spec
from tests.conftest import training_manifest, write_yaml
from tests.e2e.terminal import ctrl_c_once
from tests.faults.conftest import INJECT

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "fedma.cli"]
ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return {**out, "PYTHONPATH": str(ROOT), **extra}


def fedma(*args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env(**extra),
                          timeout=timeout, cwd=ROOT)


def test_both_commands_have_version_and_help_with_defaults():
    from importlib.metadata import version

    assert fedma("--version").stdout.strip() == f"fedma {version('fedma')}"
    op = subprocess.run([sys.executable, "-m", "fedma_operator.main", "--version"],
                        capture_output=True, text=True, env=env())
    assert op.returncode == 0 and op.stdout.strip() == f"fedma-operator {version('fedma')}"
    helptext = subprocess.run([sys.executable, "-m", "fedma_operator.main", "--help"],
                              capture_output=True, text=True, env=env()).stdout
    options = re.findall(r"^  (--[a-z-]+)", helptext, re.M)
    assert len(options) >= 12, helptext
    # Every option says what it does; every one with a value says its default.
    blocks = re.split(r"\n(?=  --)", helptext.split("options:", 1)[1])
    for block in blocks:
        opt = block.split()[0]
        if opt in ("-h,", "--help", "--version"):
            continue
        assert len(block.split()) > 3, f"{opt} has no help:\n{block}"
        if "store_true" not in block and opt not in ("--namespace", "--all-namespaces",
                                                     "--verbose"):
            assert "default:" in block, f"{opt} says no default:\n{block}"


_PROBE = """
import sys
from fedma.cli import app
sys.argv = ["fedma", *sys.argv[1:]]
try:
    app()
except SystemExit as exc:
    code = exc.code
print("torch imported:", "torch" in sys.modules, "exit:", code)
"""


def test_spec_and_data_errors_come_before_torch_is_imported(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models)
    obj["spec"]["training"]["batch_size"] = 3
    spec_error = subprocess.run([sys.executable, "-c", _PROBE, "run",
                                 str(write_yaml(tmp_path / "a.yaml", obj))],
                                capture_output=True, text=True, env=env())
    assert "torch imported: False exit: 2" in spec_error.stdout, spec_error.stderr
    assert "spec.training.batch_size: unknown field; the API spells it 'batchSize'" in \
        spec_error.stderr
    obj = training_manifest(tmp_path, tiny_models)
    (tmp_path / "data" / "silo-1" / "images" / "0003.png").write_bytes(b"\x89PNG broken")
    data_error = subprocess.run([sys.executable, "-c", _PROBE, "run",
                                 str(write_yaml(tmp_path / "b.yaml", obj))],
                                capture_output=True, text=True, env=env())
    assert "torch imported: False exit: 2" in data_error.stdout, data_error.stderr
    assert f"{tmp_path / 'data/silo-1/data.jsonl'}:4: image" in data_error.stderr


def test_a_missing_model_folder_is_named_with_its_field(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models)
    obj["spec"]["model"]["languageModel"]["path"] = "/models/vicuna-7b"
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: spec.model.languageModel.path: /models/vicuna-7b not "
                                  "found on this machine"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.s3
def test_missing_store_credentials_are_one_line_that_says_where_they_come_from(
        tmp_path, tiny_models, s3):
    obj = training_manifest(tmp_path, tiny_models, rounds=1, store_uri="s3://fedma/creds")
    obj["spec"]["artifacts"]["credentialsSecret"] = "fedma-s3"
    bare = {k: v for k, v in env().items() if not k.startswith("AWS_")}
    t0 = time.monotonic()
    proc = subprocess.run([*CLI, "run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT,
                          env={**bare, "AWS_ENDPOINT_URL": s3, "AWS_CONFIG_FILE": "/nonexistent",
                               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                               "AWS_EC2_METADATA_DISABLED": "true"}, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no credentials for the store" in lines[0]
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in lines[0]
    assert "credentialsSecret names the Kubernetes Secret" in lines[0]
    # Refused at once: a missing credential is not an outage to ride out (120 s budget).
    assert time.monotonic() - t0 < 60


def test_output_off_a_terminal_is_plain_unwrapped_lines(tmp_path, tiny_models):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "run"
    obj = training_manifest(tmp_path, tiny_models, rounds=1, n=8)
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(deep))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("[")]  # DeepSpeed's
    assert "" not in lines, proc.stdout
    assert lines[1].split() == ["round", "held-out", "loss", "retrieval", "acc", "silos",
                                "seconds"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["0", "1"]
    assert lines[-1] == f"report: {deep / 'report.json'} (2 rows)"
    assert "\x1b[" not in proc.stdout + proc.stderr  # no colour codes in a file


@pytest.mark.faults
def test_ctrl_c_on_a_terminal_says_what_is_kept_and_the_same_command_resumes(tmp_path,
                                                                             tiny_models):
    manifest = write_yaml(tmp_path / "t.yaml",
                          training_manifest(tmp_path, tiny_models, rounds=3, n=30))
    committed = tmp_path / "store/tiny/round-0001/global.safetensors.manifest.json"
    # Round 2's silo-1 takes a minute (tests/faults/inject): Ctrl-C, a second after round 1
    # is committed, lands in round 2 however slow the machine (a CI run once finished all
    # three tiny rounds before the press).
    slow = env(PYTHONPATH=f"{ROOT}{os.pathsep}{INJECT}", FEDMA_FAULT_SLOW_S="60",
               FEDMA_FAULT=f"slow:silo-1@2:{tmp_path / 'slowed'}")
    rc, text = ctrl_c_once([*CLI, "run", str(manifest), "--out", str(tmp_path / "o")],
                           committed, cwd=ROOT, env=slow, wait_s=300, settle_s=1.0,
                           exit_s=30)
    flat = " ".join(text.split())
    assert rc == 130, text[-2000:]
    assert (f"interrupted in round 2 of 3; round 1 is kept in file://{tmp_path / 'store'}/tiny;"
            " run the same command to resume") in flat, text[-2000:]
    assert "Traceback" not in text and "Aborted" not in text
    again = fedma("run", str(manifest), "--out", str(tmp_path / "o"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rounds 1–1 already complete" in again.stdout
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2, 3]


@pytest.mark.faults
def test_bad_data_in_a_silo_is_not_retried(tmp_path, tiny_models):
    """A silo whose shard holds an image that does not decode fails before its backbones load,
    says every bad line, and is excluded after one attempt even with retries left."""
    from fedma.local.runner import LocalRunner

    obj = training_manifest(tmp_path, tiny_models, silos=2, rounds=1, n=12)
    obj["spec"]["aggregation"].update(minSilos=1, backoffLimit=2)
    cut = tmp_path / "data" / "silo-2" / "images" / "0007.png"
    cut.write_bytes(cut.read_bytes()[:40])
    report = LocalRunner(parse(obj), tmp_path / "o", evaluate=False).run()
    reason = report["rounds"][1]["excluded"]["silo-2"]
    assert f"{tmp_path / 'data/silo-2/data.jsonl'}:8: image {cut} is unreadable" in reason
    assert reason.endswith("(not retried: fix the data)"), reason
    logs = sorted(p.name for p in (tmp_path / "o/rounds/round-0001").glob("silo-2.*.log"))
    assert logs == ["silo-2.attempt-1.log"]


@pytest.mark.faults
def test_a_stored_update_that_fails_its_digest_is_trained_again(tmp_path, tiny_models):
    """A silo Job that crashed after uploading is retried and re-reports its stored update;
    if that update was corrupted since, it is trained again, not reported (the aggregator
    would then exclude an honest silo)."""
    obj = training_manifest(tmp_path, tiny_models, silos=1, rounds=1, n=8)
    rnd = write_yaml(tmp_path / "r.yaml", dump(round_spec(parse(obj), 1, None)))
    first = fedma("train-silo", "--round", str(rnd), "--silo", "silo-1")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    again = json.loads(fedma("train-silo", "--round", str(rnd), "--silo", "silo-1")
                       .stdout.strip().splitlines()[-1])
    assert again["reused"] is True and again["update"] == summary["update"]
    update = tmp_path / "store/tiny/round-0001/silos/silo-1/update.safetensors"
    data = bytearray(update.read_bytes())
    data[-1] ^= 0xFF
    update.write_bytes(bytes(data))
    healed = fedma("train-silo", "--round", str(rnd), "--silo", "silo-1")
    assert healed.returncode == 0, healed.stderr[-3000:]
    out = json.loads(healed.stdout.strip().splitlines()[-1])
    assert "reused" not in out and "fails its check" in healed.stderr
    assert out["update"]["digest"] == summary["update"]["digest"]  # same training, same bytes
    import hashlib

    assert hashlib.sha256(update.read_bytes()).hexdigest() == out["update"]["digest"]


def test_init_refuses_what_cannot_be_a_training(tmp_path):
    assert "not a folder" in fedma("init", str(tmp_path / "nope")).stderr
    (tmp_path / "empty" / "x").mkdir(parents=True)
    assert "no sub-folder holds a data.jsonl" in fedma("init", str(tmp_path / "empty")).stderr
    (tmp_path / "bad" / "Clinic_A").mkdir(parents=True)
    (tmp_path / "bad" / "Clinic_A" / "data.jsonl").write_text("")
    proc = fedma("init", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "must be a DNS label" in proc.stderr and \
        "Clinic_A" in proc.stderr


def test_make_demo_installs_only_what_the_demo_needs(tmp_path):
    dry = subprocess.run(["make", "-n", "demo", f"VENV={tmp_path / 'v'}"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert "-e '.[demo]'" in dry and "fedma demo" in dry
    assert "npm" not in dry and "dev" not in dry.replace("/dev/", ""), dry
