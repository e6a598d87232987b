"""A federation on the real control plane: the operator as deployed, real Jobs, real training.

The hub's Job controller and garbage collector are kube-controller-manager's; pods run as
local processes through the process kubelet (the only stand-in), so ``fedma train-silo`` and
``fedma aggregate`` run for real, on CPU with the tiny models, over a file:// store.
"""

from __future__ import annotations

import urllib.request

import pytest

from fedma.store import Store, global_rel
from tests.conftest import training_manifest
from tests.kube.conftest import HUB_SILO_NAMESPACE
from tests.kube.deployed import NAMESPACE
from tests.kube.waiting import apply, fedma_path, finished_training, get, items, wait_until

pytestmark = [pytest.mark.kube]


def test_the_crds_are_accepted_by_the_apiserver(hub):
    out = hub.kubectl("apply", "--dry-run=server", "-f", "crds/")
    assert "federatedrounds.fedma.io" in out.stdout
    for plural in ("federatedrounds", "federatedtrainings"):
        crd = get(hub, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}."
                       "fedma.io")
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds["Established"] == "True" and conds.get("NonStructuralSchema") is None
    # A typed status: `kubectl explain` documents it (from the apiserver's OpenAPI).
    out = hub.kubectl("explain", "federatedround.status.silos").stdout
    assert "per silo: phase" in out, out
    out = hub.kubectl("explain", "federatedtraining.status.history").stdout
    assert "the newest 50 completed rounds" in out, out


def test_the_operator_starts_with_only_its_service_account(hub, operator):
    def healthy():
        if not operator.alive():
            raise AssertionError("fedma-operator exited:\n" + operator.tail())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz",
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(healthy, 60, "the operator's /healthz", operator.tail)
    assert "Ran out of valid credentials" not in operator.log.read_text()


