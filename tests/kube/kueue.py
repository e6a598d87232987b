"""The real Kueue controller (sigs.k8s.io/kueue, built from its Go module by build-kueue.sh) as a
process against a test control plane: its CRDs from the same module, its own controllers and
scheduler, its admission webhooks served on 127.0.0.1 and registered with the apiserver by URL
(Kueue's own webhook manifests, the Service reference swapped for that URL and the test CA).

What differs from an in-cluster install, and why: no Deployment (no container runtime here), so
the webhooks are reached by URL instead of a Service; leader election off (one replica);
certificates from the cluster's test PKI instead of Kueue's internal cert manager (which would
wait for a Service and Secret that an out-of-cluster process does not have). Kueue reads its
metrics certificate from the fixed path of its Deployment, /etc/kueue/metrics/certs; it is
written there (the suite runs as root, as CI does).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.kube.cluster import ControlPlane, Proc, built
from tests.operator.conftest import free_port

# The webhooks registered: Kueue's own objects and batch Jobs (the one integration enabled);
# a hook for pods or Deployments, unserved with that integration off, would refuse them all.
SERVED_GROUPS = {"batch", "kueue.x-k8s.io"}

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build-kueue.sh"
METRICS_CERTS = Path("/etc/kueue/metrics/certs")  # Kueue's main.go, fixed
NAMESPACE = "kueue-system"
WEBHOOKS = ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")


def kueue_dir() -> Path:
    """Where build-kueue.sh put bin/kueue and crds/."""
    return built("FEDMA_KUEUE_DIR", BUILD)


def module_dir() -> Path:
    """The pinned Kueue module's source (for its webhook manifests)."""
    out = subprocess.run(["go", "mod", "download", "-json", "sigs.k8s.io/kueue"],
                         cwd=HERE / "tools" / "kueue", check=True, capture_output=True,
                         text=True, env={**os.environ, "GOFLAGS": "-mod=mod"})
    return Path(json.loads(out.stdout)["Dir"])


def by_url(doc: dict[str, Any], base: str, ca_pem: bytes) -> dict[str, Any]:
    """A webhook configuration of Kueue's with each Service reference replaced by ``base``."""
    import base64

    doc = copy.deepcopy(doc)
    doc["webhooks"] = [h for h in doc.get("webhooks") or [] if all(
        set(r["apiGroups"]) <= SERVED_GROUPS for r in h["rules"])]
    for hook in doc["webhooks"]:
        cc = hook["clientConfig"]
        path = cc.pop("service")["path"]
        cc.update(url=f"{base}{path}", caBundle=base64.b64encode(ca_pem).decode())
    return doc


@dataclass
class Kueue:
    cp: ControlPlane
    proc: Proc
    health: str
    hooks: list[tuple[str, str]]  # (kind, name) registered with the apiserver

    def tail(self, n: int = 40) -> str:
        return self.proc.tail(n)

    def stop(self) -> None:
        # Webhooks first: with failurePolicy Fail, a registered hook that no one serves would
        # refuse every Job the rest of the suite creates.
        for kind, name in self.hooks:
            self.cp.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        self.cp.stop_process("kueue")


def start_kueue(cp: ControlPlane, folder: Path, timeout_s: float = 120) -> Kueue:
    root = kueue_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cp.kubectl("apply", "--server-side", "-f", str(root / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f",
               str(root / "crds"))
    cp.kubectl("create", "namespace", NAMESPACE, check=False)

    serving = cp.pki.issue("kueue-webhook", "127.0.0.1", server=True)
    certs = folder / "webhook-certs"
    certs.mkdir(exist_ok=True)
    (certs / "tls.crt").write_bytes(serving.cert.read_bytes())
    (certs / "tls.key").write_bytes(serving.key.read_bytes())
    METRICS_CERTS.mkdir(parents=True, exist_ok=True)
    (METRICS_CERTS / "tls.crt").write_bytes(serving.cert.read_bytes())
    (METRICS_CERTS / "tls.key").write_bytes(serving.key.read_bytes())

    webhook_port, health_port = free_port(), free_port()
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }
    cfg = folder / "kueue-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = cp._spawn("kueue", [str(root / "bin" / "kueue"), f"--config={cfg}",
                               f"--kubeconfig={cp.admin_kubeconfig}",
                               "--feature-gates=VisibilityOnDemand=false"])
    health = f"http://127.0.0.1:{health_port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{health}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"kueue did not become ready:\n{proc.tail()}")
        time.sleep(0.5)

    hooks: list[tuple[str, str]] = []
    manifests = module_dir() / "config" / "components" / "webhook" / "manifests.yaml"
    base = f"https://127.0.0.1:{webhook_port}"
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        doc["metadata"]["name"] = f"kueue-{doc['metadata']['name']}"
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(by_url(doc, base,
                                                                   cp.pki.ca.read_bytes())))
        hooks.append((doc["kind"].lower(), doc["metadata"]["name"]))
    return Kueue(cp, proc, health, hooks)
