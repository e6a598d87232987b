"""Round lifecycles on the real control plane: retries, stragglers, quorum, operator restarts,
a silo in its own cluster. Failures are real: a silo process SIGKILLed or hung by the fault
injector (tests/faults/inject), Jobs failed and pods killed by the real Job controller.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import training_manifest
from tests.faults.conftest import INJECT
from tests.kube.blackhole import HangingProxy
from tests.kube.conftest import SILO_NAMESPACE
from tests.kube.deployed import NAMESPACE, OPERATOR_USER, silo_kubeconfig
from tests.kube.waiting import apply, fedma_path, finished_training, get, items, phase, wait_until

pytestmark = [pytest.mark.kube]


def one_round(tmp_path: Path, tiny_models, name: str, silos: int = 2, **aggregation):
    manifest = training_manifest(tmp_path, tiny_models, silos=silos, rounds=1)
    manifest["metadata"].update(name=name, namespace=NAMESPACE)
    manifest["spec"].pop("evaluation")
    manifest["spec"]["aggregation"].update(aggregation)
    return manifest


def round_status(hub, name: str) -> dict:
    return (get(hub, fedma_path(NAMESPACE, "federatedrounds", f"{name}-r0001")) or {}).get(
        "status") or {}


def jobs_of(cp, name: str, namespace: str = NAMESPACE) -> dict[str, dict]:
    return {j["metadata"]["name"]: j for j in items(
        cp, f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector=fedma.io/training%3D"
            f"{name}")}


def created_by_operator(cp, resource: str) -> collections.Counter:
    """How often the operator's identity got a 201 for creating each ``resource`` name."""
    out: collections.Counter = collections.Counter()
    for e in cp.audit():
        ref = e.get("objectRef") or {}
        if (e.get("verb") == "create" and ref.get("resource") == resource
                and e.get("user", {}).get("username") == OPERATOR_USER
                and (e.get("responseStatus") or {}).get("code") == 201):
            out[ref.get("name") or ""] += 1
    return out


def proxied_secret(hub, silo, tmp_path: Path, secret: str) -> HangingProxy:
    """A kubeconfig Secret ``secret`` on the hub for the silo cluster, through a proxy that
    can stop answering (blackhole.py)."""
    proxy = HangingProxy(("127.0.0.1", silo.port))
    cfg = yaml.safe_load(silo_kubeconfig(silo, "silo-a", SILO_NAMESPACE))
    cfg["clusters"][0]["cluster"]["server"] = proxy.address
    kubeconfig = tmp_path / f"{secret}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(cfg))
    hub.kubectl("-n", NAMESPACE, "create", "secret", "generic", secret,
                f"--from-file=kubeconfig={kubeconfig}")
    return proxy


def training_with_silos_running(hub, tmp_path: Path, tiny_models, name: str) -> None:
    """A 2-silo, 1-round training applied and both its silo Jobs created."""
    apply(hub, one_round(tmp_path, tiny_models, name))
    wait_until(lambda: len(jobs_of(hub, name)) == 2, 60, "both silo Jobs")


def delete_training(hub, name: str) -> None:
    hub.kubectl("-n", NAMESPACE, "delete", "federatedtraining", name, "--wait=true",
                "--timeout=60s")


@pytest.mark.faults
def test_a_killed_silo_is_retried_by_a_new_attempt_job(hub, operator, tmp_path, tiny_models):
    manifest = one_round(tmp_path, tiny_models, "retry", backoffLimit=1)
    marker = tmp_path / "killed"
    with hub.pod_env(PYTHONPATH=str(INJECT), FEDMA_FAULT=f"start:silo-1:{marker}"):
        apply(hub, manifest)
        obj = finished_training(hub, "retry", operator)
    assert marker.exists()
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    silo = round_status(hub, "retry")["silos"]["silo-1"]
    assert silo["attempts"] == 2 and silo["phase"] == "Succeeded", silo
    jobs = jobs_of(hub, "retry")
    first = {c["type"]: c for c in jobs["retry-r0001-silo-1-a1"]["status"]["conditions"]}
    assert first["Failed"]["reason"] == "BackoffLimitExceeded"  # the real Job controller's
    assert "Complete" in {c["type"] for c in jobs["retry-r0001-silo-1-a2"]["status"][
        "conditions"]}
    delete_training(hub, "retry")


