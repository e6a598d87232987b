"""kopf wiring: a timer per FederatedRound and per FederatedTraining runs one reconcile.

Timers rather than change handlers: every reconcile reads the object and the Jobs afresh, so
one periodic entry point covers creation, operator restarts (kopf starts the timer for every
object it finds), spec edits (refused, see reconcile.py) and Job progress, including Jobs in
silo clusters the hub cannot watch. Status is written through kopf's ``patch`` (a merge patch
on the status subresource); Events through ``kopf.event``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes_asyncio import client

from fedma.spec import GROUP
from fedma_operator.clusters import ClusterPool
from fedma_operator.jobs import JobSettings
from fedma_operator.kube import VERSION, Hub
from fedma_operator.metrics import Metrics
from fedma_operator.reconcile import Outcome, RoundReconciler
from fedma_operator.training import TrainingReconciler

log = logging.getLogger("fedma.operator")
ApiFactory = Callable[[], Awaitable[client.ApiClient]]


@dataclass
class OperatorConfig:
    job_settings: JobSettings
    interval_s: float = 10.0


async def default_api() -> client.ApiClient:
    """In a pod: the service account; elsewhere: $KUBECONFIG / ~/.kube/config."""
    from kubernetes_asyncio import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config()
    return client.ApiClient()


def plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def build_registry(cfg: OperatorConfig, api_factory: ApiFactory = default_api,
                   metrics: Metrics | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    metrics = metrics or Metrics()
    state: dict[str, Any] = {}

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress lives in our own status fields, not kopf's; keep kopf out of the objects
        # except its last-handled annotation.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="fedma.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="fedma.io", key="last-handled-configuration")
        settings.posting.level = logging.WARNING
        api = await api_factory()
        hub = Hub(api, metrics.observe_api)
        pool = ClusterPool(hub)
        state.update(api=api, hub=hub, pool=pool,
                     rounds=RoundReconciler(pool, cfg.job_settings, metrics),
                     trainings=TrainingReconciler(hub))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if "pool" in state:
            await state["pool"].close()
            await state["api"].close()

    async def run(kind: str, body: Any, patch: kopf.Patch,
                  reconcile: Callable[[dict[str, Any], datetime], Awaitable[Outcome]]) -> None:
        t0 = time.perf_counter()
        raw = plain(body)
        outcome = await reconcile(raw, datetime.now(UTC))
        if outcome.status:
            patch.status.update(outcome.status)
        for etype, reason, message in outcome.events:
            kopf.event(body, type=etype, reason=reason, message=message[:1000])
        metrics.reconcile_seconds(kind, time.perf_counter() - t0)

    @kopf.timer(GROUP, VERSION, "federatedrounds", interval=cfg.interval_s, registry=registry,
                id="reconcile")
    async def round_timer(body: Any, patch: kopf.Patch, **_: Any) -> None:
        await run("FederatedRound", body, patch, state["rounds"].reconcile)

    @kopf.timer(GROUP, VERSION, "federatedtrainings", interval=cfg.interval_s,
                registry=registry, id="reconcile")
    async def training_timer(body: Any, patch: kopf.Patch, **_: Any) -> None:
        async def go(raw: dict[str, Any], now: datetime) -> Outcome:
            out = await state["trainings"].reconcile(raw, now)
            name = raw["metadata"]["name"]
            if out.status.get("currentRound"):
                metrics.training_progress(name, out.status["currentRound"],
                                          out.status.get("loss"))
            return out

        await run("FederatedTraining", body, patch, go)

    return registry
