"""Session fixtures for the ``kube`` suites: real clusters with fedma deployed on them.

- ``hub``: a control plane (tests/kube/cluster.py) with the real kube-scheduler, a process
  kubelet and the hub chart
  installed by the real helm, the operator's ServiceAccount and RBAC exactly as rendered;
- ``silo``: a second control plane, prepared with the silo chart, its kubeconfig Secret on the
  hub made as docs/deploy.md says;
- ``operator``: the ``fedma-operator`` entrypoint as a process with the chart's ServiceAccount
  token (no admin, no test login handler), started once and shared; tests that kill it restart it.
At most two clusters run at once (the brief's budget for 2 cores): tests that start a cluster
of their own (a module with ``OWN_CLUSTER = True``: the README install and the load test) run
before any test that needs the silo cluster (``pytest_collection_modifyitems`` below).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import ControlPlane, start_kubelet
from tests.kube.deployed import (
    NAMESPACE,
    OperatorProcess,
    deployment_args,
    install_hub,
    install_silo,
    service_account_kubeconfig,
    silo_kubeconfig,
)

SILO_NAMESPACE = "fedma-silo"  # in a silo's own cluster, as in the README
# A silo namespace on the hub itself (hub and silo sharing a cluster); not "fedma-silo", so the
# README test can use the hub as one of its silo clusters.
HUB_SILO_NAMESPACE = "fedma-local-silo"
HUB_VALUES: dict[str, Any] = {
    "role": "hub",
    # Every namespace (the install with the most rights, so the audit test sees them all);
    # silo Jobs on the hub also in HUB_SILO_NAMESPACE; silo images only the project's.
    "operator": {"interval": 1, "siloClusterGrace": 8, "apiTimeout": 3, "allNamespaces": True,
                 "siloNamespaces": [HUB_SILO_NAMESPACE], "allowedImages": ["ghcr.io/fedma/"]},
    # Processes share one network namespace here; a fixed trainer port would collide.
    "trainer": {"metricsPort": 0},
}
POD_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the kube tests that start a cluster of their own ahead of the other kube tests
    (keeping every other test where it was), so that they never run while the session's silo
    cluster is up: with the hub, that would be three clusters on two cores."""
    slots = [i for i, item in enumerate(items) if item.get_closest_marker("kube")]
    kube = [items[i] for i in slots]
    own = [it for it in kube if getattr(it.module, "OWN_CLUSTER", False)]
    rest = [it for it in kube if not getattr(it.module, "OWN_CLUSTER", False)]
    for i, item in zip(slots, own + rest, strict=True):
        items[i] = item


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The hub cluster, its process kubelet, and `helm install` of the hub chart."""
    cp = ControlPlane("hub", tmp_path_factory.mktemp("hub"), scheduler=True).start()
    try:
        start_kubelet(cp, "hub-node", POD_ENV)
        install_hub(cp, HUB_VALUES)
        # A silo namespace on the hub itself (hub and silo sharing a cluster, docs/deploy.md).
        install_silo(cp, "fedma-local-silo", HUB_SILO_NAMESPACE, {
            "hubIdentity": {"serviceAccount": {"create": False}, "subjects": [
                {"kind": "ServiceAccount", "name": "fedma-operator", "namespace": NAMESPACE}]},
            "trainer": {"metricsPort": 0}})
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def silo(hub: ControlPlane, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[ControlPlane]:
    """A silo's own cluster: silo chart, kubeconfig Secret ``silo-a-kubeconfig`` on the hub."""
    cp = ControlPlane("silo-a", tmp_path_factory.mktemp("silo-a"), scheduler=True).start()
    try:
        start_kubelet(cp, "silo-a-node", POD_ENV)
        cp.kubectl("create", "namespace", SILO_NAMESPACE)
        install_silo(cp, "fedma-silo", SILO_NAMESPACE, {"trainer": {"metricsPort": 0}})
        kubeconfig = cp.folder / "silo-a.kubeconfig"
        kubeconfig.write_text(silo_kubeconfig(cp, "silo-a", SILO_NAMESPACE))
        hub.kubectl("-n", NAMESPACE, "create", "secret", "generic", "silo-a-kubeconfig",
                    f"--from-file=kubeconfig={kubeconfig}")
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def operator_kubeconfig(hub: ControlPlane) -> Path:
    """The chart's operator ServiceAccount as a kubeconfig: its rights and no more."""
    return service_account_kubeconfig(hub, NAMESPACE, "fedma-operator",
                                      hub.folder / "operator.kubeconfig")


@pytest.fixture(scope="session")
def operator_process(hub: ControlPlane, operator_kubeconfig: Path) -> Iterator[OperatorProcess]:
    """``fedma-operator`` with the Deployment's arguments, started once for the session."""
    op = OperatorProcess(deployment_args(hub), operator_kubeconfig, hub.folder).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """The session's operator, running (restarted if a previous test killed it)."""
    if not operator_process.alive():
        operator_process.start()
    return operator_process
