"""A training's status stays bounded by the work, not its history: 10,000 rounds (the
schema's limit) of 1,000 silos (its limit) keep the newest HISTORY_ROUNDS entries with counts
and a few names. The hub is a stand-in holding finished rounds (the reconciler only reads
them); the real control plane runs trainings in tests/kube."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from fedma_operator.training import HISTORY_NAMES, HISTORY_ROUNDS, TrainingReconciler

SILOS = 1000
ROUNDS = 10_000


class FinishedRounds:
    """Every round already Succeeded, with SILOS silos of which all but 10 were excluded."""

    def __init__(self) -> None:
        names = [f"silo-{i:04d}" for i in range(SILOS)]
        self.status = {
            "phase": "Succeeded", "loss": 1.5, "completionTime": "2026-12-03T00:00:00Z",
            "silos": {n: {"phase": "Succeeded" if i < 10 else "Excluded"}
                      for i, n in enumerate(names)},
            "aggregation": {"included": {n: "ab" * 32 for n in names[:10]}}}

    async def get_round(self, namespace: str, name: str) -> dict[str, Any]:
        r = int(name.rsplit("-r", 1)[1])
        return {"metadata": {"name": name}, "status": {
            **self.status, "output": {"uri": f"s3://b/r{r}.safetensors", "digest": "cd" * 32}}}


def body(status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedTraining",
            "metadata": {"name": "long", "namespace": "ns", "generation": 1},
            "spec": {"rounds": ROUNDS,
                     "model": {"vision": {"path": "/m/v"}, "languageModel": {"path": "/m/l"}},
                     "silos": [{"name": f"silo-{i:04d}", "data": {"path": f"/d/{i}.jsonl"}}
                               for i in range(SILOS)],
                     "artifacts": {"uri": "s3://b/fedma"}},
            "status": status}


# The training is far along: the last WALK rounds finish while the reconciler looks (one
# reconcile walks every finished round; a restart after an outage does the same).
WALK = 2 * HISTORY_ROUNDS + 7
ALONG = {"currentRound": ROUNDS - WALK + 1, "completedRounds": ROUNDS - WALK,
         "history": [{"round": r} for r in range(ROUNDS - WALK - HISTORY_ROUNDS + 1,
                                                 ROUNDS - WALK + 1)]}


def test_ten_thousand_rounds_of_a_thousand_silos_keep_a_bounded_history():
    rec = TrainingReconciler(FinishedRounds())  # type: ignore[arg-type]
    out = asyncio.run(rec.reconcile(body(ALONG), datetime.now(UTC)))
    st = out.status
    assert st["phase"] == "Succeeded" and st["completedRounds"] == ROUNDS, st["message"]
    assert [h["round"] for h in st["history"]] == list(range(ROUNDS - HISTORY_ROUNDS + 1,
                                                             ROUNDS + 1))
    last = st["history"][-1]
    assert last["silosIncluded"] == 10 and last["silosExcluded"] == SILOS - 10
    assert last["excluded"] == [f"silo-{i:04d}" for i in range(10, 10 + HISTORY_NAMES)]
    assert last["output"]["uri"] == f"s3://b/r{ROUNDS}.safetensors"
    history = len(json.dumps(st["history"]))
    assert history < 64 * 1024, history


def test_a_restarted_reconcile_counts_each_round_once():
    """completedRounds is a counter kept in status, not the history's length: after the
    window is full, reconciling again (a restart) neither recounts nor repeats a round."""
    rec = TrainingReconciler(FinishedRounds())  # type: ignore[arg-type]
    first = asyncio.run(rec.reconcile(body(ALONG), datetime.now(UTC))).status
    again = {k: v for k, v in first.items() if k not in ("phase", "completionTime")}
    second = asyncio.run(rec.reconcile(body(again), datetime.now(UTC))).status
    assert second["completedRounds"] == ROUNDS
    assert second["history"] == first["history"]
