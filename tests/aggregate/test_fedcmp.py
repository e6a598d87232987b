"""Fed-CMP (our reconstruction, docs/fedcmp.md) checked property by property."""

import math
import time

import pytest
import torch

from fedma.aggregate import SiloUpdate, get_strategy


def make_updates(deltas, samples=None, base=None):
    base = base or {"w": torch.zeros_like(deltas[0]), "b": torch.zeros(deltas[0].shape[0])}
    samples = samples or [10] * len(deltas)
    return base, [SiloUpdate(f"s{i}", {"w": d, "b": torch.full_like(base["b"], float(i))}, n)
                  for i, (d, n) in enumerate(zip(deltas, samples, strict=True))]


def test_agreeing_silos_reduce_to_fedavg():
    torch.manual_seed(0)
    d = torch.randn(8, 6)
    base, ups = make_updates([d, d, d], [10, 20, 30])
    out = get_strategy("fedcmp", {"beta": 0.0}).aggregate(base, ups, {})
    fedavg = get_strategy("fedavg").aggregate(base, ups, {})
    assert torch.allclose(out.weights["w"], fedavg.weights["w"], atol=1e-5)
    assert torch.allclose(out.weights["b"], fedavg.weights["b"])  # vectors: weighted mean


def test_conflicting_silo_loses_weight_on_the_contested_direction():
    e1 = torch.zeros(6, 4)
    e1[0, 0] = 1.0
    e2 = torch.zeros(6, 4)
    e2[1, 1] = 1.0
    good = [e1 + e2, e1 + e2, e1 + e2]
    bad = -3 * e1 + e2  # agrees on e2, fights on e1
    base, ups = make_updates([*good, bad])
    cmp_ = get_strategy("fedcmp", {"beta": 0.0, "temperature": 0.1, "energy": 0.999,
                                   "keep_residual": 0}).aggregate(base, ups, {})
    avg = get_strategy("fedavg").aggregate(base, ups, {})
    # FedAvg's e1 component collapses to 0; Fed-CMP keeps most of the majority's direction.
    assert abs(float(avg.weights["w"][0, 0])) < 1e-6
    assert float(cmp_.weights["w"][0, 0]) > 0.5
    assert torch.isclose(cmp_.weights["w"][1, 1], torch.tensor(1.0), atol=1e-4)
    assert cmp_.report["s3"]["reliability"] < cmp_.report["s0"]["reliability"]


def test_rank_follows_the_energy_of_a_low_rank_family():
    torch.manual_seed(1)
    basis = torch.linalg.qr(torch.randn(16, 2)).Q
    deltas = [basis @ torch.randn(2, 10) for _ in range(5)]
    base, ups = make_updates(deltas)
    out = get_strategy("fedcmp", {"energy": 0.99}).aggregate(base, ups, {})
    assert out.report["_fedcmp"]["ranks"]["w"] == 2


def test_momentum_lives_in_the_current_basis():
    d = torch.zeros(4, 3)
    d[0] = 1.0
    base, ups = make_updates([d, d])
    stale = torch.zeros(4, 3)
    stale[3] = 5.0  # history orthogonal to this round's shared basis
    s = get_strategy("fedcmp", {"beta": 0.9, "keep_residual": 0})
    out = s.aggregate(base, ups, {"m.w": stale})
    assert torch.allclose(out.server_state["m.w"], d.float(), atol=1e-6)  # stale part dropped
    again = s.aggregate(base, ups, out.server_state)
    assert torch.allclose(again.server_state["m.w"], 1.9 * d.float(), atol=1e-6)


def test_deterministic_and_fast_with_randomized_svd():
    torch.manual_seed(2)
    deltas = [torch.randn(1536, 1536) * 1e-3 for _ in range(16)]
    base, ups = make_updates(deltas)
    s = get_strategy("fedcmp", {"max_rank": 16})
    t0 = time.perf_counter()
    a = s.aggregate(base, ups, {})
    elapsed = time.perf_counter() - t0
    b = s.aggregate(base, ups, {})
    assert torch.equal(a.weights["w"], b.weights["w"])
    assert a.report["_fedcmp"]["ranks"]["w"] == 16
    assert elapsed < 30, f"{elapsed:.1f} s for 16 silos of 1536 × 1536"


def test_option_validation():
    with pytest.raises(ValueError, match="energy must be in"):
        get_strategy("fedcmp", {"energy": 0.0})
    with pytest.raises(ValueError, match="fedcmp does its own fusion"):
        get_strategy("fedcmp", robust={"rule": "median"})


