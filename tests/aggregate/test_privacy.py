"""Central DP: clipping, calibrated noise, a maintained accountant, a secret-seeded generator."""

import pytest
import torch

from fedma.aggregate import SiloUpdate, get_strategy
from fedma.aggregate.privacy import epsilon
from fedma.spec import AggregationSpec

DP = {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5}


def updates(n=4, size=20000, scale=10.0):
    torch.manual_seed(0)
    return [SiloUpdate(f"s{i}", {"w": torch.randn(size) * scale}, 10 * (i + 1))
            for i in range(n)]


BASE = {"w": torch.zeros(20000)}


def test_noise_is_calibrated_to_clip_over_silos(monkeypatch):
    monkeypatch.setenv("FEDMA_DP_SEED", "s3cret")
    ups = updates()
    out = get_strategy("fedavg", privacy=DP).aggregate(BASE, ups, {})
    clipped_mean = sum(u.weights["w"].double() / u.weights["w"].double().norm()
                       for u in ups) / len(ups)  # every delta clipped to norm 1, equal weights
    noise = out.weights["w"].double() - clipped_mean
    expected = DP["noise_multiplier"] * DP["clip_norm"] / len(ups)
    assert abs(float(noise.std()) / expected - 1) < 0.05
    assert all("clipped from norm" in out.report[u.silo]["note"] for u in ups)
    rep = out.report["_privacy"]
    assert rep["rounds"] == 1 and rep["noise_std"] == expected
    assert rep["epsilon"] == pytest.approx(epsilon(1.0, 1, 1e-5))


def test_budget_accumulates_across_rounds_through_server_state(monkeypatch):
    monkeypatch.setenv("FEDMA_DP_SEED", "s3cret")
    s = get_strategy("fedavgm", privacy=DP)
    r1 = s.aggregate(BASE, updates(), {})
    r2 = s.aggregate(r1.weights, updates(), r1.server_state)
    assert r2.report["_privacy"]["rounds"] == 2
    assert r2.report["_privacy"]["epsilon"] > r1.report["_privacy"]["epsilon"]


def test_accountant_grows_with_rounds_and_matches_opacus_own_figure():
    from opacus.accountants import RDPAccountant

    assert epsilon(1.0, 10, 1e-5) > epsilon(1.0, 1, 1e-5)
    assert epsilon(4.0, 10, 1e-5) < epsilon(1.0, 10, 1e-5)
    acc = RDPAccountant()
    for _ in range(10):
        acc.step(noise_multiplier=1.3, sample_rate=1.0)
    assert epsilon(1.3, 10, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)


def test_seeded_noise_is_reproducible_and_unseeded_is_not(monkeypatch):
    monkeypatch.setenv("FEDMA_DP_SEED", "s3cret")
    a = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    b = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    assert torch.equal(a.weights["w"], b.weights["w"])
    monkeypatch.delenv("FEDMA_DP_SEED")
    c = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    d = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    assert not torch.equal(c.weights["w"], d.weights["w"])


def test_invalid_privacy_settings_are_refused():
    with pytest.raises(ValueError, match=r"privacy\.clipNorm must be > 0"):
        AggregationSpec.model_validate({"privacy": {"noiseMultiplier": 1.0}})
    with pytest.raises(ValueError, match="not available with fedcmp"):
        get_strategy("fedcmp", privacy=DP)
    with pytest.raises(ValueError, match=r"needs robust\.rule 'mean'"):
        get_strategy("fedavg", robust={"rule": "median"}, privacy=DP)


def test_report_shows_equal_weights_under_dp(monkeypatch):
    monkeypatch.setenv("FEDMA_DP_SEED", "s3cret")
    out = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    assert {out.report[f"s{i}"]["weight"] for i in range(4)} == {0.25}