@pytest.mark.faults
def test_a_straggler_is_excluded_at_the_deadline_and_its_job_deleted(hub, operator, tmp_path,
                                                                    tiny_models):
    """Attempt 1 of silo-3 dies, attempt 2 hangs: the round's deadline (from the round's
    start) comes before that Job's own activeDeadlineSeconds (from its start), so the operator
    must stop it: it holds accelerators."""
    manifest = one_round(tmp_path, tiny_models, "strag", silos=3, minSilos=2,
                         deadlineSeconds=40, backoffLimit=1)
    killed, hung = tmp_path / "killed", tmp_path / "hung"
    with hub.pod_env(PYTHONPATH=str(INJECT),
                     FEDMA_FAULT=f"start:silo-3:{killed};hang:silo-3:{hung}"):
        apply(hub, manifest)
        obj = finished_training(hub, "strag", operator, timeout=180)
    assert killed.exists() and hung.exists()
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    st = round_status(hub, "strag")
    assert st["silos"]["silo-3"]["phase"] == "Excluded"
    assert "deadline" in st["silos"]["silo-3"]["reason"]
    assert sorted(st["aggregation"]["included"]) == ["silo-1", "silo-2"]
    # The operator deleted the hung attempt's Job; the pod's process is gone with it.
    wait_until(lambda: "strag-r0001-silo-3-a2" not in jobs_of(hub, "strag"), 60,
               "the straggler's Job to be deleted")
    wait_until(lambda: not items(hub, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector="
                                      "fedma.io/silo%3Dsilo-3,fedma.io/attempt%3D2,"
                                      "fedma.io/training%3Dstrag"),
               60, "the hung attempt's pod to go")
    deletes = [e for e in hub.audit() if e.get("verb") == "delete"
               and (e.get("objectRef") or {}).get("name") == "strag-r0001-silo-3-a2"]
    assert {e["user"]["username"] for e in deletes} >= {OPERATOR_USER}
    delete_training(hub, "strag")


@pytest.mark.faults
def test_the_operator_killed_mid_round_resumes_without_a_duplicate_job(hub, operator, tmp_path,
                                                                      tiny_models):
    training_with_silos_running(hub, tmp_path, tiny_models, "kill9")
    operator.kill()  # kill -9 while the silos train
    time.sleep(2)
    operator.start()
    obj = finished_training(hub, "kill9", operator)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    created = created_by_operator(hub, "jobs")
    mine = {k: v for k, v in created.items() if k.startswith("kill9-")}
    assert mine == {"kill9-r0001-silo-1-a1": 1, "kill9-r0001-silo-2-a1": 1,
                    "kill9-r0001-aggregate": 1}, mine
    assert sorted(round_status(hub, "kill9")["aggregation"]["included"]) == ["silo-1", "silo-2"]
    delete_training(hub, "kill9")


def test_a_silo_in_its_own_cluster_trains_there(hub, silo, operator, tmp_path, tiny_models):
    manifest = one_round(tmp_path, tiny_models, "multi")
    manifest["spec"]["silos"][1].update(kubeconfigSecret="silo-a-kubeconfig",
                                        namespace=SILO_NAMESPACE)
    apply(hub, manifest)
    obj = finished_training(hub, "multi", operator)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    remote = jobs_of(silo, "multi", SILO_NAMESPACE)
    assert list(remote) == ["multi-r0001-silo-2-a1"]
    (job,) = remote.values()
    assert not job["metadata"].get("ownerReferences")  # no owner across clusters
    assert "Complete" in {c["type"] for c in job["status"]["conditions"]}
    st = round_status(hub, "multi")
    assert st["silos"]["silo-2"]["cluster"] == "secret:silo-a-kubeconfig"
    delete_training(hub, "multi")


