"""Server optimisers (Reddi et al., 2021) checked against the formulas written out by hand."""

import pytest
import torch

from fedma.aggregate import SiloUpdate, get_strategy

BASE = {"w": torch.zeros(3)}
D = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)


def ups(delta=D):
    # Two silos whose weighted mean delta is `delta`.
    return [SiloUpdate("a", {"w": (delta * 0.5).float()}, 10),
            SiloUpdate("b", {"w": (delta * 1.5).float()}, 10)]


def close(a, b):
    return torch.allclose(a.double(), b.double(), atol=1e-6)


def test_fedavgm_accumulates_momentum_across_rounds():
    s = get_strategy("fedavgm", {"beta1": 0.9})
    r1 = s.aggregate(BASE, ups(), {})
    assert close(r1.weights["w"], D) and close(r1.server_state["m.w"], D)
    r2 = s.aggregate(BASE, ups(), r1.server_state)
    assert close(r2.server_state["m.w"], 1.9 * D) and close(r2.weights["w"], 1.9 * D)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_first_step_matches_formula(name):
    lr, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    s = get_strategy(name, {"server_lr": lr})
    r = s.aggregate(BASE, ups(), {})
    v0 = torch.full_like(D, tau * tau)
    if name == "fedadam":
        m, v = (1 - b1) * D, b2 * v0 + (1 - b2) * D * D
    elif name == "fedyogi":
        m, v = (1 - b1) * D, v0 - (1 - b2) * D * D * torch.sign(v0 - D * D)
    else:
        m, v = D, v0 + D * D
    assert close(r.server_state["m.w"], m) and close(r.server_state["v.w"], v)
    assert close(r.weights["w"], lr * m / (v.sqrt() + tau))


def test_adaptive_state_continues_and_is_checked():
    s = get_strategy("fedadam")
    r1 = s.aggregate(BASE, ups(), {})
    r2 = s.aggregate(r1.weights, ups(), r1.server_state)
    assert not torch.equal(r2.server_state["v.w"], r1.server_state["v.w"])
    with pytest.raises(ValueError, match=r"server state 'm.w' has shape \(2,\)"):
        s.aggregate(BASE, ups(), {"m.w": torch.zeros(2)})


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['beta3'\] for fedadam"):
        get_strategy("fedadam", {"beta3": 1.0})


def robust_ups(outlier):
    honest = [SiloUpdate(n, {"w": torch.full((3,), v)}, 10)
              for n, v in (("a", 1.0), ("b", 1.1), ("c", 0.9), ("d", 1.0))]
    return [*honest, SiloUpdate("evil", {"w": torch.full((3,), outlier)}, 10)]


@pytest.mark.parametrize("poison", [100.0, -100.0], ids=["scaled-x100", "sign-flipped-x100"])
@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "multi_krum"])
def test_robust_rules_bound_one_poisoned_update(rule, poison):
    s = get_strategy("fedavg", robust={"rule": rule, "trim_fraction": 0.2, "byzantine": 1})
    out = s.aggregate(BASE, robust_ups(poison), {})
    assert torch.all((out.weights["w"] - 1.0).abs() < 0.11), out.weights
    mean = get_strategy("fedavg").aggregate(BASE, robust_ups(poison), {})
    assert torch.all((mean.weights["w"] - 1.0).abs() > 15)  # the plain mean is dragged away
    if rule == "multi_krum":
        assert "dropped by Multi-Krum" in out.report["evil"]["note"]


def test_nan_update_is_rejected_before_any_strategy():
    from fedma.aggregate.validate import check_update

    poisoned = {"w": torch.full((3,), float("nan"))}
    assert "NaN" in check_update("evil", {"w": torch.zeros(3)}, poisoned, 10)


def test_clip_norm_bounds_influence_and_reports_it():
    s = get_strategy("fedavg", robust={"rule": "mean", "clip_norm": 2.0})
    out = s.aggregate(BASE, robust_ups(-1000.0), {})
    assert "clipped from norm" in out.report["evil"]["note"]
    assert float(out.weights["w"].norm()) < 2.0


def test_multi_krum_needs_enough_updates():
    s = get_strategy("fedavg", robust={"rule": "multi_krum", "byzantine": 2})
    with pytest.raises(ValueError, match="needs at least 7 updates, got 5"):
        s.aggregate(BASE, robust_ups(5.0), {})
