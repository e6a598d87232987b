"""No borrowed rights, on the real control plane: a tenant who may create FederatedTrainings
or FederatedRounds cannot make the operator run a Job in a namespace the operator was not
configured for, run an image off its allow-list, or read a kubeconfig Secret outside the
object's own namespace. The hub is installed with ``siloNamespaces: [fedma-local-silo]`` and
``allowedImages: [ghcr.io/fedma/]`` (tests/kube/conftest.py); the pure rules are in
tests/security/test_tenancy.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import training_manifest
from tests.kube.deployed import NAMESPACE, OPERATOR_USER
from tests.kube.waiting import apply, fedma_path, finished_training, get, items, phase, wait_until

pytestmark = [pytest.mark.kube, pytest.mark.faults]


def jobs_in(hub, namespace: str) -> list[dict]:
    return items(hub, f"/apis/batch/v1/namespaces/{namespace}/jobs")


def test_a_training_that_names_a_foreign_namespace_or_image_is_refused_before_any_round(
        hub, operator, tmp_path: Path, tiny_models):
    manifest = training_manifest(tmp_path, tiny_models, silos=2, rounds=1)
    manifest["metadata"].update(name="borrow", namespace=NAMESPACE)
    manifest["spec"]["silos"][0]["namespace"] = "kube-system"
    manifest["spec"]["silos"][1]["image"] = "docker.io/someone/else:1"
    apply(hub, manifest)
    obj = finished_training(hub, "borrow", operator, timeout=60)
    st = obj["status"]
    assert st["phase"] == "Failed", st
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Succeeded"]["reason"] == "NotPermitted", conds
    assert st["message"].startswith("spec.silos[0].namespace: "), st
    assert "'kube-system'" in st["message"], st
    assert "spec.silos[1].image" in st["message"], st
    assert "docker.io/someone/else:1" in st["message"], st
    assert not [r for r in items(hub, fedma_path(NAMESPACE, "federatedrounds"))
                if r["spec"].get("trainingName") == "borrow"]
    events = items(hub, f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector="
                        "involvedObject.name%3Dborrow")
    assert any(e.get("reason") == "NotPermitted" for e in events), events
    assert not jobs_in(hub, "kube-system")


def test_a_hand_made_round_is_held_to_the_same_rules(hub, operator, tmp_path: Path,
                                                    tiny_models):
    """A FederatedRound is an API of its own (a tenant may create one without a training):
    the operator checks it before it launches anything."""
    manifest = training_manifest(tmp_path, tiny_models, silos=2, rounds=1)
    spec = manifest["spec"]
    rnd = {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedRound",
           "metadata": {"name": "borrow-by-hand", "namespace": NAMESPACE},
           "spec": {"trainingName": "borrow-by-hand", "round": 1, "totalRounds": 1,
                    **{k: spec[k] for k in ("model", "silos", "training", "aggregation",
                                            "artifacts")}}}
    rnd["spec"]["silos"][1]["namespace"] = "default"
    apply(hub, rnd)
    obj = wait_until(lambda: (lambda o: o if phase(o) == "Failed" else None)(
        get(hub, fedma_path(NAMESPACE, "federatedrounds", "borrow-by-hand"))), 60,
        "the round Failed", operator.tail)
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conds["Succeeded"]["reason"] == "NotPermitted", conds
    assert "spec.silos[1].namespace" in obj["status"]["message"], obj["status"]
    assert not jobs_in(hub, "default")
    assert not [j for j in jobs_in(hub, NAMESPACE)
                if j["metadata"].get("labels", {}).get("fedma.io/training") == "borrow-by-hand"]


def test_a_kubeconfig_secret_is_read_from_the_objects_own_namespace_only(
        hub, operator, tmp_path: Path, tiny_models):
    """A training in another namespace naming a Secret that exists only in the operator's
    namespace does not get it: the operator asks for ``<own namespace>/<name>`` and the silo
    fails naming that."""
    ns = "tenancy-other"
    secret = "hub-only-kubeconfig"
    hub.kubectl("create", "namespace", ns)
    hub.kubectl("-n", NAMESPACE, "create", "secret", "generic", secret,
                "--from-literal=kubeconfig=apiVersion: v1")
    try:
        manifest = training_manifest(tmp_path, tiny_models, silos=1, rounds=1)
        manifest["metadata"].update(name="borrow-secret", namespace=ns)
        manifest["spec"].pop("evaluation")
        manifest["spec"]["silos"][0]["kubeconfigSecret"] = secret
        manifest["spec"]["aggregation"]["deadlineSeconds"] = 20
        apply(hub, manifest)
        want = f"Secret {ns}/{secret}"

        def refused():
            rnd = get(hub, fedma_path(ns, "federatedrounds", "borrow-secret-r0001"))
            text = json.dumps((rnd or {}).get("status") or {})
            return text if want in text else None

        text = wait_until(refused, 90, f"the round to name {want}", operator.tail)
        assert f"{NAMESPACE}/{secret}" not in text
        reads = [e["objectRef"] for e in hub.audit()
                 if e.get("user", {}).get("username") == OPERATOR_USER
                 and (e.get("objectRef") or {}).get("resource") == "secrets"
                 and (e.get("objectRef") or {}).get("name") == secret]
        assert reads, "the operator never asked for the Secret"
        assert {r.get("namespace") for r in reads} == {ns}, reads
        assert not jobs_in(hub, ns)
    finally:
        hub.kubectl("delete", "namespace", ns, "--wait=false")
        hub.kubectl("-n", NAMESPACE, "delete", "secret", secret)
