"""fedma as a user deploys it onto the test clusters: the chart installed with the real helm,
kubeconfigs made the way docs/deploy.md tells users, and the operator's own entrypoint.

The operator runs as a local process (there is no container runtime): ``fedma-operator`` with
the arguments of the Deployment that ``helm install`` created (read back from the apiserver),
authenticated by a kubeconfig holding a token of the chart's ServiceAccount, so it has exactly
the rights the chart grants. Only its ports change (pods have a network namespace each).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.kube.cluster import ROOT, ControlPlane, Proc, spawn
from tests.operator.conftest import free_port

NAMESPACE = "fedma"
RELEASE = "fedma"
OPERATOR_SA = "fedma-operator"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{OPERATOR_SA}"
# Rights the hub chart grants that admission checks without a request of their own
# (OwnerReferencesPermissionEnforcement: creating with blockOwnerDeletion needs update on the
# owner's finalizers), so no audit record shows them used; tests/kube/test_rbac_audit.py
# shows a create refused without them.
ADMISSION_ONLY: set[tuple[str, str, str]] = {
    ("update", "fedma.io", "federatedtrainings/finalizers"),
    ("update", "fedma.io", "federatedrounds/finalizers")}
BIN = Path(sys.executable).parent


def write_values(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def install_hub(cp: ControlPlane, values: dict[str, Any], namespace: str = NAMESPACE) -> None:
    """``helm install fedma charts/fedma -n fedma --create-namespace -f values.yaml``."""
    f = write_values(cp.folder / "values-hub.yaml", values)
    cp.helm("install", RELEASE, "charts/fedma", "-n", namespace, "--create-namespace", "-f",
            str(f))


def install_silo(cp: ControlPlane, release: str, namespace: str, values: dict[str, Any]) -> None:
    """``helm install <release> charts/fedma -n <ns> --create-namespace --skip-crds -f ...``."""
    f = write_values(cp.folder / f"values-{release}.yaml", {"role": "silo", **values})
    cp.helm("install", release, "charts/fedma", "-n", namespace, "--create-namespace",
            "--skip-crds", "-f", str(f))


def service_account_kubeconfig(cp: ControlPlane, namespace: str, account: str,
                               path: Path) -> Path:
    """A kubeconfig for a ServiceAccount (``kubectl create token``, the TokenRequest API)."""
    token = cp.kubectl("-n", namespace, "create", "token", account, "--duration=48h").stdout
    return cp.token_kubeconfig(token.strip(), path)


def silo_kubeconfig(cp: ControlPlane, ctx: str, namespace: str, timeout: float = 30) -> str:
    """The kubeconfig docs/deploy.md builds from the silo chart's ``fedma-hub-token`` Secret
    (filled in by the real token controller), same fields, same order."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        out = cp.kubectl("-n", namespace, "get", "secret", "fedma-hub-token", "-o", "json",
                         check=False)
        data = (json.loads(out.stdout).get("data") or {}) if out.returncode == 0 else {}
        if data.get("token") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    token = base64.b64decode(data["token"]).decode()
    ca = data["ca.crt"]
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": ctx, "cluster": {"server": cp.server,
                                               "certificate-authority-data": ca}}],
        "users": [{"name": "fedma-hub", "user": {"token": token}}],
        "contexts": [{"name": ctx, "context": {"cluster": ctx, "user": "fedma-hub",
                                               "namespace": namespace}}],
        "current-context": ctx}, sort_keys=False)


def deployment_args(cp: ControlPlane, namespace: str = NAMESPACE) -> list[str]:
    """The operator container's args as the chart rendered them into the Deployment."""
    out = cp.kubectl("-n", namespace, "get", "deployment", OPERATOR_SA, "-o", "json")
    container = json.loads(out.stdout)["spec"]["template"]["spec"]["containers"][0]
    assert container.get("command", ["fedma-operator"])[0] == "fedma-operator", container
    return list(container.get("args", []))


class OperatorProcess:
    """``fedma-operator`` in its own process group; ``kill()`` is kill -9."""

    def __init__(self, args: list[str], kubeconfig: Path, folder: Path,
                 env: dict[str, str] | None = None):
        self.args = [a for a in args if not a.startswith(("--metrics-port", "--health-port"))]
        self.kubeconfig, self.folder, self.env = kubeconfig, folder, env or {}
        self.log = folder / "operator.log"
        self.proc: Proc | None = None
        self.metrics_port = self.health_port = 0

    def start(self) -> OperatorProcess:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = spawn("fedma-operator", [
            str(BIN / "fedma-operator"), *self.args, f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}"], self.log, env=env, cwd=ROOT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(15)

    def tail(self, n: int = 60) -> str:
        return self.proc.tail(n) if self.proc is not None else ""
