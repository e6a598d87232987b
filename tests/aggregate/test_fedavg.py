import pytest
import torch

from fedma.aggregate import SiloUpdate, get_strategy
from fedma.aggregate.run import AggregationError, aggregate_round
from fedma.aggregate.validate import check_update
from fedma.spec import ProjectorRef, parse, round_spec
from fedma.store import Store, global_rel, update_rel
from tests.conftest import training_manifest


def test_fedavg_is_sample_weighted_and_order_independent():
    base = {"w": torch.zeros(2, 2)}
    ups = [SiloUpdate("b", {"w": torch.ones(2, 2)}, 30),
           SiloUpdate("a", {"w": torch.full((2, 2), 5.0)}, 10)]
    out = get_strategy("fedavg").aggregate(base, ups, {})
    assert torch.allclose(out.weights["w"], torch.full((2, 2), (30 * 1 + 10 * 5) / 40))
    assert out.report["a"]["weight"] == 0.25
    rev = get_strategy("fedavg").aggregate(base, ups[::-1], {})
    assert torch.equal(out.weights["w"], rev.weights["w"])


def test_unknown_strategy():
    with pytest.raises(ValueError, match="'fedmagic' is not one of"):
        get_strategy("fedmagic")


def test_validation_reasons():
    base = {"w": torch.zeros(3)}
    assert "NaN" in check_update("a", base, {"w": torch.tensor([0, float("nan"), 0])}, 1)
    assert "shape" in check_update("a", base, {"w": torch.zeros(4)}, 1)
    assert "dtype" in check_update("a", base, {"w": torch.zeros(3, dtype=torch.float64)}, 1)
    assert "do not match" in check_update("a", base, {"v": torch.zeros(3)}, 1)
    assert "exceeds the bound" in check_update("a", base, {"w": torch.full((3,), 10.0)}, 1, 5.0)
    assert check_update("a", base, {"w": torch.ones(3)}, 1, 5.0) == ""


@pytest.fixture
def round_with_updates(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models, silos=3)
    obj["spec"]["aggregation"]["minSilos"] = 2
    training = parse(obj)
    store = Store(training.spec.artifacts.uri)
    base = {"0.weight": torch.zeros(2, 2)}
    ref = store.put_tensors(global_rel("tiny", 0), base)
    rnd = round_spec(training, 1, ProjectorRef(**ref.as_dict()))
    digests = {}
    for i, silo in enumerate(["silo-1", "silo-2", "silo-3"]):
        digests[silo] = store.put_tensors(update_rel("tiny", 1, silo),
                                          {"0.weight": torch.full((2, 2), float(i + 1))},
                                          {"samples": 10, "loss": 1.0,
                                           "base_digest": ref.digest}).digest
    return rnd, store, digests


def test_aggregate_round_is_deterministic_and_idempotent(round_with_updates):
    rnd, store, digests = round_with_updates
    first = aggregate_round(rnd, digests)
    assert first["included"] == ["silo-1", "silo-2", "silo-3"] and not first["reused"]
    w = store.get_tensors(store.rel(first["output"]["uri"]), first["output"]["digest"])
    assert torch.allclose(w["0.weight"], torch.full((2, 2), 2.0))
    # A retried Job reuses the committed output; recomputing from scratch gives the same digest.
    assert aggregate_round(rnd, digests)["reused"]
    manifest = store.rel(first["output"]["uri"]) + ".manifest.json"
    store.fs.rm(store._path(manifest))
    assert aggregate_round(rnd, digests)["output"]["digest"] == first["output"]["digest"]


def test_tampered_and_nan_updates_are_rejected_with_reasons(round_with_updates, tmp_path):
    rnd, store, digests = round_with_updates
    store.put_tensors(update_rel("tiny", 1, "silo-3"), {"0.weight": torch.full((2, 2), 1e9)},
                      {"samples": 10, "base_digest": rnd.spec.input.digest})
    out = aggregate_round(rnd, digests)  # silo-3's file changed after it reported its digest
    assert "sha256 mismatch" in out["rejected"]["silo-3"]
    nan_digest = store.put_tensors(
        update_rel("tiny", 1, "silo-2"), {"0.weight": torch.full((2, 2), float("nan"))},
        {"samples": 10, "base_digest": rnd.spec.input.digest}).digest
    with pytest.raises(AggregationError, match=r"1 valid updates, quorum is 2 .*NaN"):
        aggregate_round(rnd, {**digests, "silo-2": nan_digest})
