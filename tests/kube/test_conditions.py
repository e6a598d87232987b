"""Conditions and spec.suspend on the real control plane, read the way people read them:
``kubectl wait --for=condition=...`` against the real apiserver, a ``kubectl patch`` of
spec.suspend to resume. The pure rules: tests/rounds/test_conditions.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kube.deployed import NAMESPACE
from tests.kube.test_lifecycle import delete_training, one_round, round_status
from tests.kube.waiting import apply, fedma_path, get, items, wait_until

pytestmark = [pytest.mark.kube]


def wait(hub, what: str, condition: str, timeout_s: int = 120):
    return hub.kubectl("-n", NAMESPACE, "wait", f"--for=condition={condition}",
                       f"--timeout={timeout_s}s", what, check=False)


def test_a_suspended_training_waits_and_kubectl_wait_sees_it_resume_and_succeed(
        hub, operator, tmp_path: Path, tiny_models):
    manifest = one_round(tmp_path, tiny_models, "pause")
    manifest["spec"]["suspend"] = True
    apply(hub, manifest)
    out = wait(hub, "federatedtraining/pause", "Suspended", 60)
    assert out.returncode == 0, out.stderr + operator.tail()
    obj = get(hub, fedma_path(NAMESPACE, "federatedtrainings", "pause"))
    assert obj["status"]["phase"] == "Suspended", obj["status"]
    assert not [r for r in items(hub, fedma_path(NAMESPACE, "federatedrounds"))
                if r["spec"]["trainingName"] == "pause"]
    hub.kubectl("-n", NAMESPACE, "patch", "federatedtraining", "pause", "--type=merge",
                "-p", '{"spec": {"suspend": false}}')
    out = wait(hub, "federatedtraining/pause", "Succeeded", 300)
    assert out.returncode == 0, out.stderr + operator.tail()
    assert wait(hub, "federatedround/pause-r0001", "Succeeded", 10).returncode == 0
    st = get(hub, fedma_path(NAMESPACE, "federatedtrainings", "pause"))["status"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Suspended"]["status"] == "False" and conds["Running"]["status"] == "False"
    assert conds["Failed"]["status"] == "False" and "SpecChangeRefused" not in conds, conds
    assert conds["Degraded"]["status"] == "False", conds  # mirrored from its round
    delete_training(hub, "pause")


def test_kubectl_wait_for_failed_ends_on_an_invalid_round(hub, operator):
    rnd = {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedRound",
           "metadata": {"name": "wait-fails", "namespace": NAMESPACE},
           "spec": {"trainingName": "wait-fails", "round": 1, "totalRounds": 1,
                    "model": {"vision": {"path": "/m/v"}, "languageModel": {"path": "/m/l"}},
                    "silos": [{"name": "a", "data": {"path": "/d/a.jsonl"}}],
                    "artifacts": {"uri": "http://attacker.example/x"}}}
    apply(hub, rnd)
    try:
        out = wait(hub, "federatedround/wait-fails", "Failed", 60)
        assert out.returncode == 0, out.stderr + operator.tail()
    finally:
        hub.kubectl("-n", NAMESPACE, "delete", "federatedround", "wait-fails")


@pytest.mark.faults
def test_a_pod_stuck_on_a_missing_secret_shows_in_the_silos_status_not_just_running(
        hub, operator, tmp_path: Path, tiny_models):
    """The training names a credentials Secret that does not exist: the silo pods wait with
    CreateContainerConfigError (written by the process kubelet, as a kubelet does; the
    apiserver, Job controller and operator are real). Within the pod check (15 s after launch,
    then at the 30 s recheck) the silo's status says so and the round is Degraded."""
    manifest = one_round(tmp_path, tiny_models, "nosecret")
    manifest["spec"]["artifacts"]["credentialsSecret"] = "no-such-secret"
    apply(hub, manifest)

    def stuck():
        rnd = get(hub, fedma_path(NAMESPACE, "federatedrounds", "nosecret-r0001")) or {}
        st = rnd.get("status") or {}
        silo = (st.get("silos") or {}).get("silo-1") or {}
        return st if "CreateContainerConfigError" in silo.get("waiting", "") else None

    st = wait_until(stuck, 90, "silo-1's waiting reason", operator.tail)
    assert "no-such-secret" in st["silos"]["silo-1"]["waiting"], st["silos"]["silo-1"]
    assert st["silos"]["silo-1"]["phase"] == "Running"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Degraded"]["status"] == "True", conds
    assert conds["Degraded"]["reason"] == "SilosWaiting", conds
    assert "silo-1 (CreateContainerConfigError)" in conds["Degraded"]["message"], conds
    delete_training(hub, "nosecret")


