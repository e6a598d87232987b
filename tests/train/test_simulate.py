"""The in-process simulation must train each silo exactly as the real torch engine would."""

import pytest
import torch

from fedma.model import load_alignment_model
from fedma.model.projector import load_projector_state, projector_state
from fedma.simulate import SiloTrainer
from fedma.spec import ModelSpec, TrainingSpec
from fedma.train.torch_engine import train

WORDS = ("one", "two", "three", "four", "five")


@pytest.fixture(scope="module")
def model(tiny_models):
    return load_alignment_model(ModelSpec.model_validate({
        "vision": {"kind": "hf", "path": str(tiny_models["vision"]), "imageSize": 32},
        "languageModel": {"path": str(tiny_models["lm"])}}))


def silo_batches(seed: int, steps: int = 3, size: int = 2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        pixels = torch.randn(size, 3, 32, 32, generator=g)
        # Different caption lengths inside and across silos: padding must not leak.
        caps = [f"a red square : the number {WORDS[(seed + s + i) % 5]}" if i % 2
                else "a blue circle" for i in range(size)]
        out.append((pixels, caps))
    return out


@pytest.mark.parametrize("mu,clip", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.01)])
def test_batched_silos_match_the_torch_engine_one_by_one(model, mu, clip):
    start = projector_state(model.projector)
    # Two silos starting from different weights, as after local-only rounds.
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in start.items()}
    data = [silo_batches(1), silo_batches(2)]
    spec = TrainingSpec(learning_rate=1e-2, weight_decay=0.01, warmup_steps=2, proximal_mu=mu,
                        max_grad_norm=clip)
    reference = []
    for init, batches in zip((start, other), data, strict=True):
        load_projector_state(model.projector, init, "test")
        if mu:
            model.set_proximal(mu)
        _, loss = train(model, iter(batches), spec, max_steps=0)
        model.set_proximal(0.0)
        reference.append((projector_state(model.projector), loss))
    if clip:  # the clip binds: unclipped, the same steps end elsewhere
        load_projector_state(model.projector, start, "test")
        train(model, iter(data[0]), spec.model_copy(update={"max_grad_norm": 0.0}), max_steps=0)
        free = projector_state(model.projector)
        assert any(not torch.allclose(free[k], reference[0][0][k], atol=1e-4) for k in free)
    trainer = SiloTrainer(model, 1e-2, weight_decay=0.01, warmup_steps=2, proximal_mu=mu,
                          max_grad_norm=clip)
    feats = [[(model.image_features(p), c) for p, c in batches] for batches in data]
    got = trainer.train_round([start, other], feats)
    for (w_ref, loss_ref), (w, loss) in zip(reference, got, strict=True):
        assert abs(loss - loss_ref) < 1e-5
        for k in w_ref:
            assert not torch.equal(w_ref[k], start[k])  # it trained
            assert torch.allclose(w[k], w_ref[k], atol=1e-6), k
    load_projector_state(model.projector, start, "test")


def test_refuses_uneven_silos(model):
    start = projector_state(model.projector)
    feats = [(model.image_features(p), c) for p, c in silo_batches(1)]
    with pytest.raises(ValueError, match="same number of steps"):
        SiloTrainer(model, 1e-2).train_round([start, start], [feats, feats[:2]])