@pytest.mark.faults
def test_a_stopped_silo_apiserver_excludes_its_silo_after_the_grace(hub, silo, operator,
                                                                   tmp_path, tiny_models):
    manifest = one_round(tmp_path, tiny_models, "down", minSilos=1)
    manifest["spec"]["silos"][1].update(kubeconfigSecret="silo-a-kubeconfig",
                                        namespace=SILO_NAMESPACE)
    marker = tmp_path / "hung"
    # The remote silo hangs, so its apiserver goes away while its Job is still running.
    with silo.pod_env(PYTHONPATH=str(INJECT), FEDMA_FAULT=f"hang:silo-2:{marker}"):
        apply(hub, manifest)
        wait_until(marker.exists, 90, "the remote silo to start")
    silo.stop_apiserver()
    try:
        obj = finished_training(hub, "down", operator, timeout=180)
        st = round_status(hub, "down")
    finally:
        silo.restart_apiserver()
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert st["silos"]["silo-2"]["phase"] == "Excluded", st["silos"]["silo-2"]
    # After the grace the attempt counts as failed; the retry cannot reach the cluster either.
    assert "silo-a-kubeconfig" in st["silos"]["silo-2"]["reason"], st["silos"]["silo-2"]
    assert st["aggregation"]["included"] == {"silo-1": st["silos"]["silo-1"]["update"]["digest"]}
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Degraded"]["status"] == "True", conds
    assert conds["Degraded"]["message"] == "excluded: silo-2", conds
    mirrored = {c["type"]: c for c in obj["status"]["conditions"]}
    assert mirrored["Degraded"]["status"] == "True", mirrored
    delete_training(hub, "down")


@pytest.mark.faults
def test_a_silo_endpoint_that_never_answers_is_excluded_after_the_grace(
        hub, silo, operator, tmp_path, tiny_models):
    """The silo cluster's endpoint keeps accepting connections but stops answering (a proxy
    in front of its apiserver holds every byte): each call costs the operator's API timeout,
    then the grace and the exclusion run as for a refused connection."""
    proxy = proxied_secret(hub, silo, tmp_path, "silo-a-proxied")
    manifest = one_round(tmp_path, tiny_models, "mute", minSilos=1)
    manifest["spec"]["silos"][1].update(kubeconfigSecret="silo-a-proxied",
                                        namespace=SILO_NAMESPACE)
    marker = tmp_path / "hung"
    try:
        with silo.pod_env(PYTHONPATH=str(INJECT), FEDMA_FAULT=f"hang:silo-2:{marker}"):
            apply(hub, manifest)
            wait_until(marker.exists, 90, "the remote silo to start")
        assert proxy.accepted >= 1  # the operator reached the silo cluster through the proxy
        proxy.hang()
        obj = finished_training(hub, "mute", operator, timeout=180)
        st = round_status(hub, "mute")
    finally:
        proxy.close()
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    remote = st["silos"]["silo-2"]
    assert remote["phase"] == "Excluded", remote
    assert "no answer within" in remote["reason"], remote
    assert st["aggregation"]["included"] == {"silo-1": st["silos"]["silo-1"]["update"]["digest"]}
    delete_training(hub, "mute")
    hub.kubectl("-n", NAMESPACE, "delete", "secret", "silo-a-proxied")


@pytest.mark.faults
def test_the_hub_apiserver_restarted_mid_round_costs_nothing(hub, operator, tmp_path,
                                                            tiny_models):
    training_with_silos_running(hub, tmp_path, tiny_models, "hubdown")
    hub.stop_apiserver()
    time.sleep(3)
    hub.restart_apiserver()
    obj = finished_training(hub, "hubdown", operator)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert operator.alive()
    created = {k: v for k, v in created_by_operator(hub, "jobs").items()
               if k.startswith("hubdown-")}
    assert set(created.values()) == {1} and len(created) == 3, created
    delete_training(hub, "hubdown")
    assert phase(obj) == "Succeeded"


