"""Kueue on the real control plane: the real Kueue controller and scheduler, built from its Go
module, with its admission webhooks registered (tests/kube/kueue.py), admits fedma's silo Jobs
from a LocalQueue. What is shown: silo Jobs are created suspended in the queue, wait there as
``Queued`` while the quota is held by other work, run when Kueue admits them, and a silo's
deadline counts from its admission, not from the round's start."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.faults.conftest import INJECT
from tests.kube.deployed import NAMESPACE
from tests.kube.kueue import start_kueue
from tests.kube.test_lifecycle import delete_training, jobs_of, one_round, round_status
from tests.kube.waiting import apply, finished_training, get, items, wait_until

pytestmark = [pytest.mark.kube]
QUEUE, CLUSTER_QUEUE, FLAVOR = "fedma-queue", "fedma-cq", "default-flavor"
KUEUE = "kueue.x-k8s.io/v1beta2"
SILO_RESOURCES = {"cpu": "1", "memory": "1Gi"}


def _kueue_path(resource: str, namespace: str | None = None) -> str:
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/{KUEUE}{ns}/{resource}"


@pytest.fixture(scope="module")
def kueue(hub, tmp_path_factory):
    k = start_kueue(hub, tmp_path_factory.mktemp("kueue"))
    try:
        # Room for two silos at once (2 CPUs), and nothing else; Kueue's webhooks check these.
        apply(hub, {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}})
        apply(hub, {"apiVersion": KUEUE, "kind": "ClusterQueue",
                    "metadata": {"name": CLUSTER_QUEUE},
                    "spec": {"namespaceSelector": {}, "resourceGroups": [{
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [{"name": FLAVOR, "resources": [
                            {"name": "cpu", "nominalQuota": "2"},
                            {"name": "memory", "nominalQuota": "4Gi"}]}]}]}})
        apply(hub, {"apiVersion": KUEUE, "kind": "LocalQueue",
                    "metadata": {"name": QUEUE, "namespace": NAMESPACE},
                    "spec": {"clusterQueue": CLUSTER_QUEUE}})
        yield k
    finally:
        k.stop()


def blocker(name: str) -> dict:
    """A Job in the same queue that holds the whole quota while it runs (``sleep``)."""
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
            "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "serviceAccountName": "fedma-trainer",
                "automountServiceAccountToken": False,
                "containers": [{"name": "hold", "image": "busybox", "command": ["sleep", "600"],
                                "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]}}}}


def _job(hub, name: str) -> dict:
    return get(hub, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}") or {}


def _t(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_silos_wait_queued_then_run_with_their_deadline_counted_from_admission(
        hub, operator, kueue, tmp_path: Path, tiny_models):
    deadline_s, hold_s, slow_s = 45, 25, 30
    apply(hub, blocker("hold-quota"))
    wait_until(lambda: _job(hub, "hold-quota").get("spec", {}).get("suspend") is False, 60,
               "Kueue to admit the blocker", kueue.tail)

    manifest = one_round(tmp_path, tiny_models, "queued", deadlineSeconds=deadline_s)
    for silo in manifest["spec"]["silos"]:
        silo.update(queueName=QUEUE, resources=SILO_RESOURCES)
    marker = tmp_path / "slow.marker"
    with hub.pod_env(PYTHONPATH=str(INJECT), FEDMA_FAULT=f"slow:silo-1:{marker}",
                     FEDMA_FAULT_SLOW_S=str(slow_s)):
        apply(hub, manifest)

        def both_queued():
            st = round_status(hub, "queued")
            silos = st.get("silos") or {}
            return st if [silos.get(s, {}).get("phase") for s in ("silo-1", "silo-2")] == [
                "Queued", "Queued"] else None

        st = wait_until(both_queued, 90, "both silos Queued", operator.tail)
        created = time.monotonic()
        started = _t(st["startTime"])
        found = jobs_of(hub, "queued")
        assert len(found) == 2, found
        for job in found.values():
            assert job["spec"]["suspend"] is True, job["spec"]
            assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
        workloads = items(hub, _kueue_path("workloads", NAMESPACE))
        owners = {ref["name"] for w in workloads for ref in w["metadata"].get(
            "ownerReferences") or []}
        assert set(found) <= owners, (sorted(owners), kueue.tail())  # Kueue saw them

        # The quota is held past most of the round's deadline, then freed.
        time.sleep(max(0.0, hold_s - (time.monotonic() - created)))
        assert round_status(hub, "queued")["silos"]["silo-1"]["phase"] == "Queued"
        hub.kubectl("-n", NAMESPACE, "delete", "job", "hold-quota",
                    "--cascade=background", "--wait=false")
        t = finished_training(hub, "queued", operator, 240)
    st = round_status(hub, "queued")
    assert t["status"]["phase"] == "Succeeded", (st, kueue.tail())
    assert marker.exists()  # silo-1 really took its time
    for silo in ("silo-1", "silo-2"):
        entry = st["silos"][silo]
        assert entry["phase"] == "Succeeded", entry
        admitted = _t(entry["admittedAt"])
        assert (admitted - started).total_seconds() >= hold_s - 5, (entry, st["startTime"])
    # silo-1 finished after the round's own deadline had passed (it was admitted at ~25 s and
    # slept 30 s): counted from the round's start it would have been a straggler.
    done = _t(_job(hub, st["silos"]["silo-1"]["job"])["status"]["completionTime"])
    assert (done - started).total_seconds() > deadline_s, (done, started)
    delete_training(hub, "queued")


def test_a_silo_its_queue_never_admits_is_excluded_at_the_deadline(
        hub, operator, kueue, tmp_path: Path, tiny_models):
    """A LocalQueue with no ClusterQueue behind it admits nothing: the silo waits Queued for
    the deadline, then is excluded with that reason; the round goes on by quorum."""
    apply(hub, {"apiVersion": KUEUE, "kind": "LocalQueue",
                "metadata": {"name": "nowhere", "namespace": NAMESPACE},
                "spec": {"clusterQueue": "no-such-cluster-queue"}})
    manifest = one_round(tmp_path, tiny_models, "neveradmitted", deadlineSeconds=25,
                         minSilos=1)
    manifest["spec"]["silos"][1].update(queueName="nowhere", resources=SILO_RESOURCES)
    apply(hub, manifest)
    t = finished_training(hub, "neveradmitted", operator, 180)
    st = round_status(hub, "neveradmitted")
    assert t["status"]["phase"] == "Succeeded", st
    entry = st["silos"]["silo-2"]
    assert entry["phase"] == "Excluded", entry
    assert "not admitted by its queue" in entry["reason"], entry
    assert st["silos"]["silo-1"]["phase"] == "Succeeded"
    assert not [j for j in jobs_of(hub, "neveradmitted").values()
                if j["metadata"]["labels"].get("fedma.io/silo") == "silo-2"
                and not j["metadata"].get("deletionTimestamp")], "its queued Job was deleted"
    delete_training(hub, "neveradmitted")
