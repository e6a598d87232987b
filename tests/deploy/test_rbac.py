"""The chart's RBAC, rendered: its shape for each install mode.

Which verbs the operator needs is proven on the real apiserver, from its audit log
(tests/kube/test_rbac_audit.py: every request allowed, every grant used). What is checked here
is what the audit log of the all-namespaces install the kube tests use cannot show: no wildcard
or unbounded rule anywhere, the namespaced install (the default: the release namespace, or
``operator.watchNamespaces``) granting the same namespaced rights only in those namespaces and
nothing cluster-wide, and the silo chart's Role being the hub's Job and pod rights, so one code
path works in every cluster.
"""

from __future__ import annotations

from typing import Any

from tests.deploy.conftest import NAMESPACE, by_kind, render

Grant = tuple[str, str, str]  # (verb, apiGroup, resource)
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


def _grants(roles: list[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            out |= {(v, g, r) for v in rule["verbs"] for g in rule["apiGroups"]
                    for r in rule["resources"]}
    return out


ALL = {"role": "hub", "operator": {"allNamespaces": True}}


def test_hub_all_namespaces_binds_its_cluster_roles_to_the_operator_only(chart):
    docs = render(chart, ALL)
    roles = by_kind(docs, "ClusterRole")
    assert ("create", "batch", "jobs") in _grants(roles)
    bindings = by_kind(docs, "ClusterRoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == {r["metadata"]["name"] for r in roles}
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "fedma-operator",
                                  "namespace": NAMESPACE}]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")


def test_hub_by_default_grants_its_rights_in_the_release_namespace_only(chart):
    docs = render(chart, {"role": "hub"})
    assert not by_kind(docs, "ClusterRoleBinding")
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    (operator,) = by_kind(docs, "Deployment")
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={NAMESPACE}" in args and "--all-namespaces" not in args


def test_hub_with_watched_namespaces_grants_the_same_only_there(chart):
    everywhere = _grants(by_kind(render(chart, ALL), "ClusterRole"))
    docs = render(chart, {"role": "hub", "operator": {"watchNamespaces": ["team-a", "team-b"]}})
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    # Nothing cluster-wide: with --namespace the operator does not follow CRDs or namespaces.
    assert not by_kind(docs, "ClusterRoleBinding")
    namespaced = {g for g in everywhere if g[2] not in CLUSTER_SCOPED}
    assert _grants(list(roles.values())) == namespaced
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "ClusterRole"
        assert _grants([roles[b["roleRef"]["name"]]]) == namespaced


def test_silo_role_is_the_hubs_job_pod_and_round_file_rights_only(chart):
    hub = _grants(by_kind(render(chart, ALL), "ClusterRole"))
    docs = render(chart, {"role": "silo"})
    (role,) = by_kind(docs, "Role")
    # The hub's cluster-wide Job watch is its own (kopf's); in a silo cluster the operator
    # lists, creates and deletes Jobs, lists their pods and creates and removes the round's
    # file (a ConfigMap), in one namespace.
    on_jobs_and_pods = {g for g in hub if g[2] in ("jobs", "pods", "configmaps")} - {
        ("watch", "batch", "jobs")}
    assert _grants([role]) == on_jobs_and_pods
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
