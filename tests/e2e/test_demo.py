"""``fedma demo`` with the real bundled backbones (EfficientNet-Lite0, SmolLM2-135M), small."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_learns_with_real_backbones(tmp_path):
    """A cold model cache: the GGUF is read through transformers and converted, for real."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fedma.cli", "demo", "--out", str(out), "--rounds", "2",
         "--train-samples", "1280", "--eval-samples", "60"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": os.getcwd(), "COLUMNS": "200",
             "FEDMA_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = report["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert set(r) >= {"round", "heldout_loss", "retrieval_accuracy", "silos", "seconds"}
    assert rows[-1]["heldout_loss"] < rows[0]["heldout_loss"] - 1.0
    assert (out / "curves.png").exists()
    assert "held-out loss" in proc.stdout
    assert (tmp_path / "cache/models/smollm2-135m-instruct/model.safetensors").exists()
    assert 0.05 < report["retrieval_chance"] < 0.15