@pytest.mark.parametrize("keep_residual", [0, 1])
def test_full_rank_uniform_reliability_reduces_to_fedavg(keep_residual):
    torch.manual_seed(3)
    base, ups = make_updates([torch.randn(6, 5) for _ in range(4)], [5, 10, 20, 40])
    cmp_ = get_strategy("fedcmp", {"beta": 0.0, "energy": 1.0, "max_rank": 64,
                                   "temperature": 1e9, "keep_residual": keep_residual})
    out = cmp_.aggregate(base, ups, {})
    avg = get_strategy("fedavg").aggregate(base, ups, {})
    assert torch.allclose(out.weights["w"], avg.weights["w"], atol=1e-5)


def test_basis_is_orthonormal_across_rounds():
    s = get_strategy("fedcmp", {"max_rank": 8})
    shares = torch.full((4,), 0.25, dtype=torch.float64)
    for r in range(3):
        torch.manual_seed(10 + r)
        stack = torch.randn(4, 64, 48, dtype=torch.float64)
        u = s._basis(stack, shares)
        assert torch.allclose(u.T @ u, torch.eye(u.shape[1], dtype=u.dtype), atol=1e-6)


def test_streamed_randomized_path_matches_the_exact_one_on_a_low_rank_family():
    """Large tensors (out > 1024) never stack K deltas; on a family the sketch captures, the
    streamed fusion equals the exact one, and its basis is orthonormal."""
    torch.manual_seed(4)
    out, inp, k = 1100, 40, 5
    basis = torch.linalg.qr(torch.randn(out, 3)).Q
    deltas = [basis @ torch.randn(3, inp) + 1e-7 * torch.randn(out, inp) for _ in range(k)]
    deltas[4] = -deltas[0]  # a conflicting silo, so reliability weights matter
    base, ups = make_updates(deltas, [10, 20, 30, 40, 50])
    s = get_strategy("fedcmp", {"beta": 0.0, "energy": 0.99})
    shares = torch.tensor([n / 150 for n in (10, 20, 30, 40, 50)], dtype=torch.float64)
    stack = torch.stack([d.double() for d in deltas])
    d_exact, w_exact, u_exact = s._fuse(stack, shares)
    d_stream, w_stream, u_stream = s._fuse_streamed("w", base["w"], sorted(
        ups, key=lambda u: u.silo), [1.0] * k, shares)
    assert u_stream.shape == u_exact.shape
    eye = torch.eye(u_stream.shape[1], dtype=torch.float64)
    assert torch.allclose(u_stream.T @ u_stream, eye, atol=1e-5)
    assert torch.allclose(w_stream, w_exact, atol=1e-4)
    assert d_stream.dtype == torch.float32  # a layer-sized result, in the weights' precision
    assert torch.allclose(d_stream.double(), d_exact, atol=1e-5 * float(d_exact.abs().max()))
    # And through aggregate(): the large path is the one taken, deterministically.
    a = s.aggregate(base, ups, {})
    assert torch.equal(a.weights["w"], s.aggregate(base, ups, {}).weights["w"])
    assert torch.allclose(a.weights["w"].double(), d_exact, atol=1e-5 * float(
        d_exact.abs().max()))


def test_complementary_silos_keep_their_share_only_conflict_costs_weight():
    """Label skew: silos push different, orthogonal directions. Conflict-only reliability
    keeps FedAvg's weights for them; the plain-agreement rule starves minority directions."""
    torch.manual_seed(3)
    q = torch.linalg.qr(torch.randn(12, 12)).Q
    majority = q[:, :1] @ torch.randn(1, 5)
    deltas = [majority + 0.01 * torch.randn(12, 5) for _ in range(3)]
    deltas.append(q[:, 5:6] @ torch.randn(1, 5))  # a direction only this silo carries
    base, ups = make_updates(deltas)
    opts = {"beta": 0.0, "energy": 0.9999, "keep_residual": 0}
    avg = get_strategy("fedavg").aggregate(base, ups, {})
    kept = get_strategy("fedcmp", opts).aggregate(base, ups, {})
    starved = get_strategy("fedcmp", {**opts, "conflict_only": 0}).aggregate(base, ups, {})
    minority = q[:, 5:6].T
    along = {k: float((minority @ r.weights["w"]).norm()) for k, r in
             (("avg", avg), ("kept", kept), ("starved", starved))}
    # Kept at least at its FedAvg share (the others' noise that opposes it may lose weight).
    assert along["kept"] >= 0.95 * along["avg"]
    assert along["starved"] < 0.8 * along["avg"]


# -- the snapshot formulation (options.snapshots = 1, fedma/aggregate/snapshots.py) ----------

