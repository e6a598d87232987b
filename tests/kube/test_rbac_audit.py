"""Least privilege, proven on the real apiserver: the operator's requests come from the audit
log, not from an emulator's record.

Runs after the other kube suites (file order), so the log holds every request the operator
made in them. Every request was allowed by the chart's RBAC alone (the operator has no other
identity), and with the whole kube suite run, every verb the chart grants was used, except the
finalizer rights that admission checks without a request of their own (proven needed below).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.conftest import SILO_NAMESPACE
from tests.kube.deployed import (
    ADMISSION_ONLY,
    NAMESPACE,
    OPERATOR_USER,
    RELEASE,
    service_account_kubeconfig,
)

pytestmark = [pytest.mark.kube]
Grant = tuple[str, str, str]
# The tests whose operator requests use the verbs no other test needs (a Secret read for a
# silo cluster, a Job deleted): without them the "never used" check cannot be made.
EXERCISING = {"test_a_straggler_is_excluded_at_the_deadline_and_its_job_deleted",
              "test_a_silo_in_its_own_cluster_trains_there",
              "test_two_round_federation_runs_on_the_real_control_plane"}


def requests_of(cp, username: str) -> list[dict[str, Any]]:
    return [e for e in cp.audit() if e.get("user", {}).get("username") == username
            and e.get("objectRef")]


def denied(cp, events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Requests RBAC refused (the audit record's authorization decision is "forbid"; a 403
    from admission, e.g. a create in a namespace being deleted, was authorized). Left out:
    those while the apiserver restarted (test_lifecycle restarts the hub's): a fresh apiserver
    authorizes before its RBAC cache has synced and refuses for a moment what the chart
    grants; the operator retries."""
    out = []
    for e in events:
        decision = (e.get("annotations") or {}).get("authorization.k8s.io/decision")
        if (e.get("responseStatus") or {}).get("code") != 403 or decision != "forbid":
            continue
        at = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if not cp.restarting(at.timestamp()):
            out.append((e["verb"], e["requestURI"]))
    return out


def used(events: list[dict[str, Any]]) -> set[Grant]:
    out = set()
    for e in events:
        ref = e["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((e["verb"], ref.get("apiGroup", ""), resource))
    return out


def grants(docs: list[dict[str, Any]], kinds: tuple[str, ...]) -> set[Grant]:
    return {(v, g, r) for d in docs if d and d["kind"] in kinds for rule in d["rules"]
            for v in rule["verbs"] for g in rule["apiGroups"] for r in rule["resources"]}


def manifest(cp, release: str, namespace: str) -> list[dict[str, Any]]:
    out = cp.helm("get", "manifest", release, "-n", namespace).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def whole_suite(request) -> bool:
    names = {item.name for item in request.session.items}
    return names >= EXERCISING


def test_every_operator_request_on_the_hub_was_allowed_and_every_grant_used(hub, request):
    events = requests_of(hub, OPERATOR_USER)
    assert events, "the audit log has no request of the operator's ServiceAccount"
    assert not denied(hub, events), denied(hub, events)
    granted = grants(manifest(hub, RELEASE, NAMESPACE), ("ClusterRole", "Role"))
    calls = used(events)
    assert calls <= granted, calls - granted
    if whole_suite(request):
        assert granted - ADMISSION_ONLY == calls, (granted - ADMISSION_ONLY) ^ calls


def test_every_request_in_a_silo_cluster_was_allowed_by_the_silo_role(hub, silo, request):
    user = f"system:serviceaccount:{SILO_NAMESPACE}:fedma-hub"
    events = requests_of(silo, user)
    if not whole_suite(request):
        return
    assert events, "no request of the hub's identity reached the silo cluster"
    assert not denied(silo, events), denied(silo, events)
    (role,) = [d for d in manifest(silo, "fedma-silo", SILO_NAMESPACE) if d["kind"] == "Role"]
    granted = grants([role], ("Role",))
    assert used(events) <= granted
    # The Role is the operator's namespaced Job, pod and round-file verbs, as used on the hub
    # (one code path for every cluster; deleting a remote straggler's Job included).
    on_hub = {g for g in used(requests_of(hub, OPERATOR_USER))
              if g[2] in ("jobs", "pods", "configmaps")} - {("watch", "batch", "jobs")}
    assert granted == on_hub, granted ^ on_hub


def _job_owned_by(owner: dict[str, Any], namespace: str) -> str:
    return json.dumps({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "probe", "namespace": namespace, "ownerReferences": [{
            "apiVersion": "fedma.io/v1alpha1", "kind": "FederatedRound",
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "x", "command": ["true"]}]}}}})


def test_blocking_owner_deletion_needs_the_finalizers_rule(hub, operator, tmp_path: Path):
    """OwnerReferencesPermissionEnforcement: a Job owned by a round with blockOwnerDeletion is
    refused to an identity without ``update`` on ``federatedrounds/finalizers``."""
    ns = "rbac-probe"
    hub.kubectl("create", "namespace", ns)
    try:
        rnd = {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedRound",
               "metadata": {"name": "owner", "namespace": ns},
               "spec": {"trainingName": "probe", "round": 1, "totalRounds": 1,
                        "model": {"vision": {"path": "/m/v"}, "languageModel": {"path": "/m/l"}},
                        "silos": [{"name": "s", "data": {"path": "/d.jsonl"}}],
                        "artifacts": {"uri": "file:///tmp/none"}}}
        out = hub.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(rnd))
        owner = json.loads(out.stdout)
        (role,) = [d for d in manifest(hub, RELEASE, NAMESPACE) if d["kind"] == "ClusterRole"
                   and any("federatedrounds" in r["resources"] for r in d["rules"])]
        stripped = {**role, "metadata": {"name": "fedma-operator-no-finalizers"},
                    "rules": [r for r in role["rules"]
                              if not any(x.endswith("/finalizers") for x in r["resources"])]}
        assert stripped["rules"] != role["rules"]
        hub.kubectl("apply", "-f", "-", input=json.dumps(stripped))
        hub.kubectl("-n", ns, "create", "serviceaccount", "no-finalizers")
        hub.kubectl("-n", ns, "create", "rolebinding", "no-finalizers",
                    "--clusterrole=fedma-operator-no-finalizers",
                    f"--serviceaccount={ns}:no-finalizers")
        weak = service_account_kubeconfig(hub, ns, "no-finalizers", tmp_path / "weak")
        strong = service_account_kubeconfig(hub, NAMESPACE, "fedma-operator", tmp_path / "op")
        job = _job_owned_by(owner, ns)
        refused = hub.kubectl("create", "--dry-run=server", "-f", "-", input=job,
                              kubeconfig=weak, check=False)
        assert refused.returncode != 0
        assert "cannot set blockOwnerDeletion" in refused.stderr, refused.stderr
        hub.kubectl("create", "--dry-run=server", "-f", "-", input=job, kubeconfig=strong)
    finally:
        hub.kubectl("delete", "namespace", ns, "--wait=false")
        hub.kubectl("delete", "clusterrole", "fedma-operator-no-finalizers",
                    "--ignore-not-found")
