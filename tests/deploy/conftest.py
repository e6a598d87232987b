"""Helpers for the deployment tests: the chart rendered by Helm's own engine (helm-python-sdk).

What stands in for a cluster: kmock for the API server (objects are created, not run),
kubernetes-validate for the API server's schema checks, a local Prometheus for the one in the
cluster; there is no Grafana server here (dashboards are checked structurally and their queries
run against the live Prometheus).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fedma"
RELEASE, NAMESPACE = "fedma", "fedma"
MONITORING = {"monitoring": {"serviceMonitor": {"enabled": True},
                             "podMonitor": {"enabled": True},
                             "prometheusRule": {"enabled": True}}}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                             dict) else v
    return out


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(chart: helm.Chart, values: dict[str, Any] | None = None,
           namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every manifest a `helm install` would apply (templates; CRDs are separate)."""
    out = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(t for p, t in out.items() if p.endswith("NOTES.txt"))


def example_values(role: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / f"values-{role}.yaml").read_text())


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# The operator's fixtures (kmock API server with fedma's resources, a running operator), for the
# live Prometheus test.
from tests.operator.conftest import k8s, kmock_options, operator  # noqa: E402, F401