def test_two_round_federation_runs_on_the_real_control_plane(hub, operator, tmp_path,
                                                             tiny_models):
    manifest = training_manifest(tmp_path, tiny_models, silos=2, rounds=2)
    manifest["metadata"].update(name="fed2", namespace=NAMESPACE)
    manifest["spec"].pop("evaluation")
    apply(hub, manifest, "--validate=strict")
    obj = finished_training(hub, "fed2", operator)
    st = obj["status"]
    assert st["phase"] == "Succeeded", st
    store = Store(manifest["spec"]["artifacts"]["uri"])
    for h in st["history"]:
        m = store.get_manifest(global_rel("fed2", h["round"]))
        assert h["output"]["digest"] == m["sha256"]
        assert h["silosIncluded"] == 2 and m["included"] == ["silo-1", "silo-2"]
        assert h["silosExcluded"] == 0 and h["excluded"] == []
    r2 = get(hub, fedma_path(NAMESPACE, "federatedrounds", "fed2-r0002"))
    assert r2["spec"]["input"]["digest"] == st["history"][0]["output"]["digest"]
    assert r2["status"]["silosDone"] == "2/2"
    silo = r2["status"]["silos"]["silo-1"]
    assert store.get_manifest(store.rel(silo["update"]["uri"]))["sha256"] == \
        silo["update"]["digest"]
    # Jobs: each created once, owned by its round, completed by the real Job controller.
    jobs = [j for j in items(hub, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
            if j["metadata"]["labels"].get("fedma.io/training") == "fed2"]
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(
        f"fed2-r000{r}-{s}" for r in (1, 2) for s in ("silo-1-a1", "silo-2-a1", "aggregate"))
    for j in jobs:
        (owner,) = j["metadata"]["ownerReferences"]
        assert owner["kind"] == "FederatedRound" and owner["name"] == j["metadata"]["labels"][
            "fedma.io/round-name"]
        assert any(c["type"] == "Complete" for c in j["status"]["conditions"])
    # The Events the operator posted, and the printer columns users see.
    reasons = {e["reason"] for e in items(hub, f"/api/v1/namespaces/{NAMESPACE}/events")
               if e["involvedObject"]["name"].startswith("fed2")}
    assert {"SiloJobCreated", "AggregationJobCreated"} <= reasons, reasons
    table = hub.kubectl("-n", NAMESPACE, "get", "ft,fr", "-l", "fedma.io/training=fed2").stdout
    assert "fed2-r0002" in table and "2/2" in table and "Succeeded" in table, table
    # Deleting the training deletes its rounds and their Jobs (the real garbage collector).
    hub.kubectl("-n", NAMESPACE, "delete", "federatedtraining", "fed2", "--wait=true",
                "--cascade=foreground", "--timeout=60s")

    def gone():
        left = [j for j in items(hub, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
                if j["metadata"]["labels"].get("fedma.io/training") == "fed2"]
        return not left and not items(hub, fedma_path(NAMESPACE, "federatedrounds"))
    wait_until(gone, 60, "the garbage collector to delete rounds and Jobs")


def test_a_finished_training_is_extended_and_another_starts_from_its_projector(
        hub, operator, tmp_path, tiny_models):
    """Raising spec.rounds of a Succeeded training runs the further rounds (a new pass over
    the data, from the last output); spec.initialProjector starts a new training from it."""
    manifest = training_manifest(tmp_path, tiny_models, silos=2, rounds=1, n=16)
    manifest["metadata"].update(name="ext", namespace=NAMESPACE)
    manifest["spec"].pop("evaluation")
    apply(hub, manifest)
    first = finished_training(hub, "ext", operator)["status"]
    assert first["phase"] == "Succeeded" and first["completedRounds"] == 1, first
    hub.kubectl("-n", NAMESPACE, "patch", "federatedtraining", "ext", "--type=merge", "-p",
                '{"spec": {"rounds": 2}}')

    def two_done():
        obj = get(hub, fedma_path(NAMESPACE, "federatedtrainings", "ext"))
        st = (obj or {}).get("status") or {}
        return obj if st.get("phase") == "Succeeded" and st.get("completedRounds") == 2 else None

    st = wait_until(two_done, 300, "the extended training's round 2", operator.tail)["status"]
    assert st["passRounds"] == 1 and [h["round"] for h in st["history"]] == [1, 2]
    r2 = get(hub, fedma_path(NAMESPACE, "federatedrounds", "ext-r0002"))
    assert r2["spec"]["input"] == first["latest"]
    assert r2["spec"]["passRounds"] == 1 and r2["spec"]["totalRounds"] == 2
    reasons = [e["reason"] for e in items(hub, f"/api/v1/namespaces/{NAMESPACE}/events")
               if e["involvedObject"]["name"] == "ext"]
    assert "TrainingExtended" in reasons, reasons

    nxt = training_manifest(tmp_path, tiny_models, silos=2, rounds=1, n=16)
    nxt["metadata"].update(name="ext-next", namespace=NAMESPACE)
    nxt["spec"].pop("evaluation")
    nxt["spec"]["initialProjector"] = st["latest"]
    apply(hub, nxt, "--validate=strict")
    done = finished_training(hub, "ext-next", operator)["status"]
    assert done["phase"] == "Succeeded", done
    r1 = get(hub, fedma_path(NAMESPACE, "federatedrounds", "ext-next-r0001"))
    assert r1["spec"]["input"] == st["latest"]
    store = Store(manifest["spec"]["artifacts"]["uri"])
    assert store.get_manifest(global_rel("ext-next", 1))["base_digest"] == st["latest"]["digest"]
    assert not store.committed(global_rel("ext-next", 0))  # no seeded initialisation
    for name in ("ext", "ext-next"):
        hub.kubectl("-n", NAMESPACE, "delete", "federatedtraining", name, "--wait=true")


def test_a_silo_in_another_namespace_keeps_its_job(hub, operator, tmp_path, tiny_models):
    """A hub silo Job in another namespace than its round gets no ownerReference: the garbage
    collector would treat the cross-namespace owner as absent and delete the Job."""
    manifest = training_manifest(tmp_path, tiny_models, silos=2, rounds=1)
    manifest["metadata"].update(name="xns", namespace=NAMESPACE)
    manifest["spec"].pop("evaluation")
    manifest["spec"]["silos"][1]["namespace"] = HUB_SILO_NAMESPACE
    apply(hub, manifest)
    obj = finished_training(hub, "xns", operator)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    (job,) = items(hub, f"/apis/batch/v1/namespaces/{HUB_SILO_NAMESPACE}/jobs?labelSelector="
                        "fedma.io/training%3Dxns")
    assert not job["metadata"].get("ownerReferences")
    events = [e for e in items(hub, f"/api/v1/namespaces/{HUB_SILO_NAMESPACE}/events")
              if e.get("reason") == "OwnerRefInvalidNamespace"]
    assert not events, events
    hub.kubectl("-n", NAMESPACE, "delete", "federatedtraining", "xns", "--wait=true")
