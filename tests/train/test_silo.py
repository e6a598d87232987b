import json

import pytest
import torch

from fedma.model.fingerprint import FingerprintMismatch
from fedma.model.projector import build_projector, projector_state
from fedma.spec import ProjectorRef, parse, round_spec
from fedma.store import ArtifactError, Store, global_rel
from fedma.train.batches import round_shard
from fedma.train.silo import train_silo
from tests.conftest import training_manifest


def first_round(tmp_path, tiny, **kw):
    training = parse(training_manifest(tmp_path, tiny, **kw))
    store = Store(training.spec.artifacts.uri)
    init = build_projector("mlp2x_gelu", 32, 32, seed=0)
    ref = store.put_tensors(global_rel("tiny", 0), projector_state(init))
    return round_spec(training, 1, ProjectorRef(**ref.as_dict())), store


def test_shards_are_disjoint_one_pass_and_stable():
    shards = [round_shard(50, 7, "a", r, 5) for r in range(1, 6)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(50))
    assert round_shard(50, 7, "a", 2, 5) == shards[1]
    assert round_shard(50, 7, "b", 2, 5) != shards[1]


def test_train_silo_writes_update_manifest_and_termination(tmp_path, tiny_models):
    rnd, store = first_round(tmp_path, tiny_models)
    term = tmp_path / "term.json"
    summary = train_silo(rnd, "silo-1", termination_log=str(term))
    assert summary["status"] == "Succeeded" and summary["steps"] == 3  # 12 samples / batch 4
    assert json.loads(term.read_text())["update"]["digest"] == summary["update"]["digest"]
    rel = store.rel(summary["update"]["uri"])
    m = store.get_manifest(rel)
    assert m["base_digest"] == rnd.spec.input.digest and m["samples"] == 12
    assert m["fingerprints"]["languageModel"] == tiny_models["lm_fp"]
    upd = store.get_tensors(rel, summary["update"]["digest"])
    base = store.get_tensors(store.rel(rnd.spec.input.uri))
    assert any(not torch.equal(upd[k], base[k]) for k in base)  # the projector learned
    # A retried Job finds its committed update and re-reports it.
    again = train_silo(rnd, "silo-1")
    assert again["reused"] and again["update"] == summary["update"]


@pytest.mark.faults
def test_tampered_input_projector_is_refused(tmp_path, tiny_models):
    rnd, _ = first_round(tmp_path, tiny_models)
    path = tmp_path / "store" / "tiny" / "round-0000" / "global.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"round-0000/global\.safetensors: sha256 mismatch"):
        train_silo(rnd, "silo-1")


@pytest.mark.faults
def test_fingerprint_mismatch_refuses_to_train(tmp_path, tiny_models):
    bad = dict(tiny_models, lm_fp="f" * 64)
    rnd, _ = first_round(tmp_path, bad)
    with pytest.raises(FingerprintMismatch, match=r"model\.languageModel\.fingerprint"):
        train_silo(rnd, "silo-1")


def test_unknown_silo(tmp_path, tiny_models):
    rnd, _ = first_round(tmp_path, tiny_models)
    with pytest.raises(ValueError, match="silo 'nope' is not in the round"):
        train_silo(rnd, "nope")


def test_warmup_ramps_the_learning_rate():
    from fedma.train.torch_engine import warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup(opt, 3)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_fedprox_keeps_the_update_closer_to_the_global_projector(tmp_path, tiny_models):
    def distance(mu: float, sub: str) -> float:
        rnd, store = first_round(tmp_path / sub, tiny_models, proximalMu=mu, learningRate=0.05)
        s = train_silo(rnd, "silo-1")
        upd = store.get_tensors(store.rel(s["update"]["uri"]), s["update"]["digest"])
        base = store.get_tensors(store.rel(rnd.spec.input.uri))
        return sum(float((upd[k] - base[k]).pow(2).sum()) for k in base) ** 0.5

    assert distance(1000.0, "prox") < 0.5 * distance(0.0, "plain")



def test_round_one_without_input_commits_one_seeded_initial_projector(tmp_path, tiny_models):
    """How the operator starts a training: no input; silos commit and share global round 0."""
    from fedma.aggregate.run import AggregationError, aggregate_round

    training = parse(training_manifest(tmp_path, tiny_models))
    rnd = round_spec(training, 1, None)
    store = Store(training.spec.artifacts.uri)
    with pytest.raises(AggregationError, match="seeded initial projector"):
        aggregate_round(rnd, {"silo-1": None})
    s1 = train_silo(rnd, "silo-1")
    r0 = store.get_manifest(global_rel("tiny", 0))
    s2 = train_silo(rnd, "silo-2")
    for s in (s1, s2):
        assert store.get_manifest(store.rel(s["update"]["uri"]))["base_digest"] == r0["sha256"]
    out = aggregate_round(rnd, {"silo-1": s1["update"]["digest"], "silo-2": s2["update"]["digest"]})
    assert out["included"] == ["silo-1", "silo-2"]
    # Re-running silo-1 reuses its committed update (idempotent Job retries).
    assert train_silo(rnd, "silo-1")["reused"] is True


def test_other_ranks_wait_for_rank_zero_to_commit_the_seeded_projector(tmp_path, tiny_models,
                                                                       monkeypatch):
    """A multi-GPU Job's ranks start together; rank 1 must not read round 0 before rank 0
    wrote it (bench/zero.py hit this on round 1 without input)."""
    import threading
    import time

    import fedma.train.silo as silo_mod

    training = parse(training_manifest(tmp_path, tiny_models))
    rnd = round_spec(training, 1, None)
    store = Store(training.spec.artifacts.uri)
    proj = build_projector("mlp2x_gelu", 32, 32, seed=0)
    late = threading.Timer(1.0, silo_mod.seeded_initial, (store, rnd, proj, 0))
    late.start()
    t0 = time.monotonic()
    weights, digest = silo_mod.seeded_initial(store, rnd, proj, 1)
    late.join()
    assert time.monotonic() - t0 >= 0.9
    assert digest == store.get_manifest(global_rel("tiny", 0))["sha256"]
    assert set(weights) == set(projector_state(proj))
    monkeypatch.setattr(silo_mod, "SEED_COMMIT_WAIT_S", 0.2)
    other = round_spec(parse({**training_manifest(tmp_path / "b", tiny_models)}), 1, None)
    with pytest.raises(ArtifactError, match="rank 0 did not commit"):
        silo_mod.seeded_initial(Store(other.spec.artifacts.uri), other, proj, 1)


def test_an_extended_training_keeps_its_first_pass_and_reshuffles_for_the_next():
    first = [round_shard(50, 7, "a", r, 5) for r in range(1, 6)]
    # Rounds 6-10 of a training started with 5: a second pass, every sample once more,
    # in another order; rounds 1-5 are cut exactly as before the extension.
    second = [round_shard(50, 7, "a", r, 5) for r in range(6, 11)]
    assert sorted(i for s in second for i in s) == list(range(50))
    assert second != first
    assert [round_shard(50, 7, "a", r, 5) for r in range(1, 6)] == first