def _snapshot_reference(base, ups, beta, momentum, keep_residual, strategy):
    """Fed-CMP's snapshot step written out in float64 on whole vectorised deltas: modes from an
    SVD of A = [√pᵢvᵢ], scalar coefficients, the strategy's own reliability weights."""
    x = base["w"].double().reshape(-1)
    p = torch.tensor([u.samples for u in ups], dtype=torch.float64)
    p /= p.sum()
    v = torch.stack([u.weights["w"].double().reshape(-1) - x for u in ups])  # K × n
    u_, s, _ = torch.linalg.svd((v * p.sqrt()[:, None]).T, full_matrices=False)
    phi = u_[:, : int((s > 1e-3 * s[0]).sum())]
    c = v @ phi  # K × r
    _, fused = strategy._weigh(c[..., None], p)
    d = phi @ fused[:, 0]
    if keep_residual:
        d = d + (p[:, None] * (v - c @ phi.T)).sum(0)
    m = d + beta * phi @ (phi.T @ momentum.double().reshape(-1))
    return (x + m).reshape(base["w"].shape), m.reshape(base["w"].shape)


@pytest.mark.parametrize("keep_residual", [0, 1])
def test_snapshot_step_equals_the_float64_formula_with_momentum(keep_residual):
    torch.manual_seed(5)
    shared = torch.randn(20, 15)
    deltas = [0.01 * (shared + torch.randn(20, 15)) for _ in range(5)]
    # A conflicting silo (reliability weights matter), not collinear with silo 0 (rank 6).
    deltas.append(-3 * deltas[0] + 0.01 * torch.randn(20, 15))
    base, ups = make_updates(deltas, [10, 20, 30, 40, 50, 60],
                             base={"w": 0.1 * torch.randn(20, 15), "b": torch.zeros(20)})
    ups = [SiloUpdate(u.silo, {"w": u.weights["w"] + base["w"], "b": u.weights["b"]},
                      u.samples) for u in ups]
    old = 0.01 * torch.randn(20, 15)
    s = get_strategy("fedcmp", {"snapshots": 1, "beta": 0.5, "energy": 1.0, "max_rank": 64,
                                "keep_residual": keep_residual})
    out = s.aggregate(base, ups, {"m.w": old})
    want_w, want_m = _snapshot_reference(base, ups, 0.5, old, keep_residual, s)
    scale = float(want_m.abs().max())
    assert torch.allclose(out.server_state["m.w"].double(), want_m, atol=1e-5 * scale)
    assert torch.allclose(out.weights["w"].double(), want_w, atol=1e-5 * scale)
    assert out.report["_fedcmp"]["ranks"]["w"] == 6
    # The conflicting silo keeps less of its sample share than an agreeing one.
    kept = {n: out.report[n]["reliability"] / out.report[n]["weight"] for n in ("s1", "s5")}
    assert kept["s5"] < kept["s1"]


@pytest.mark.parametrize("snapshots", [0, 1])
def test_without_reliability_or_momentum_fedcmp_is_fedavg(snapshots):
    """The quality benchmark's sanity arm: Fed-CMP with reliability 0 and beta 0 is FedAvg
    (up to float32 rounding), whatever the rank and energy."""
    torch.manual_seed(6)
    deltas = [torch.randn(12, 9) for _ in range(5)]
    deltas[4] = -2 * deltas[0]
    base, ups = make_updates(deltas, [5, 10, 20, 40, 80])
    avg = get_strategy("fedavg").aggregate(base, ups, {})
    out = get_strategy("fedcmp", {"snapshots": snapshots, "reliability": 0, "beta": 0.0,
                                  "energy": 0.5}).aggregate(base, ups, {})
    assert torch.allclose(out.weights["w"], avg.weights["w"], atol=1e-6)
    assert torch.allclose(out.weights["b"], avg.weights["b"], atol=1e-6)
    with_reliability = get_strategy("fedcmp", {"snapshots": snapshots, "beta": 0.0,
                                               "energy": 0.5}).aggregate(base, ups, {})
    assert not torch.allclose(with_reliability.weights["w"], avg.weights["w"], atol=1e-3)


