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


def run_silo(tmp_path, tiny, name: str, nproc: int, timeout: float = 600, n: int = 16,
             again: bool = False, **training) -> tuple[dict, dict[str, torch.Tensor]]:
    """One silo Job under torchrun; ``again`` launches the same Job a second time (a retry
    after its update was committed) and returns that run's summary."""
    root = tmp_path / name
    obj = training_manifest(root, tiny, silos=1, rounds=1, n=n, engine="deepspeed",
                            deepspeed={"zeroStage": 3})
    obj["spec"]["training"].update({"learningRate": 1e-2, **training})
    training = parse(obj)
    store = Store(training.spec.artifacts.uri)
    width = json.loads((tiny["lm"] / "config.json").read_text())["hidden_size"]
    ref = store.put_tensors(global_rel("tiny", 0),
                            projector_state(build_projector("mlp2x_gelu", 32, width, seed=0)))
    rnd = round_spec(training, 1, ProjectorRef(**ref.as_dict()))
    round_file = write_yaml(root / "round.yaml", dump(rnd))
    term = root / "term.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           # glibc keeps freed heap pages, so RssAnon (what the load peak samples) would
           # count tensors long gone; with a fixed mmap threshold each large tensor is its own
           # mapping, returned when freed, and RssAnon follows the live tensors.
           "MALLOC_MMAP_THRESHOLD_": "131072",
           "PYTHONPATH": os.getcwd()}
    args = ["-m", "fedma.cli", "train-silo", "--round", str(round_file), "--silo", "silo-1",
            "--termination-log", str(term)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), *args]
    else:
        cmd = [sys.executable, *args]
    for _ in range(2 if again else 1):
        term.unlink(missing_ok=True)
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


@pytest.fixture(scope="module")
def wide_models(tiny_models, tmp_path_factory):
    """The tiny vision tower with a 270 MB float32 LM (68 M parameters), so that a rank that
    held the whole LM would show it against the noise of a process's heap."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from fedma.model.fingerprint import fingerprint_weights

    root = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=2, bos_token_id=2, tie_word_embeddings=False))
    lm.save_pretrained(root / "lm")
    for f in tiny_models["lm"].iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, root / "lm" / f.name)
    return {**tiny_models, "lm": root / "lm", "lm_fp": fingerprint_weights(root / "lm"),
            "lm_bytes": sum(p.numel() * 4 for p in lm.parameters())}


def test_zero3_loads_into_partitions_and_no_rank_holds_the_whole_model(tmp_path, tiny_models,
                                                                       wide_models):
    # The backbones load under transformers' ZeRO-3 loader (HfDeepSpeedConfig alive): built
    # under zero.Init, each module gathered only while rank 0 writes its weights. The peak is
    # what the LM adds over the same load of the tiny models (the process's own overhead).
    peak = {}
    for models, what in ((tiny_models, "tiny"), (wide_models, "wide")):
        for world in (1, 2):
            out, _ = run_silo(tmp_path, models, f"{what}-{world}", world, n=4,
                              maxStepsPerRound=1)
            peak[what, world] = out["zero"]["load_peak_bytes_per_rank"]
    size = wide_models["lm_bytes"]
    largest = 8192 * 1024 * 4  # the embedding and the LM head
    alone = peak["wide", 1][0] - peak["tiny", 1][0]
    shares = [w - t for w, t in zip(peak["wide", 2], peak["tiny", 2], strict=True)]
    print(f"LM {size / 2**20:.0f} MiB: load peak above the tiny models' {alone / 2**20:.0f} MiB "
          f"on 1 rank, {[round(b / 2**20) for b in shares]} MiB on each of 2")
    assert alone > 0.9 * size  # the measurement sees a whole model where one rank holds it
    # Half the model, plus a few of its largest tensors in flight (one gathered module and
    # the partition it is written back to), never the whole of it.
    assert all(b < 0.5 * size + 3 * largest for b in shares), (shares, size)
    assert all(b < 0.8 * alone for b in shares), (shares, alone)


def test_zero3_with_activation_checkpointing_trains_the_same_and_releases_the_backbones(
        tmp_path, wide_models):
    # Upstream: ZeRO-3 + frozen parameters + activation checkpointing crashed up to DeepSpeed
    # 0.19.2 and, from 0.19.3, left frozen parameters gathered after the recompute, which
    # cancels ZeRO-3's saving. The step must run, give the step without checkpointing, and
    # leave every frozen parameter partitioned.
    # The wide LM: ZeRO-3 keeps parameters under 1e5 elements whole (all of the tiny ones).
    plain, w_plain = run_silo(tmp_path, wide_models, "plain", 2, n=8)
    ckpt, w_ckpt = run_silo(tmp_path, wide_models, "ckpt", 2, n=8,
                            activationCheckpointing=True)
    assert ckpt["steps"] == plain["steps"] == 2
    assert abs(ckpt["loss"] - plain["loss"]) < 1e-5
    for k in w_plain:
        assert torch.allclose(w_plain[k], w_ckpt[k], atol=1e-6), k
    assert plain["zero"]["frozen_gathered_after_training"] == 0
    assert ckpt["zero"]["frozen_gathered_after_training"] == 0, ckpt["zero"]


def test_a_retried_job_reuses_the_committed_update_on_every_rank(tmp_path, tiny_models):
    # The retry finds the update committed on the same input. Every rank must see that and
    # exit: had only rank 0 returned, rank 1 would wait at the rendezvous for it (30 min).
    again, weights = run_silo(tmp_path, tiny_models, "again", 2, timeout=120, n=4,
                              maxStepsPerRound=1, again=True)
    assert again["reused"] is True and again["steps"] == 1 and weights
