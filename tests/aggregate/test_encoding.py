"""Update encodings: what they cost in bytes and error, and that the aggregator decodes them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from fedma.encoding import Decoded, EncodingError, encode, roundtrip


def _pair(seed=0, rows=64, cols=96):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(rows, cols, generator=g) * 0.02, "b": torch.zeros(rows)}
    delta = {"w": torch.randn(rows, cols, generator=g) * 1e-3,
             "b": torch.randn(rows, generator=g) * 1e-3}
    return base, {k: base[k] + delta[k] for k in base}, delta


def test_float32_is_exact_and_the_compressed_ones_bound_their_error():
    base, weights, delta = _pair()
    assert all(torch.equal(roundtrip(weights, base, "float32")[k], weights[k]) for k in base)
    for k in base:
        rows = delta[k].reshape(delta[k].shape[0], -1) if delta[k].dim() > 1 else \
            delta[k].reshape(1, -1)
        bf16 = (roundtrip(weights, base, "bfloat16")[k] - weights[k]).abs()
        assert bool((bf16 <= 2**-8 * delta[k].abs() + 1e-9).all()), k  # relative to Δ
        int8 = (roundtrip(weights, base, "int8")[k] - weights[k]).abs().reshape(rows.shape)
        half_step = rows.abs().amax(1, keepdim=True) / 127 / 2
        assert bool((int8 <= half_step + 1e-9).all()), k  # half a step of the row's scale


def test_bytes_halve_with_bfloat16_and_quarter_with_int8():
    base, weights, _ = _pair(rows=512, cols=512)
    size = {e: len(save(encode(weights, base, e))) for e in ("float32", "bfloat16", "int8")}
    assert size["bfloat16"] / size["float32"] == pytest.approx(0.5, abs=0.01)
    assert size["int8"] / size["float32"] == pytest.approx(0.25, abs=0.01)


def test_a_malformed_encoded_update_is_refused_naming_the_tensor():
    base, weights, _ = _pair()
    stored = encode(weights, base, "int8")
    with pytest.raises(EncodingError, match=r"'w': missing or malformed w::scale"):
        Decoded({k: v for k, v in stored.items() if k != "w::scale"}, base, "int8")
    with pytest.raises(EncodingError, match=r"tensor 'w': torch.float32"):
        Decoded({**stored, "w": stored["w"].float()}, base, "int8")
    with pytest.raises(EncodingError, match="do not match the global projector"):
        Decoded({"w": stored["w"], "w::scale": stored["w::scale"]}, base, "int8")
    with pytest.raises(EncodingError, match="not one of"):
        Decoded(stored, base, "int4")


@pytest.mark.parametrize("encoding", ["bfloat16", "int8"])
def test_a_round_with_encoded_updates_aggregates_close_to_float32(tmp_path, tiny_models,
                                                                  encoding):
    from fedma.aggregate.run import aggregate_round
    from fedma.spec import parse, round_spec
    from fedma.store import Store, global_rel
    from fedma.train.silo import train_silo
    from tests.conftest import training_manifest

    outs = {}
    for enc in ("float32", encoding):
        m = training_manifest(tmp_path / enc, tiny_models)
        m["spec"]["artifacts"]["updateEncoding"] = enc
        rnd = round_spec(parse(m), 1, None)
        s = {n: train_silo(rnd, n) for n in ("silo-1", "silo-2")}
        store = Store(rnd.spec.artifacts.uri)
        upd = store.get_manifest(store.rel(s["silo-1"]["update"]["uri"]))
        assert upd["encoding"] == enc
        out = aggregate_round(rnd, {n: v["update"]["digest"] for n, v in s.items()})
        assert out["included"] == ["silo-1", "silo-2"], out["rejected"]
        r0 = store.get_tensors(global_rel("tiny", 0))
        outs[enc] = (store.get_tensors(store.rel(out["output"]["uri"])), upd["bytes"], r0)
    (ref, _, r0), got = outs["float32"], outs[encoding][0]
    for k in ref:  # the aggregate moves as far, in the same direction, within 2 % of the move
        move = (ref[k] - r0[k]).norm()
        assert float((got[k] - ref[k]).norm() / move) < 0.02, k
    assert outs[encoding][1] < 0.6 * outs["float32"][1]


@pytest.mark.parametrize("encoding", ["float32", "bfloat16", "int8"])
def test_a_block_decodes_exactly_the_slice_of_the_whole_tensor(encoding):
    base, weights, _ = _pair(rows=37, cols=53)  # rows do not divide the block ranges
    decoded = Decoded(encode(weights, base, encoding), base, encoding)
    for k in base:
        whole = decoded[k].reshape(-1)
        for start, stop in [(0, whole.numel()), (0, 1), (50, 59), (52, 107), (1000, 1961)]:
            stop = min(stop, whole.numel())
            assert torch.equal(decoded.block(k, start, stop), whole[start:stop]), (k, start)


class _WholeTensorsForbidden(Decoded):
    def __getitem__(self, k):
        raise AssertionError(f"whole decoded tensor {k!r} requested")


def test_fedavg_decodes_encoded_updates_block_by_block_never_whole(monkeypatch):
    """Otherwise the blocked mean would hold K decoded copies of the largest layer."""
    from fedma.aggregate import SiloUpdate, get_strategy, stream

    monkeypatch.setattr(stream, "BLOCK", 1000)  # several blocks per tensor, ragged edges
    base, _, _ = _pair(rows=64, cols=96)
    ups, plain = [], []
    for i in range(4):
        g = torch.Generator().manual_seed(i + 1)
        w = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        ups.append(SiloUpdate(f"s{i}", _WholeTensorsForbidden(encode(w, base, "int8"), base,
                                                              "int8"), 10 + i))
        plain.append(SiloUpdate(f"s{i}", roundtrip(w, base, "int8"), 10 + i))
    got = get_strategy("fedavg", robust={"clip_norm": 0.01}).aggregate(base, ups, {})
    want = get_strategy("fedavg", robust={"clip_norm": 0.01}).aggregate(base, plain, {})
    for k in base:
        assert torch.equal(got.weights[k], want.weights[k]), k
