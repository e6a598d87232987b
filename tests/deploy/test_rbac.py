"""Least privilege: the chart grants exactly the API calls the operator makes.

tests/artifacts/api-calls.json is written by a full, passing run of tests/operator (every
request the operator sent to the hub's and to a silo's API server). A verb used there and not
granted here breaks the operator in a real cluster; one granted and unused is a privilege too
many. Either fails this test."""

from __future__ import annotations

from typing import Any

from tests.deploy.conftest import NAMESPACE, api_calls, by_kind, render
from tests.kube.deployed import ADMISSION_ONLY

Grant = tuple[str, str, str]  # (verb, apiGroup, resource)


def _grants(roles: list[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            out |= {(v, g, r) for v in rule["verbs"] for g in rule["apiGroups"]
                    for r in rule["resources"]}
    return out


def _used(cluster: str) -> set[Grant]:
    used = {(c["verb"], c["group"], c["resource"]) for c in api_calls()
            if c["cluster"] == cluster}
    return used | ADMISSION_ONLY if cluster == "hub" else used


def test_the_record_covers_both_clusters():
    assert ("create", "batch", "jobs") in _used("hub")
    assert ("create", "batch", "jobs") in _used("silo")


def test_hub_grants_exactly_what_the_operator_uses_all_namespaces(chart):
    docs = render(chart, {"role": "hub"})
    roles = by_kind(docs, "ClusterRole")
    assert _grants(roles) == _used("hub")
    bindings = by_kind(docs, "ClusterRoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == {r["metadata"]["name"] for r in roles}
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "fedma-operator",
                                  "namespace": NAMESPACE}]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")


def test_hub_with_watched_namespaces_grants_only_there(chart):
    docs = render(chart, {"role": "hub", "operator": {"watchNamespaces": ["team-a", "team-b"]}})
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    # Nothing cluster-wide: with --namespace the operator does not follow CRDs or namespaces.
    assert not by_kind(docs, "ClusterRoleBinding")
    cluster_scoped = {(c["verb"], c["group"], c["resource"]) for c in api_calls()
                      if c["cluster"] == "hub" and c["resource"] == "customresourcedefinitions"}
    assert _grants(list(roles.values())) == _used("hub") - cluster_scoped
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "ClusterRole"
        assert _grants([roles[b["roleRef"]["name"]]]) == _used("hub") - cluster_scoped


def test_silo_role_grants_the_operators_job_and_pod_calls_only(chart):
    docs = render(chart, {"role": "silo"})
    (role,) = by_kind(docs, "Role")
    granted = _grants([role])
    # The operator's code path for Jobs is the same in every cluster: the verbs it uses on
    # jobs and pods in a namespace anywhere (deleting a straggler's Job included; the
    # cluster-wide Job watch is the hub's own) ...
    on_silo_resources = {(c["verb"], c["group"], c["resource"]) for c in api_calls()
                         if c["cluster"] == "hub" and c["namespaced"]
                         and c["resource"] in ("jobs", "pods")}
    assert granted == on_silo_resources
    # ... of which the recorded calls against a separate silo cluster are a part.
    assert _used("silo") <= granted
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