class CountingBlocks(dict):
    """An update whose tensors are read through ``block`` (as an encoded update is), counting
    how many times each block of each tensor is read."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.reads: dict[str, list[int]] = {}

    def block(self, key, start, stop):
        self.reads.setdefault(key, []).append(start)
        return self[key].reshape(-1)[start:stop]


def test_snapshot_formulation_reads_every_update_in_two_passes():
    torch.manual_seed(7)
    base = {"w": torch.randn(700, 800), "b": torch.zeros(700)}  # several blocks
    ups = [SiloUpdate(f"s{i}", CountingBlocks({"w": base["w"] + 1e-3 * torch.randn(700, 800),
                                                "b": torch.randn(700)}), 10) for i in range(4)]
    s = get_strategy("fedcmp", {"snapshots": 1})
    first = s.aggregate(base, ups, {})
    for u in ups:
        starts = u.weights.reads["w"]
        assert len(starts) == 2 * len(set(starts)), "each block read once per pass, two passes"
        u.weights.reads.clear()
    s.aggregate(base, ups, first.server_state)  # with momentum to project: still two passes
    for u in ups:
        starts = u.weights.reads["w"]
        assert len(starts) == 2 * len(set(starts))


def test_snapshot_momentum_outside_the_span_is_dropped_and_accumulates_inside():
    d = torch.zeros(4, 3)
    d[0] = 1.0
    base, ups = make_updates([d, d])
    stale = torch.zeros(4, 3)
    stale[3] = 5.0
    s = get_strategy("fedcmp", {"snapshots": 1, "beta": 0.9, "keep_residual": 0})
    out = s.aggregate(base, ups, {"m.w": stale})
    assert torch.allclose(out.server_state["m.w"], d, atol=1e-6)
    again = s.aggregate(base, ups, out.server_state)
    assert torch.allclose(again.server_state["m.w"], 1.9 * d, atol=1e-6)


def test_flags_are_zero_or_one():
    with pytest.raises(ValueError, match=r"options\.snapshots must be 0 or 1"):
        get_strategy("fedcmp", {"snapshots": 2})


# -- momentum on the basis itself (options.basis_momentum = 1, fedma/aggregate/grassmann.py) --

def _rotating_round(angle, inp=6, k=3):
    """Silos whose deltas all lie along one output direction at ``angle`` in the (e0, e1)
    plane of a 5-dim output space: the shared basis rotates as the angle does."""
    direction = torch.zeros(5, 1)
    direction[0, 0], direction[1, 0] = math.cos(angle), math.sin(angle)
    torch.manual_seed(8)
    return make_updates([direction @ torch.randn(1, inp) for _ in range(k)])


def _angle(u):
    return math.atan2(float(u[1, 0]), float(u[0, 0])) % math.pi


@pytest.mark.parametrize("path", ["exact", "streamed"])
def test_basis_momentum_carries_the_basis_along_its_motion(path, monkeypatch):
    """Round after round the shared direction turns by 0.1 rad. With β = 0 the carried basis
    is each round's own; with β = 0.5 it leads: by round 3 it has turned (2 + β·cos 0.1)·0.1
    (the velocity is carried to the new basis by projection, which shortens it by cos 0.1)."""
    if path == "streamed":  # the randomized-SVD path, taken for large layers
        monkeypatch.setattr("fedma.aggregate.fedcmp.EXACT_SVD_MAX", 0)
    for beta, want in ((0.0, 0.2), (0.5, (2 + 0.5 * math.cos(0.1)) * 0.1)):
        s = get_strategy("fedcmp", {"basis_momentum": 1, "rank": 1, "beta": beta,
                                    "keep_residual": 0})
        state: dict = {}
        for t in range(3):
            base, ups = _rotating_round(0.1 * t)
            out = s.aggregate(base, ups, state)
            state = out.server_state
        y, v = state["basis.w"].double(), state["velocity.w"].double()
        assert _angle(y) == pytest.approx(want, abs=1e-4)
        assert torch.allclose(y.T @ y, torch.eye(1, dtype=y.dtype), atol=1e-6)
        assert float((y.T @ v).abs().max()) < 1e-6  # the velocity is tangent at the basis


def test_basis_momentum_at_beta_zero_is_plain_fedcmp_without_momentum():
    torch.manual_seed(9)
    plain = get_strategy("fedcmp", {"beta": 0.0, "rank": 2})
    carried = get_strategy("fedcmp", {"beta": 0.0, "rank": 2, "basis_momentum": 1})
    state: dict = {}
    for r in range(3):
        torch.manual_seed(20 + r)
        base, ups = make_updates([torch.randn(9, 7) for _ in range(4)])
        want = plain.aggregate(base, ups, {}).weights["w"]
        out = carried.aggregate(base, ups, state)
        state = out.server_state
        assert torch.allclose(out.weights["w"], want, atol=1e-5)


def test_basis_momentum_needs_a_fixed_rank_and_the_exact_basis():
    with pytest.raises(ValueError, match="basis_momentum needs snapshots 0 and a fixed"):
        get_strategy("fedcmp", {"basis_momentum": 1})
    with pytest.raises(ValueError, match="basis_momentum needs"):
        get_strategy("fedcmp", {"basis_momentum": 1, "rank": 2, "snapshots": 1})
