"""Device placement and precision of the silo step (fedma.train.device), on the CPU.

A GPU is not here: the meta device stands in for "not the CPU" (an op that mixes a meta
tensor with a CPU one raises, as one mixing CUDA and CPU does), and bfloat16 runs on the CPU.
The GPU run itself is bench/gpu.py's.
"""

import pytest
import torch

from fedma.model.llava import load_alignment_model
from fedma.spec import parse
from fedma.train.batches import rank_batches
from fedma.train.device import place, silo_device, use_bf16
from fedma.train.silo import train_silo
from tests.conftest import training_manifest
from tests.train.test_silo import first_round


def tiny_model(tmp_path, tiny):
    spec = parse(training_manifest(tmp_path, tiny, silos=1, rounds=1, n=4)).spec
    return load_alignment_model(spec.model)


CAPTIONS = ["a red square : the number one", "a blue circle", "three green dots in a row"]


def test_every_input_of_the_step_is_built_on_the_models_device(tmp_path, tiny_models):
    model = tiny_model(tmp_path, tiny_models)
    model.set_proximal(0.1)  # the FedProx reference is taken on the CPU, before the move
    # sdpa's mask shortcut reads the padding mask's values (.item()), which the meta device
    # has not got; the eager attention computes the same mask without reading it.
    model.lm.config._attn_implementation = "eager"
    place(model, torch.device("meta"), bf16=False)
    pixels = torch.randn(3, 3, 32, 32)  # as the data loader builds them: on the CPU
    loss = model(pixels, CAPTIONS)
    assert loss.device.type == "meta" and loss.shape == ()
    # The multi-rank form (token-weighted, a padding sample that does not count) too.
    assert model(pixels, CAPTIONS, keep=2, tokens=7.0).device.type == "meta"
    feats = model.image_features(pixels)
    assert feats.device.type == "meta"
    scores = model.choice_scores(feats[:2], [["the number one", "the number two"]] * 2)
    assert scores.device.type == "meta" and scores.shape == (2, 2)


def test_bf16_casts_only_the_frozen_backbones(tmp_path, tiny_models):
    model = tiny_model(tmp_path, tiny_models)
    with torch.no_grad():
        fp32_loss = float(model(torch.randn(3, 3, 32, 32,
                                            generator=torch.Generator().manual_seed(0)), CAPTIONS))
    buffers = {n: b.dtype for n, b in model.lm.named_buffers()}
    place(model, torch.device("cpu"), bf16=True)
    assert {p.dtype for p in model.vision.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.lm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.projector.parameters()} == {torch.float32}
    assert {n: b.dtype for n, b in model.lm.named_buffers()} == buffers
    loss = model(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)), CAPTIONS)
    assert loss.dtype == torch.float32
    assert abs(float(loss) - fp32_loss) < 0.05 * fp32_loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in model.projector.parameters())


def test_precision_auto_is_bf16_on_a_gpu_only():
    assert silo_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert use_bf16("auto", torch.device("cuda", 0)) and not use_bf16("auto", torch.device("cpu"))
    assert use_bf16("bf16", torch.device("cpu")) and not use_bf16("fp32", torch.device("cuda"))


def test_a_bf16_silo_uploads_its_fp32_weights_without_a_rounding_offset(tmp_path, tiny_models):
    # A learning rate far below float32's resolution of these weights: every step leaves them
    # as they were, so the update must equal the input bit for bit. An upload of a bfloat16
    # copy (DeepSpeed's bf16 mode) differs from it in most elements.
    rnd, store = first_round(tmp_path, tiny_models, precision="bf16", learningRate=1e-30)
    summary = train_silo(rnd, "silo-1")
    assert summary["precision"] == "bf16" and summary["device"] == "cpu"
    assert summary["steps"] == 3 and summary["loss"] > 0
    upd = store.get_tensors(store.rel(summary["update"]["uri"]), summary["update"]["digest"])
    base = store.get_tensors(store.rel(rnd.spec.input.uri))
    for k in base:
        assert upd[k].dtype == torch.float32 and torch.equal(upd[k], base[k]), k
    rounded = {k: v.bfloat16().float() for k, v in base.items()}
    assert any(not torch.equal(rounded[k], base[k]) for k in base)  # the test can tell


class _Vision:
    def preprocess(self, image):
        return torch.zeros(3, 2, 2)


@pytest.mark.parametrize(("n", "batch", "world"), [(11, 5, 2), (7, 4, 3), (1, 4, 4), (9, 3, 1)])
def test_every_rank_takes_the_same_steps_and_each_sample_counts_once(tmp_path, n, batch, world,
                                                                     monkeypatch):
    from fedma.data.manifest import Record

    monkeypatch.setattr("fedma.train.batches.load_image", lambda r, m: None)
    records = [Record(image=tmp_path / f"{i}.png", caption=f"caption {i}", line=i + 1)
               for i in range(n)]
    per_rank = [list(rank_batches(records, _Vision(), batch, tmp_path, rank, world))
                for rank in range(world)]
    steps = -(-n // batch)
    assert [len(r) for r in per_rank] == [steps] * world
    counted = [c for r in per_rank for _, caps, keep in r for c in caps[:keep]]
    assert sorted(counted) == sorted(r.caption for r in records)
    assert all(len(caps) >= 1 and pixels.shape[0] == len(caps)
               for r in per_rank for pixels, caps, _ in r)


def test_activation_checkpointing_recomputes_the_lm_layers_in_backward(tmp_path, tiny_models):
    def layer_calls(checkpointing: bool) -> tuple[int, dict[str, torch.Tensor]]:
        model = tiny_model(tmp_path / str(checkpointing), tiny_models)
        if checkpointing:
            model.enable_checkpointing()
        model.train()
        calls = [0]
        # A module inside the layer: transformers checkpoints the layer's forward, so hooks on
        # the layer itself run once either way.
        layer = model.lm.model.layers[0].self_attn
        layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        model(pixels, CAPTIONS).backward()
        assert not any(m.training for m in model.lm.modules()
                       if not getattr(m, "gradient_checkpointing", False))  # dropout stays off
        return calls[0], {n: p.grad for n, p in model.projector.named_parameters()}

    plain, grads = layer_calls(False)
    recomputed, grads_ckpt = layer_calls(True)
    assert (plain, recomputed) == (1, 2)
    for n in grads:
        assert torch.allclose(grads[n], grads_ckpt[n], atol=1e-6), n


def test_a_vision_tower_with_batch_norm_stays_fp32():
    from fedma.train.device import keeps_fp32

    assert keeps_fp32(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    assert not keeps_fp32(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)))
