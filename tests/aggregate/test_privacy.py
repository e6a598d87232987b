"""Central DP: clipping, calibrated noise, a maintained accountant, a secret-seeded generator."""

import pytest
import torch

from fedma.aggregate import SiloUpdate, get_strategy
from fedma.aggregate.privacy import epsilon
from fedma.spec import AggregationSpec

DP = {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5, "expected_silos": 4}


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
    expected = DP["noise_multiplier"] * DP["clip_norm"] / DP["expected_silos"]
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


def _release(silos: dict[str, float], k0: int) -> torch.Tensor:
    """The aggregate of silos whose deltas are ``value`` × a unit vector, same seed and round."""
    unit = torch.zeros(20000)
    unit[0] = 1.0
    ups = [SiloUpdate(name, {"w": unit * value}, 10) for name, value in silos.items()]
    out = get_strategy("fedavg", privacy={**DP, "expected_silos": k0}).aggregate(BASE, ups, {})
    return out.weights["w"].double(), out.report["_privacy"]


@pytest.mark.parametrize("k0", [2, 3, 8])
def test_the_noise_is_z_times_the_worst_case_sensitivity_when_a_silo_drops_out(
        monkeypatch, k0):
    """Add/remove one silo, the adjacency the accountant assumes: two silos pulling opposite
    ways at the clip bound, then one of them left out (an excluded silo, or one that never
    took part). The same seed draws the same noise, so the releases differ by exactly the
    mechanism's change, which must stay within noise_std / z. Dividing by this round's
    accepted count (the mean) changes by 2C/K here and would carry half the noise needed."""
    monkeypatch.setenv("FEDMA_DP_SEED", "s3cret")
    both, rep = _release({"a": 5.0, "b": -5.0}, k0)
    one, _ = _release({"a": 5.0}, k0)
    change = float((both - one).norm())
    assert change == pytest.approx(DP["clip_norm"] / k0, rel=1e-5)
    assert change <= rep["noise_std"] / DP["noise_multiplier"] * (1 + 1e-5), (change, rep)
    assert rep["sensitivity"] == pytest.approx(DP["clip_norm"] / k0)


def test_more_updates_than_silos_listed_is_an_error(monkeypatch):
    monkeypatch.setenv("FEDMA_DP_SEED", "s3cret")
    with pytest.raises(ValueError, match="round lists 2 silos"):
        get_strategy("fedavg", privacy={**DP, "expected_silos": 2}).aggregate(
            BASE, updates(3), {})


def test_dp_needs_the_number_of_silos_listed():
    with pytest.raises(ValueError, match="needs expected_silos"):
        get_strategy("fedavg", privacy={k: v for k, v in DP.items() if k != "expected_silos"})


def test_every_byte_of_the_dp_secret_counts(monkeypatch):
    """Two hex secrets that share their first 8 characters draw different noise (a seed cut
    to 8 bytes would leave 32 bits of a hex secret, enumerable from two projectors)."""
    monkeypatch.setenv("FEDMA_DP_SEED", "0123456789abcdef0123")
    a = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    monkeypatch.setenv("FEDMA_DP_SEED", "0123456789abcdef0124")
    b = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    monkeypatch.setenv("FEDMA_DP_SEED", "01234567")
    c = get_strategy("fedavg", privacy=DP).aggregate(BASE, updates(), {})
    assert not torch.equal(a.weights["w"], b.weights["w"])
    assert not torch.equal(a.weights["w"], c.weights["w"])


def test_under_dp_updates_are_clipped_never_rejected_for_their_size():
    with pytest.raises(ValueError, match=r"robust\.maxUpdateNorm: not with central DP"):
        AggregationSpec.model_validate({"privacy": {"noiseMultiplier": 1.0, "clipNorm": 1.0},
                                        "robust": {"maxUpdateNorm": 5.0}})