def events_of(cp, reason: str) -> list[dict]:
    return items(cp, f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=reason%3D{reason}")


@pytest.mark.faults
def test_a_job_left_by_an_earlier_run_of_the_same_name_is_not_adopted(hub, operator, tmp_path,
                                                                     tiny_models):
    """A finished Job of the name the round's first attempt would have, labelled as an
    earlier round object's (another uid): the create's 409 is a conflict, not an adoption.
    That attempt fails naming the Job, the retry trains under a new name, and the earlier
    Job is left as it was."""
    stale = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": "again-r0001-silo-1-a1", "namespace": NAMESPACE, "labels": {
            "app.kubernetes.io/managed-by": "fedma-operator", "fedma.io/training": "again",
            "fedma.io/round": "1", "fedma.io/round-name": "again-r0001",
            "fedma.io/round-namespace": NAMESPACE, "fedma.io/role": "silo",
            "fedma.io/silo": "silo-1", "fedma.io/attempt": "1",
            "fedma.io/round-uid": "00000000-0000-0000-0000-000000000000"}},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}}
    apply(hub, stale)
    path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/again-r0001-silo-1-a1"
    # The Job controller marks a suspended Job ``Suspended`` (one status write of its own);
    # the version compared below is the one after that write, so only others' writes count.
    before = wait_until(lambda: (j := get(hub, path)) and any(
        c["type"] == "Suspended" for c in j.get("status", {}).get("conditions") or []) and j,
        60, "the Job controller to mark the stale Job Suspended")
    apply(hub, one_round(tmp_path, tiny_models, "again", silos=1, backoffLimit=1))
    obj = finished_training(hub, "again", operator)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    entry = round_status(hub, "again")["silos"]["silo-1"]
    assert entry["attempts"] == 2 and entry["job"] == "again-r0001-silo-1-a2", entry
    (conflict,) = [e for e in events_of(hub, "JobConflict")
                   if "again-r0001-silo-1-a1" in e["message"]]
    assert "not this round's" in conflict["message"], conflict
    after = get(hub, path)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    delete_training(hub, "again")
    hub.kubectl("-n", NAMESPACE, "delete", "job", "again-r0001-silo-1-a1")


@pytest.mark.faults
def test_a_round_not_owned_by_the_training_is_not_adopted(hub, operator, tmp_path,
                                                         tiny_models):
    """A FederatedRound of the name a training's round 1 would have, but not the training's
    (here hand-made, as one left by an earlier training deleted with orphaned rounds): the
    training waits, saying why, instead of taking that round's results as its own."""
    manifest = one_round(tmp_path, tiny_models, "owned", silos=1)
    spec = {k: v for k, v in manifest["spec"].items() if k != "rounds"}
    # Its silo's cluster Secret does not exist: the stray round fails at once, trains nothing.
    spec["silos"][0]["kubeconfigSecret"] = "no-such-secret"
    apply(hub, {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedRound",
                "metadata": {"name": "owned-r0001", "namespace": NAMESPACE},
                "spec": {**spec, "trainingName": "owned", "round": 1, "totalRounds": 1}})
    apply(hub, manifest)
    training = fedma_path(NAMESPACE, "federatedtrainings", "owned")
    obj = wait_until(lambda: (o := get(hub, training)) and "not this training's" in (
        o.get("status") or {}).get("message", "") and o, 60, "the training to see the conflict")
    assert obj["status"]["phase"] == "Running" and obj["status"]["completedRounds"] == 0
    assert any("owned-r0001" in e["message"] for e in events_of(hub, "RoundConflict"))
    hub.kubectl("-n", NAMESPACE, "delete", "federatedtraining", "owned", "--wait=true")
    hub.kubectl("-n", NAMESPACE, "delete", "federatedround", "owned-r0001", "--wait=true")
