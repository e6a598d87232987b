"""What aggregation promises beyond the math of each rule: a silo's self-reported sample count
is bounded by what the hub knows, and a robust rule says when it cannot do its job."""

from __future__ import annotations

import pytest
import torch

from fedma.aggregate import SiloUpdate, get_strategy
from fedma.aggregate.run import aggregate_round
from tests.faults.test_update_faults import EVIL, SILOS, _put_evil, _round


def _declare(samples: int):
    def edit(obj):
        for silo in obj["spec"]["silos"]:
            silo["maxSamples"] = samples
    return edit


def _cap_steps(obj):
    obj["spec"]["training"].update(maxStepsPerRound=2, batchSize=4)


@pytest.mark.parametrize("edit, counted, why", [
    (_declare(10), 10, "silos[silo-5].maxSamples"),
    (_cap_steps, 8, "training.maxStepsPerRound × batchSize"),
])
def test_a_silo_claiming_a_billion_samples_counts_for_no_more_than_the_bound(
        tmp_path, tiny_models, edit, counted, why):
    """Unbounded, the weighted mean would be the claimant's update (10⁹ against 4 × 10)."""
    rnd, store, base, base_digest, digests, mean = _round(tmp_path, tiny_models, {}, edit)
    away = {k: base[k] - 5 * (mean[k] - base[k]) for k in base}
    digests[EVIL] = _put_evil(store, base_digest, away, samples=10**9)
    out = aggregate_round(rnd, digests)
    assert out["included"] == SILOS
    assert f"reported 1000000000 samples, counted {counted} ({why})" in out["notes"][EVIL]
    got = store.get_tensors(store.rel(out["output"]["uri"]), out["output"]["digest"])
    # Every silo now counts for the same (the honest ones reported 10, at or above the
    # bound): the mean of the five, the claimant one fifth of it.
    for k in base:
        assert torch.allclose(got[k], (4 * mean[k] + away[k]) / 5, atol=1e-5), k
    assert out["samples"] == 5 * counted


def test_without_a_bound_the_count_is_the_silos_own():
    ups = [SiloUpdate("a", {"w": torch.ones(3)}, 10), SiloUpdate("b", {"w": -torch.ones(3)}, 30)]
    out = get_strategy("fedavg").aggregate({"w": torch.zeros(3)}, ups, {})
    assert torch.allclose(out.weights["w"], torch.full((3,), -0.5))


def _trimmed(k: int, fraction: float):
    ups = [SiloUpdate(f"s{i}", {"w": torch.full((4,), float(i))}, 10) for i in range(k)]
    return get_strategy("fedavg", robust={"rule": "trimmed_mean", "trim_fraction": fraction}
                        ).aggregate({"w": torch.zeros(4)}, ups, {})


def test_a_trimmed_mean_that_trims_nothing_says_so():
    out = _trimmed(4, 0.1)
    assert "trimmed nothing" in out.report["_robust"]
    assert "needs at least 10" in out.report["_robust"]
    assert "_robust" not in _trimmed(10, 0.1).report  # one cut per end: a trimmed mean
    assert "_robust" not in _trimmed(4, 0.25).report
