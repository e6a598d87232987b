"""Streamed aggregation: memory-mapped updates and the blocked weighted mean."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save_file

from fedma.aggregate import SiloUpdate, get_strategy
from fedma.aggregate.mapped import MappedTensors
from fedma.aggregate.robust import combine
from fedma.aggregate.stream import BLOCK, delta_norms, weighted_mean_delta, weighted_step
from fedma.store import ArtifactError, Store


def _updates(tmp_path, k=5, shape=(3, BLOCK + 17)):
    torch.manual_seed(0)
    base = {"w": torch.randn(*shape), "b": torch.randn(shape[0])}
    ups = []
    for i in range(k):
        path = tmp_path / f"s{i}.safetensors"
        save_file({n: t + 0.01 * torch.randn_like(t) for n, t in base.items()}, path)
        ups.append(SiloUpdate(f"s{i}", MappedTensors(path), samples=10 * (i + 1)))
    return base, ups


def test_blocked_mean_equals_the_plain_mean_across_block_edges(tmp_path):
    base, ups = _updates(tmp_path)
    total = sum(u.samples for u in ups)
    streamed = weighted_mean_delta(base, ups, [u.samples / total for u in ups])
    plain = combine({u.silo: u.delta(base) for u in ups}, {u.silo: u.samples for u in ups})
    for k in base:  # float32 accumulation: rounding at ~1e-7 of a weight (here |w| ~ 1)
        assert streamed[k].dtype == torch.float32
        assert torch.allclose(streamed[k].double(), plain.delta[k], rtol=0, atol=2e-6)
    again = weighted_mean_delta(base, ups, [u.samples / total for u in ups])
    assert all(torch.equal(again[k], streamed[k]) for k in base)  # deterministic
    norms = delta_norms(base, ups)
    for u, n in zip(ups, norms, strict=True):
        assert n == pytest.approx(float(torch.cat([d.reshape(-1) for d in u.delta(
            base).values()]).norm()), rel=1e-12)


@pytest.mark.parametrize(("lr", "clip"), [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0)])
def test_fedavg_new_weights_in_one_pass_equal_base_plus_mean_delta(tmp_path, lr, clip):
    """FedAvg writes Σ η·cᵢ·wᵢ + (1 − η·Σcᵢ)·x directly; it must be x + η·mean delta (the
    float64 reference) to float32 rounding, also with clipping (Σcᵢ < 1) and η ≠ 1."""
    base, ups = _updates(tmp_path)
    total = sum(u.samples for u in ups)
    got = get_strategy("fedavg", {"server_lr": lr}, robust={"clip_norm": clip}).aggregate(
        base, ups, {})
    norms = delta_norms(base, ups)
    factors = [min(1.0, clip / n) if clip else 1.0 for n in norms]
    assert not clip or min(factors) < 1  # the clipped case really clips
    for k, x in base.items():
        ref = x.double() + lr * sum(u.samples / total * f * u.delta(base)[k]
                                    for u, f in zip(ups, factors, strict=True))
        assert got.weights[k].dtype == x.dtype
        assert torch.allclose(got.weights[k].double(), ref, rtol=0, atol=2e-6)
    direct = weighted_step(base, ups, [u.samples / total for u in ups], 1.0)
    assert all(torch.equal(direct[k], weighted_step(base, ups, [u.samples / total for u in ups],
                                                     1.0)[k]) for k in base)


def test_strategies_read_mapped_updates_like_in_memory_ones(tmp_path):
    base, ups = _updates(tmp_path, shape=(6, 40))
    in_memory = [SiloUpdate(u.silo, {k: v.clone() for k, v in u.weights.items()}, u.samples)
                 for u in ups]
    for name in ("fedavg", "fedadam", "fedcmp"):
        s = get_strategy(name, robust={"clip_norm": 0.05})
        a, b = s.aggregate(base, ups, {}), s.aggregate(base, in_memory, {})
        for k in base:
            assert torch.equal(a.weights[k], b.weights[k]), name
        assert any("clipped" in str(r.get("note", "")) for r in a.report.values()), name


def test_mapped_views_never_write_the_file(tmp_path):
    path = tmp_path / "u.safetensors"
    save_file({"w": torch.ones(4)}, path)
    before = path.read_bytes()
    MappedTensors(path)["w"].mul_(5)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "header", "offsets"])
def test_a_broken_file_is_refused_with_its_name(tmp_path, damage):
    path = tmp_path / "u.safetensors"
    save_file({"w": torch.ones(64)}, path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:-10]
    elif damage == "header":
        data[:8] = struct.pack("<Q", 10**9)
    else:
        data = data.replace(b'"data_offsets":[0,256]', b'"data_offsets":[0,128]')
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"u\.safetensors: not a valid safetensors file"):
        MappedTensors(path)


def test_fetch_verified_leaves_nothing_behind_on_a_digest_mismatch(tmp_path):
    store = Store(f"file://{tmp_path / 'store'}")
    ref = store.put_tensors("t/u.safetensors", {"w": torch.ones(3)})
    dest = tmp_path / "work" / "u.safetensors"
    assert store.fetch_verified("t/u.safetensors", ref.digest, dest) == dest
    assert torch.equal(MappedTensors(dest)["w"], torch.ones(3))
    dest.unlink()
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        store.fetch_verified("t/u.safetensors", "0" * 64, dest)
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(ArtifactError, match="artifact not found"):
        store.fetch_verified("t/missing.safetensors", ref.digest, dest)