@pytest.mark.faults
@pytest.mark.parametrize("silo, says", [
    ({"nodeSelector": {"fedma.test/pool": "h100"}}, "didn't match Pod's node affinity/selector"),
    ({"gpus": 16}, "Insufficient nvidia.com/gpu"),
], ids=["node-selector", "gpus"])
def test_a_silo_the_real_scheduler_cannot_place_shows_unschedulable_with_its_message(
        hub, operator, tmp_path: Path, tiny_models, silo, says):
    """silo-1 asks for a node pool no node has, or for 16 GPUs on a cluster whose one node has
    8: the real kube-scheduler leaves its pod Pending with PodScheduled=False/Unschedulable and
    says why. Within the pod check the silo's status carries the scheduler's own message and
    the round is Degraded; silo-2, placed by the same scheduler, trains."""
    name = f"unsched-{'gpu' if 'gpus' in silo else 'pool'}"
    manifest = one_round(tmp_path, tiny_models, name)
    manifest["spec"]["silos"][0].update(silo)
    if "gpus" in silo:  # more than one GPU trains with DeepSpeed (a CEL rule of the CRD)
        manifest["spec"]["training"]["engine"] = "deepspeed"
    apply(hub, manifest)
    try:
        def unschedulable():
            st = round_status(hub, name)
            silo1 = (st.get("silos") or {}).get("silo-1") or {}
            silo2 = (st.get("silos") or {}).get("silo-2") or {}
            return (st if silo1.get("waiting", "").startswith("Unschedulable")
                    and silo2.get("phase") == "Succeeded" else None)

        st = wait_until(unschedulable, 240, "silo-1 Unschedulable and silo-2 Succeeded",
                        lambda: f"{round_status(hub, name)}\n{hub.procs['kube-scheduler'].tail()}"
                                f"\n{operator.tail()}")
        silo1 = st["silos"]["silo-1"]
        assert says in silo1["waiting"] and "0/1 nodes are available" in silo1["waiting"], silo1
        assert silo1["phase"] == "Running"
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Degraded"]["status"] == "True", conds
        assert "silo-1 (Unschedulable)" in conds["Degraded"]["message"], conds
        pods = items(hub, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D"
                          f"{silo1['job']}")
        assert pods and not pods[0]["spec"].get("nodeName"), pods  # truly not placed
        placed = items(hub, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D"
                            f"{st['silos']['silo-2']['job']}")
        assert placed and placed[0]["spec"]["nodeName"] == "hub-node"
    finally:
        delete_training(hub, name)


@pytest.mark.faults
def test_a_silo_past_its_memory_limit_is_oomkilled_and_its_status_says_so(
        hub, operator, tmp_path: Path, tiny_models):
    """silo-1's trainer gets 200 Mi, less than importing torch takes: its container is killed
    at the limit (the process kubelet measures the group's resident memory, as a cgroup
    would) and reported OOMKilled, exit code 137; the real Job controller fails the Job after
    its retries and the silo is excluded with that reason, not a bare "BackoffLimitExceeded";
    silo-2 trains."""
    manifest = one_round(tmp_path, tiny_models, "oom")
    manifest["spec"]["silos"][0]["resources"] = {"cpu": "1", "memory": "200Mi"}
    apply(hub, manifest)
    try:
        def excluded():
            st = round_status(hub, "oom")
            silo1 = (st.get("silos") or {}).get("silo-1") or {}
            return st if silo1.get("phase") == "Excluded" else None

        st = wait_until(excluded, 240, "silo-1 excluded",
                        lambda: f"{round_status(hub, 'oom')}\n{operator.tail()}")
        silo1 = st["silos"]["silo-1"]
        assert "OOMKilled: the container exceeded its memory limit" in silo1["reason"], silo1
        pods = items(hub, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D"
                          f"{silo1['job']}")
        ends = [cs["state"]["terminated"] for p in pods
                for cs in p["status"]["containerStatuses"]]
        assert ends and all(e["reason"] == "OOMKilled" and e["exitCode"] == 137
                            for e in ends), ends
        assert "OOMKilled" not in str(st["silos"]["silo-2"]), st["silos"]["silo-2"]
    finally:
        delete_training(hub, "oom")


