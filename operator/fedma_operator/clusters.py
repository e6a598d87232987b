"""Which cluster a silo's Job runs in: the hub, or the silo's own through a kubeconfig Secret.

The Secret lives next to the FederatedTraining on the hub (key ``kubeconfig``), is read only
when a silo names it, and its client is cached per Secret resourceVersion, so rotating the
credentials takes effect on the next reconcile without restarting the operator.
"""

from __future__ import annotations

import base64
from typing import Any

import yaml
from kubernetes_asyncio import config

from fedma.spec import SiloSpec
from fedma_operator.kube import Cluster, Hub, Observer, why


class SiloClusterError(RuntimeError):
    """The silo's kubeconfig Secret is missing or unusable; the message says which and why."""


class ClusterPool:
    def __init__(self, hub: Hub, observe: Observer | None = None):
        self.hub = hub
        self.observe = observe or hub.observe
        self._cache: dict[tuple[str, str], tuple[str, Cluster]] = {}

    async def for_silo(self, namespace: str, silo: SiloSpec) -> Cluster:
        name = silo.kubeconfig_secret
        if not name:
            return self.hub
        try:
            secret = await self.hub.get_secret(namespace, name)
        except Exception as exc:
            raise SiloClusterError(
                f"silo {silo.name}: kubeconfig Secret {namespace}/{name} unreadable: "
                f"{why(exc)}") from None
        version = secret.get("metadata", {}).get("resourceVersion", "")
        cached = self._cache.get((namespace, name))
        if cached and cached[0] == version:
            return cached[1]
        raw = (secret.get("data") or {}).get("kubeconfig")
        if not raw:
            raise SiloClusterError(f"silo {silo.name}: Secret {namespace}/{name} has no "
                                   "'kubeconfig' key")
        try:
            cfg: Any = yaml.safe_load(base64.b64decode(raw))
            api = await config.new_client_from_config_dict(cfg)
        except Exception as exc:
            raise SiloClusterError(f"silo {silo.name}: Secret {namespace}/{name}: not a usable "
                                   f"kubeconfig ({type(exc).__name__}: {exc})") from None
        cluster = Cluster(api, f"secret:{name}", self.observe, self.hub.timeout_s)
        if cached:
            await cached[1].api.close()
        self._cache[(namespace, name)] = (version, cluster)
        return cluster

    async def close(self) -> None:
        for _, cluster in self._cache.values():
            await cluster.api.close()
        self._cache.clear()
