"""Every hop checks what it reads: the aggregator refuses a round input or a server state
that is not the one the round names (the silo side: tests/train/test_silo.py; the updates:
tests/faults/test_update_faults.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from fedma.aggregate.run import aggregate_round
from fedma.spec import ProjectorRef
from fedma.store import ArtifactError, global_rel, server_state_rel
from tests.faults.test_update_faults import _round

pytestmark = pytest.mark.faults


def test_the_aggregator_refuses_a_round_input_changed_after_the_round_named_it(
        tmp_path, tiny_models):
    rnd, store, base, _, digests, _ = _round(tmp_path, tiny_models, {})
    store.put_bytes(global_rel("tiny", 0), save({k: v + 1 for k, v in base.items()}))
    with pytest.raises(ArtifactError, match=r"round-0000/global\.safetensors: sha256 mismatch"):
        aggregate_round(rnd, digests)
    assert not store.committed(global_rel("tiny", 1))


def test_the_aggregator_refuses_a_server_state_changed_after_the_round_named_it(
        tmp_path, tiny_models):
    rnd, store, base, _, digests, _ = _round(tmp_path, tiny_models, {})
    state = {f"m.{k}": torch.zeros_like(v) for k, v in base.items()}
    ref = store.put_tensors(server_state_rel("tiny", 0), state)
    rnd = rnd.model_copy(update={"spec": rnd.spec.model_copy(update={
        "server_state": ProjectorRef(**ref.as_dict())})})
    store.put_bytes(server_state_rel("tiny", 0),
                    save({k: v + 1 for k, v in state.items()}))
    with pytest.raises(ArtifactError, match=r"server-state\.safetensors: sha256 mismatch"):
        aggregate_round(rnd, digests)
    assert not store.committed(global_rel("tiny", 1))
