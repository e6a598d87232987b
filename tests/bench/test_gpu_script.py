"""bench/gpu.py, the prepared GPU check, at tiny shapes on the CPU (``--device cpu --tiny``),
so the script a lent GPU runs cannot rot: both engines' smoke runs through ``fedma
train-silo``, and fedma's step against transformers' LLaVA on the same weights."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_gpu_script_runs_at_tiny_shapes_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny",
                           "--steps", "2", "--blocks", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-tiny.json").read_text())
    assert result["failed"] == [] and result["bf16_matmul_peak_flops"] > 0
    smoke = {r["engine"]: r for r in result["smoke"]}
    assert set(smoke) == {"torch", "deepspeed"}
    for run in smoke.values():
        assert run["device"] == "cpu" and run["precision"] == "fp32" and run["steps"] == 4
    llava = result["llava"]
    # The same function on the same weights: the comparison is of speed alone.
    assert abs(llava["loss_fedma"] - llava["loss_transformers"]) < 1e-4
    assert llava["projector_gradient_relative_difference"] < 1e-5
    assert len(llava["samples_per_s"]["fedma"]) == len(llava["samples_per_s"]["transformers"]) == 2
    assert llava["speedup"] > 0 and llava["lm_fraction_of_peak"] > 0
    assert llava["flops_per_sample"]["total"] > 0
