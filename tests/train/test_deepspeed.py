"""The DeepSpeed engine for real on CPU (gloo): ZeRO-3 over 2 ranks against 1 rank."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from fedma.model.projector import build_projector, projector_state
from fedma.spec import ProjectorRef, dump, parse, round_spec
from fedma.store import Store, global_rel
from tests.conftest import training_manifest, write_yaml

pytestmark = pytest.mark.deepspeed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_silo(tmp_path, tiny, name: str, nproc: int, timeout: float = 600, **training
             ) -> tuple[dict, dict[str, torch.Tensor]]:
    root = tmp_path / name
    obj = training_manifest(root, tiny, silos=1, rounds=1, n=16, engine="deepspeed",
                            deepspeed={"zeroStage": 3})
    obj["spec"]["training"].update({"learningRate": 1e-2, **training})
    training = parse(obj)
    store = Store(training.spec.artifacts.uri)
    ref = store.put_tensors(global_rel("tiny", 0),
                            projector_state(build_projector("mlp2x_gelu", 32, 32, seed=0)))
    rnd = round_spec(training, 1, ProjectorRef(**ref.as_dict()))
    round_file = write_yaml(root / "round.yaml", dump(rnd))
    term = root / "term.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.getcwd()}
    args = ["-m", "fedma.cli", "train-silo", "--round", str(round_file), "--silo", "silo-1",
            "--termination-log", str(term)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(term.read_text())
    return summary, store.get_tensors(store.rel(summary["update"]["uri"]),
                                      summary["update"]["digest"])


def test_zero3_partitions_frozen_backbones_and_matches_one_rank(tmp_path, tiny_models):
    # Batches of 5 over 2 ranks: 3 + 2 samples, and a last batch of 1 that leaves rank 1
    # nothing. Every rank still takes 4 steps (one that skipped the last would leave the
    # other waiting in its collectives: the timeout), and with each rank's loss weighted by
    # its caption tokens the 2-rank step is the 1-rank step.
    one, w1 = run_silo(tmp_path, tiny_models, "one", 1, batchSize=5)
    two, w2 = run_silo(tmp_path, tiny_models, "two", 2, timeout=300, batchSize=5)
    total = one["zero"]["frozen_elements_total"]
    assert one["zero"]["frozen_elements_per_rank"] == [total]
    per_rank = two["zero"]["frozen_elements_per_rank"]
    assert two["zero"]["world_size"] == 2 and two["zero"]["frozen_elements_total"] == total
    # Each rank holds only its (padded) half of every frozen tensor.
    assert all(total / 2 <= n < total / 2 + 1000 for n in per_rank), per_rank
    assert one["steps"] == two["steps"] == 4 and one["samples"] == two["samples"] == 16
    assert abs(one["loss"] - two["loss"]) < 1e-4, (one["loss"], two["loss"])
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=2e-4, rtol=1e-3), k
    base = projector_state(build_projector("mlp2x_gelu", 32, 32, seed=0))
    assert any(not torch.allclose(w1[k], base[k]) for k in base)


def test_zero3_in_bf16_uploads_the_fp32_projector_without_a_rounding_offset(tmp_path,
                                                                           tiny_models):
    # As tests/train/test_device.py for the torch engine: a learning rate below float32's
    # resolution of these weights, so the update must be the input bit for bit, where the
    # bfloat16 copy that DeepSpeed's own bf16 mode trains and would upload is not.
    two, w2 = run_silo(tmp_path, tiny_models, "bf16", 2, precision="bf16", learningRate=1e-30)
    assert two["precision"] == "bf16" and two["steps"] == 4 and two["loss"] > 0
    base = projector_state(build_projector("mlp2x_gelu", 32, 32, seed=0))
    for k in base:
        assert w2[k].dtype == torch.float32 and torch.equal(w2[k], base[k]), k
    assert any(not torch.equal(v.bfloat16().float(), v) for v in base.values())