@pytest.mark.faults
def test_an_image_the_registry_lacks_shows_imagepullbackoff_in_the_silos_status(
        hub, operator, tmp_path: Path, tiny_models):
    """silo-1 names a trainer image (on the operator's allow list) that the node's registry
    does not have: the kubelet reports ErrImagePull, then ImagePullBackOff, as a kubelet does
    (the process kubelet's node faults); the silo's status says so and the round is
    Degraded."""
    image = "ghcr.io/fedma/trainer:no-such-tag"
    manifest = one_round(tmp_path, tiny_models, "nopull")
    manifest["spec"]["silos"][0]["image"] = image
    with hub.node_faults(missingImages=[image]):
        apply(hub, manifest)
        try:
            def backoff():
                st = round_status(hub, "nopull")
                silo1 = (st.get("silos") or {}).get("silo-1") or {}
                return st if silo1.get("waiting", "").startswith("ImagePullBackOff") else None

            st = wait_until(backoff, 120, "silo-1 ImagePullBackOff",
                            lambda: f"{round_status(hub, 'nopull')}\n{operator.tail()}")
            assert image in st["silos"]["silo-1"]["waiting"], st["silos"]["silo-1"]
            conds = {c["type"]: c for c in st["conditions"]}
            assert conds["Degraded"]["status"] == "True", conds
            assert "silo-1 (ImagePullBackOff)" in conds["Degraded"]["message"], conds
        finally:
            delete_training(hub, "nopull")


@pytest.mark.faults
def test_a_silo_whose_pods_are_evicted_is_excluded_with_that_reason(
        hub, operator, tmp_path: Path, tiny_models):
    """The node evicts every pod of silo-1's Jobs for memory pressure (phase Failed, reason
    Evicted, as the kubelet's eviction manager writes it): the real Job controller fails each
    attempt, and the silo is excluded naming the eviction; silo-2 trains."""
    manifest = one_round(tmp_path, tiny_models, "evict")
    with hub.node_faults(evictJobs=["evict-r0001-silo-1-*"]):
        apply(hub, manifest)
        try:
            def excluded():
                st = round_status(hub, "evict")
                silo1 = (st.get("silos") or {}).get("silo-1") or {}
                return st if silo1.get("phase") == "Excluded" else None

            st = wait_until(excluded, 240, "silo-1 excluded",
                            lambda: f"{round_status(hub, 'evict')}\n{operator.tail()}")
            silo1 = st["silos"]["silo-1"]
            assert "Evicted: The node was low on resource: memory" in silo1["reason"], silo1
            assert int(silo1["attempts"]) >= 2, silo1  # each attempt evicted, then excluded
            assert "Evicted" not in str(st["silos"]["silo-2"]), st["silos"]["silo-2"]
        finally:
            delete_training(hub, "evict")


@pytest.mark.faults
def test_a_job_whose_pod_is_refused_shows_failedcreate_not_running(
        hub, operator, tmp_path: Path, tiny_models):
    """A ResourceQuota that admits no pod of one PriorityClass, and silo-1's pods in that class:
    the real Job controller's pod create is refused by the real quota admission (FailedCreate,
    in the Job's Events only), so the Job runs with no pod at all. Within the pod check the
    silo's status says so and where to look, and the round is Degraded, instead of "Running"
    until the deadline."""
    starved = "fedma-test-starved"
    apply(hub, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": starved}, "value": 10})
    apply(hub, {"apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": starved, "namespace": NAMESPACE},
                "spec": {"hard": {"pods": "0"}, "scopeSelector": {"matchExpressions": [
                    {"operator": "In", "scopeName": "PriorityClass", "values": [starved]}]}}})
    manifest = one_round(tmp_path, tiny_models, "refused")
    manifest["spec"]["silos"][0]["pod"] = {"priorityClassName": starved}
    apply(hub, manifest)
    try:
        def refused():
            rnd = get(hub, fedma_path(NAMESPACE, "federatedrounds", "refused-r0001")) or {}
            st = rnd.get("status") or {}
            silo = (st.get("silos") or {}).get("silo-1") or {}
            return st if silo.get("waiting", "").startswith("FailedCreate") else None

        st = wait_until(refused, 90, "silo-1's FailedCreate", operator.tail)
        silo = st["silos"]["silo-1"]
        assert f"kubectl describe job {silo['job']}" in silo["waiting"], silo
        assert silo["phase"] == "Running"
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Degraded"]["status"] == "True", conds
        assert "silo-1 (FailedCreate)" in conds["Degraded"]["message"], conds
        assert not items(hub, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D"
                              f"{silo['job']}")  # truly no pod: the quota refused it
        assert "waiting" not in st["silos"]["silo-2"], st["silos"]["silo-2"]
    finally:
        delete_training(hub, "refused")
        hub.kubectl("-n", NAMESPACE, "delete", "resourcequota", starved)
        hub.kubectl("delete", "priorityclass", starved)
