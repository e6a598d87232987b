"""Apply what `helm install` would send, role by role, to a Kubernetes API server (kmock), and
read it back: the objects are addressable at the API paths their apiVersion/kind name.

kmock stands in for the API server: it stores objects, it runs no controllers and no admission
(the schema checks are in test_chart.py, against the real OpenAPI schemas)."""

from __future__ import annotations

from typing import Any

import kmock
import pytest
import yaml

from tests.deploy.conftest import MONITORING, by_kind, deep_merge, example_values, render
from tests.operator.conftest import VERBS, Api, Emulator

pytestmark = [pytest.mark.asyncio]

# apiVersion/kind → plural, namespaced: what an API server's discovery would say.
RESOURCES = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "Service"): ("services", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("servicemonitors", True),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("podmonitors", True),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("prometheusrules", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions",
                                                              False),
}


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": Emulator}


def _path(doc: dict[str, Any], name: str | None = None) -> str:
    plural, namespaced = RESOURCES[(doc["apiVersion"], doc["kind"])]
    base = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
    if namespaced:
        base += f"/namespaces/{doc['metadata']['namespace']}"
    return f"{base}/{plural}" + (f"/{name}" if name else "")


async def _apply(k: Any, docs: list[dict[str, Any]]) -> Api:
    for (api_version, kind), (plural, namespaced) in RESOURCES.items():
        k.resources[f"{api_version}/{plural}"] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs=VERBS)
    api = Api(k)
    for doc in docs:
        await api.create(_path(doc), doc)
    return api


@pytest.mark.parametrize("role", ["hub", "silo"])
async def test_helm_install_applies_to_an_api_server(kmock, chart, role):
    values = deep_merge(MONITORING, example_values(role))
    docs = render(chart, values)
    crds = [yaml.safe_load(c["data"]) for c in chart.crds] if role == "hub" else []
    api = await _apply(kmock, crds + docs)
    for doc in crds + docs:
        got = await api.get(_path(doc, doc["metadata"]["name"]))
        assert got["kind"] == doc["kind"]
        assert got["metadata"].get("labels") == doc["metadata"].get("labels")
        assert got.get("spec") == doc.get("spec") and got.get("rules") == doc.get("rules")
    if role == "hub":
        dashboards = by_kind(docs, "ConfigMap")
        listed = await api.items("/api/v1/namespaces/fedma/configmaps")
        assert {c["metadata"]["name"] for c in listed} == {
            d["metadata"]["name"] for d in dashboards}
        assert all(c["metadata"]["labels"]["grafana_dashboard"] == "1" for c in listed)
