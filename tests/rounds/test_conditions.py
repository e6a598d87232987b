"""The conditions people and ``kubectl wait`` read (operator/fedma_operator/conditions.py), and
spec.suspend of a training (training.py) against a stand-in hub that records what the
reconciler asks of it. On the real control plane: tests/kube/test_conditions.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from fedma.rounds import RoundPhase, SiloPhase
from fedma_operator.conditions import NAMES, mirrored, round_conditions
from fedma_operator.observe import no_pod, pod_trouble
from fedma_operator.training import TrainingReconciler

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def by_type(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


def entries(*phases: tuple[str, int]) -> dict[str, dict[str, Any]]:
    return {f"s{i}": {"phase": p, "attempts": a} for i, (p, a) in enumerate(phases)}


def test_a_healthy_training_round_is_running_and_not_degraded():
    c = by_type(round_conditions(RoundPhase.TRAINING, 2, entries(
        (SiloPhase.RUNNING, 1), (SiloPhase.RUNNING, 1), (SiloPhase.SUCCEEDED, 1)), 3, NOW))
    assert c["Running"]["status"] == "True" and c["Running"]["observedGeneration"] == 3
    assert c["Failed"]["status"] == "False"
    assert c["Degraded"]["status"] == "False" and c["Degraded"]["reason"] == "AllSilosHealthy"
    assert c["QuorumAtRisk"]["status"] == "False"


def test_an_exclusion_degrades_and_the_last_spare_puts_the_quorum_at_risk():
    c = by_type(round_conditions(RoundPhase.TRAINING, 2, entries(
        (SiloPhase.EXCLUDED, 2), (SiloPhase.RUNNING, 1), (SiloPhase.RUNNING, 2)), 1, NOW))
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "SilosExcluded"
    assert c["Degraded"]["message"] == "excluded: s0; retrying: s2"
    assert c["QuorumAtRisk"]["status"] == "True" and c["QuorumAtRisk"]["reason"] == "NoSpareSilo"
    assert "2 silos can still succeed, 2 needed" in c["QuorumAtRisk"]["message"]


def test_every_silo_needed_is_at_risk_only_after_a_setback():
    healthy = entries((SiloPhase.RUNNING, 1), (SiloPhase.RUNNING, 1))
    assert by_type(round_conditions(RoundPhase.TRAINING, 2, healthy, 1, NOW))[
        "QuorumAtRisk"]["status"] == "False"
    retry = entries((SiloPhase.RUNNING, 2), (SiloPhase.RUNNING, 1))
    c = by_type(round_conditions(RoundPhase.TRAINING, 2, retry, 1, NOW))
    assert c["QuorumAtRisk"]["status"] == "True"
    assert c["Degraded"]["reason"] == "SilosRetrying"


def test_an_ended_round_is_not_running_and_its_risk_is_over():
    ended = entries((SiloPhase.EXCLUDED, 2), (SiloPhase.SUCCEEDED, 1))
    c = by_type(round_conditions(RoundPhase.SUCCEEDED, 1, ended, 1, NOW))
    assert c["Running"]["status"] == "False" and c["Failed"]["status"] == "False"
    assert c["QuorumAtRisk"]["status"] == "False"
    assert c["Degraded"]["status"] == "True"  # it succeeded without s0: still worth saying
    c = by_type(round_conditions(RoundPhase.FAILED, 2, ended, 1, NOW))
    assert c["Failed"]["status"] == "True" and c["Running"]["status"] == "False"


def test_a_thousand_excluded_silos_make_a_short_message():
    many = {f"silo-{i:04d}": {"phase": SiloPhase.EXCLUDED, "attempts": 2} for i in range(1000)}
    c = by_type(round_conditions(RoundPhase.FAILED, 1, many, 1, NOW))
    msg = c["Degraded"]["message"]
    assert msg.endswith(f"(+{1000 - NAMES} more)") and len(msg) < 200, msg


def test_a_training_mirrors_its_rounds_degraded_and_quorum_conditions_only():
    rnd = {"conditions": round_conditions(RoundPhase.TRAINING, 1, entries(
        (SiloPhase.EXCLUDED, 2), (SiloPhase.RUNNING, 1)), 1, NOW)}
    got = by_type(mirrored(rnd, 7, NOW))
    assert set(got) == {"Degraded", "QuorumAtRisk"}
    assert got["Degraded"]["status"] == "True" and got["Degraded"]["observedGeneration"] == 7


class Hub:
    """Rounds the reconciler created, each still running."""

    def __init__(self) -> None:
        self.rounds: dict[str, dict[str, Any]] = {}

    async def get_round(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.rounds.get(name)

    async def create_round(self, namespace: str, body: dict[str, Any]) -> bool:
        self.rounds[body["metadata"]["name"]] = {**body, "status": {"phase": "Training"}}
        return True


def training(suspend: bool, status: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedTraining",
            "metadata": {"name": "t", "namespace": "ns", "generation": generation},
            "spec": {"rounds": 2, "suspend": suspend,
                     "model": {"vision": {"path": "/m/v"}, "languageModel": {"path": "/m/l"}},
                     "silos": [{"name": "a", "data": {"path": "/d/a.jsonl"}}],
                     "artifacts": {"uri": "s3://b/fedma"}},
            "status": status}


def test_a_suspended_training_creates_no_round_and_resumes_when_unsuspended():
    hub = Hub()
    rec = TrainingReconciler(hub)  # type: ignore[arg-type]
    first = asyncio.run(rec.reconcile(training(True, {}), NOW))
    st = first.status
    assert st["phase"] == "Suspended" and not hub.rounds
    assert "suspended before round 1 of 2" in st["message"]
    c = by_type(st["conditions"])
    assert c["Suspended"]["status"] == "True" and c["Running"]["status"] == "False"
    assert ("Normal", "TrainingSuspended", st["message"]) in first.events
    # Resuming is an edit of spec.suspend alone: accepted, not refused as a spec change.
    second = asyncio.run(rec.reconcile(training(False, st, generation=2), NOW)).status
    assert second["phase"] == "Running" and list(hub.rounds) == ["t-r0001"]
    c = by_type(second["conditions"])
    assert c["Suspended"]["status"] == "False" and c["Running"]["status"] == "True"
    assert "SpecChangeRefused" not in c
    assert "suspend" not in hub.rounds["t-r0001"]["spec"]  # a round has no such field
    # Suspending again while round 1 runs lets it run; round 2 waits.
    third = asyncio.run(rec.reconcile(training(True, second, generation=3), NOW)).status
    assert third["phase"] == "Running" and list(hub.rounds) == ["t-r0001"]


def test_any_other_edit_is_still_refused():
    hub = Hub()
    rec = TrainingReconciler(hub)  # type: ignore[arg-type]
    st = asyncio.run(rec.reconcile(training(True, {}), NOW)).status
    edited = training(False, st, generation=2)
    edited["spec"]["rounds"] = 1  # rounds may be raised (an extension), never lowered
    edited["spec"]["silos"][0]["name"] = "b"
    st2 = asyncio.run(rec.reconcile(edited, NOW)).status
    assert by_type(st2["conditions"])["SpecChangeRefused"]["status"] == "True"
    assert st2["acceptedSpec"]["rounds"] == 2 and st2["acceptedSpec"]["suspend"] is False
    assert st2["acceptedSpec"]["silos"][0]["name"] == "a"
    assert st2["phase"] == "Running"  # the resume is applied, the other edits are not


def test_raised_rounds_extend_a_succeeded_training_with_a_new_pass():
    hub = Hub()
    rec = TrainingReconciler(hub)  # type: ignore[arg-type]
    st = asyncio.run(rec.reconcile(training(False, {}), NOW)).status
    assert st["passRounds"] == 2
    out = {"uri": "s3://b/fedma/t/round-0002/global.safetensors", "digest": "cd" * 32}
    finished = {**st, "phase": "Succeeded", "currentRound": 2, "completedRounds": 2,
                "latest": out, "completionTime": "2026-01-01T00:00:00Z"}
    hub.rounds["t-r0002"] = {"metadata": {"name": "t-r0002"},
                             "status": {"phase": "Succeeded", "output": out}}
    idle = asyncio.run(rec.reconcile(training(False, finished), NOW))
    assert idle.done and idle.dormant and idle.status == {}  # nothing to do, but wakeable
    raised = training(False, finished, generation=2)
    raised["spec"]["rounds"] = 4
    ext = asyncio.run(rec.reconcile(raised, NOW))
    assert not ext.done and ext.status["phase"] == "Running"
    assert ext.status["completionTime"] is None  # merge patch: removed
    assert ext.status["acceptedSpec"]["rounds"] == 4 and ext.status["passRounds"] == 2
    c = by_type(ext.status["conditions"])
    assert c["Succeeded"]["status"] == "False" and c["Succeeded"]["reason"] == "Extended"
    assert "SpecChangeRefused" not in c
    assert any(e[1] == "TrainingExtended" for e in ext.events)
    r3 = hub.rounds["t-r0003"]["spec"]
    assert r3["input"] == out and r3["totalRounds"] == 4 and r3["passRounds"] == 2


def test_a_finished_training_refuses_lowered_rounds_and_says_so():
    hub = Hub()
    rec = TrainingReconciler(hub)  # type: ignore[arg-type]
    st = asyncio.run(rec.reconcile(training(False, {}), NOW)).status
    finished = {**st, "phase": "Succeeded", "currentRound": 2, "completedRounds": 2,
                "completionTime": "2026-01-01T00:00:00Z"}
    lowered = training(False, finished, generation=2)
    lowered["spec"]["rounds"] = 1
    out = asyncio.run(rec.reconcile(lowered, NOW))
    assert out.done and out.dormant and list(hub.rounds) == ["t-r0001"]
    c = by_type(out.status["conditions"])
    assert c["SpecChangeRefused"]["status"] == "True" and c["SpecChangeRefused"][
        "observedGeneration"] == 2
    assert [e[1] for e in out.events] == ["SpecChangeRefused"]
    assert "phase" not in out.status and "completionTime" not in out.status  # still Succeeded
    # Told once: the same edit seen again writes nothing; restoring the spec clears it.
    seen = {**finished, "conditions": out.status["conditions"], "observedGeneration": 2}
    assert asyncio.run(rec.reconcile(training(False, seen, generation=2) | {
        "spec": lowered["spec"]}, NOW)).status == {}
    restored = asyncio.run(rec.reconcile(training(False, seen, generation=3), NOW))
    assert by_type(restored.status["conditions"])["SpecChangeRefused"]["status"] == "False"


def waiting_pod(reason: str, message: str = "m") -> dict[str, Any]:
    return {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "trainer", "state": {"waiting": {"reason": reason, "message": message}}}]}}


@pytest.mark.parametrize("pod,trouble", [
    (waiting_pod("ImagePullBackOff", 'Back-off pulling image "x"'),
     'ImagePullBackOff: Back-off pulling image "x"'),
    (waiting_pod("CreateContainerConfigError", 'secret "fedma-s3" not found'),
     'CreateContainerConfigError: secret "fedma-s3" not found'),
    (waiting_pod("ContainerCreating"), ""),  # on its way: not trouble
    ({"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}},
     "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
    ({"status": {"phase": "Failed", "reason": "Evicted",
                 "message": "The node was low on resource: memory."}},
     "Evicted: The node was low on resource: memory."),
    ({"status": {"phase": "Running", "containerStatuses": [
        {"name": "trainer", "state": {"running": {}},
         "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}},
     "OOMKilled: the container exceeded its memory limit"),
    ({"status": {"phase": "Running", "containerStatuses": [
        {"name": "trainer", "state": {"running": {}}}]}}, ""),
])
def test_pod_trouble_names_what_keeps_a_pod_from_getting_anywhere(pod, trouble):
    assert pod_trouble(pod) == trouble


def test_a_stuck_pod_degrades_a_running_round_and_says_why():
    e = entries((SiloPhase.RUNNING, 1), (SiloPhase.RUNNING, 1))
    e["s1"]["waiting"] = 'CreateContainerConfigError: secret "fedma-s3" not found'
    c = by_type(round_conditions(RoundPhase.TRAINING, 1, e, 1, NOW))
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "SilosWaiting"
    assert c["Degraded"]["message"] == "waiting: s1 (CreateContainerConfigError)"


def test_a_job_without_a_pod_says_failedcreate_and_where_to_look():
    job = {"metadata": {"name": "t-r0001-silo-1-a1"}}
    said = no_pod(job, [])
    assert said.startswith("FailedCreate: no pod after 15 s") and \
        "kubectl describe job t-r0001-silo-1-a1" in said
    assert no_pod(job, [waiting_pod("ContainerCreating")]) == ""
