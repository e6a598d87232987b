"""Broken and hostile silo updates, as real artifacts in a real store, through the aggregation
Job's code (fedma.aggregate.run), and their reasons in the FederatedRound's status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import save

from fedma.aggregate.run import aggregate_round
from fedma.spec import ProjectorRef, parse, round_spec
from fedma.store import Store, global_rel, sha256, update_rel
from tests.conftest import training_manifest

pytestmark = pytest.mark.faults
SILOS = [f"silo-{i}" for i in range(1, 6)]
EVIL = "silo-5"


def _round(tmp_path, tiny_models, robust: dict[str, Any],
           edit: Callable[[dict[str, Any]], None] = lambda obj: None):
    """Five silos' round 1 in a store: four honest updates written (samples 10 each), the
    fifth's left to the test; ``edit`` changes the training manifest first."""
    obj = training_manifest(tmp_path, tiny_models, silos=5, n=4)
    obj["spec"]["aggregation"].update(minSilos=3, robust=robust)
    edit(obj)
    training = parse(obj)
    store = Store(training.spec.artifacts.uri)
    g = torch.Generator().manual_seed(0)
    base = {"0.weight": torch.randn(16, 8, generator=g), "0.bias": torch.zeros(16)}
    ref = store.put_tensors(global_rel("tiny", 0), base)
    rnd = round_spec(training, 1, ProjectorRef(**ref.as_dict()))
    honest = {}
    digests = {}
    common = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    for silo in SILOS[:-1]:  # honest silos agree on a direction, each with its own noise
        w = {k: v + common[k] + 0.003 * torch.randn(v.shape, generator=g)
             for k, v in base.items()}
        honest[silo] = w
        digests[silo] = store.put_tensors(update_rel("tiny", 1, silo), w, {
            "samples": 10, "loss": 1.0, "base_digest": ref.digest}).digest
    mean = {k: sum(w[k] for w in honest.values()) / len(honest) for k in base}
    return rnd, store, base, ref.digest, digests, mean


def _put_evil(store: Store, base_digest: str, weights: dict[str, torch.Tensor],
              samples: int = 10) -> str:
    return store.put_tensors(update_rel("tiny", 1, EVIL), weights, {
        "samples": samples, "loss": 1.0, "base_digest": base_digest}).digest


REJECTED = {
    "tampered-after-upload": "sha256 mismatch",
    "truncated": "not a valid safetensors file",
    "nan-values": "NaN or infinite",
    "wrong-shape": "has shape (16, 9), expected (16, 8)",
    "exploding-norm": "update norm",
    "trained-from-another-global": "different global projector",
}


@pytest.mark.parametrize("fault", sorted(REJECTED))
def test_a_broken_update_is_rejected_with_the_reason_and_the_round_goes_on(
        tmp_path, tiny_models, fault):
    rnd, store, base, base_digest, digests, mean = _round(tmp_path, tiny_models,
                                                          {"maxUpdateNorm": 1.0})
    near = {k: v + 0.01 for k, v in base.items()}
    rel = update_rel("tiny", 1, EVIL)
    if fault == "tampered-after-upload":
        digests[EVIL] = _put_evil(store, base_digest, near)
        store.put_bytes(rel, save({k: v + 1.0 for k, v in near.items()}))  # after reporting
    elif fault == "truncated":
        _put_evil(store, base_digest, near)
        data = store.get_bytes(rel)[:200]
        store.put_bytes(rel, data)
        digests[EVIL] = sha256(data)  # even with a matching digest, the file is refused
    elif fault == "nan-values":
        digests[EVIL] = _put_evil(store, base_digest, {**near, "0.bias": torch.full((16,),
                                                                               float("nan"))})
    elif fault == "wrong-shape":
        digests[EVIL] = _put_evil(store, base_digest, {**near, "0.weight": torch.zeros(16, 9)})
    elif fault == "exploding-norm":
        digests[EVIL] = _put_evil(store, base_digest, {k: v * 1e6 for k, v in near.items()})
    else:
        digests[EVIL] = store.put_tensors(rel, near, {"samples": 10, "loss": 1.0,
                                                      "base_digest": "ef" * 32}).digest
    out = aggregate_round(rnd, digests)
    assert REJECTED[fault] in out["rejected"][EVIL], out["rejected"]
    assert out["included"] == SILOS[:-1]
    got = store.get_tensors(store.rel(out["output"]["uri"]), out["output"]["digest"])
    for k in base:  # the result is the honest silos' mean, untouched by the bad update
        assert torch.allclose(got[k], mean[k], atol=1e-6), k


BOUNDED = {
    # name: (robust settings, the poisoned update's delta as a multiple of an honest one, note)
    "scaled-x100-clipped": ({"clipNorm": 0.05}, 100.0, "clipped from norm"),
    "sign-flipped-x10-multi-krum": ({"rule": "multi_krum", "byzantine": 1}, -10.0,
                                      "dropped by Multi-Krum"),
    "sign-flipped-x10-median": ({"rule": "median"}, -10.0, None),
}


@pytest.mark.parametrize("fault", sorted(BOUNDED))
def test_a_poisoned_update_is_bounded_and_the_report_says_how(tmp_path, tiny_models, fault):
    robust, scale, note = BOUNDED[fault]
    rnd, store, base, base_digest, digests, mean = _round(tmp_path, tiny_models, robust)
    honest_delta = {k: mean[k] - base[k] for k in base}
    digests[EVIL] = _put_evil(store, base_digest,
                              {k: base[k] + scale * honest_delta[k] for k in base})
    out = aggregate_round(rnd, digests)
    assert EVIL in out["included"]  # not rejected: bounded by the rule
    if note:
        assert note in out["notes"][EVIL], out["notes"]
    got = store.get_tensors(store.rel(out["output"]["uri"]), out["output"]["digest"])
    moved = sum(float((got[k] - base[k]).norm() ** 2) for k in base) ** 0.5
    honest = sum(float(honest_delta[k].norm() ** 2) for k in base) ** 0.5
    # Unbounded, the mean would move 20.8 honest steps (×100) or 1.2 the wrong way (×−10);
    # bounded, the step is at most a couple of honest steps, in the honest direction.
    assert moved < 2 * honest, (moved, honest)
    dot = sum(float(((got[k] - base[k]) * honest_delta[k]).sum()) for k in base)
    assert dot / (moved * honest) > 0.9  # and it points the honest silos' way
