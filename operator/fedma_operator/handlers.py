"""kopf wiring: one reconcile loop (a kopf daemon) per FederatedRound and FederatedTraining.

Each loop reconciles, then sleeps until woken or its recheck time passes. Wake-ups come from
the hub's Job watch (a silo or aggregation Job of the round finished or went), from a round
finishing (its training's loop) and from a spec edit, so a finished Job is acted on at once
instead of at the next poll. A round whose every Job the watch sees waits for those (or its
deadline; reconcile.py); one with Jobs in silo clusters the hub does not watch keeps the
``interval``, their only clock. One loop per object means reconciles of an object never
overlap. Every reconcile reads
the Jobs afresh, so the same entry point covers creation, operator restarts (kopf starts a
loop for every object it finds), spec edits (refused, see reconcile.py) and Job progress.

The loop writes status itself (a merge patch on the status subresource) and reconciles next
from what the API server returned, not from the watch's copy, which may lag behind its own
write. Events go through ``kopf.event``.

A deleted round first releases its Jobs in silo clusters and other hub namespaces (kopf's
finalizer, release.py), which the garbage collector cannot reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes_asyncio import client

from fedma.spec import GROUP
from fedma_operator.clusters import ClusterPool
from fedma_operator.jobs import JobSettings
from fedma_operator.jobwatch import JobWatch
from fedma_operator.kube import DEFAULT_TIMEOUT_S, VERSION, Hub
from fedma_operator.metrics import Metrics
from fedma_operator.reconcile import Outcome, RoundReconciler
from fedma_operator.release import release
from fedma_operator.status import merge_patch
from fedma_operator.tenancy import Tenancy
from fedma_operator.training import TrainingReconciler

log = logging.getLogger("fedma.operator")
ApiFactory = Callable[[], Awaitable[client.ApiClient]]


@dataclass
class OperatorConfig:
    job_settings: JobSettings
    interval_s: float = 10.0
    # How long a silo's own cluster may be unreachable before its attempt counts as failed.
    cluster_grace_s: float = 60.0
    # False with --namespace: only those namespaces are served, so kopf need not list and
    # watch Namespaces and CRDs cluster-wide (rights a namespaced install does not grant; kopf
    # would retry for about two minutes before it served anything).
    clusterwide: bool = True
    namespaces: tuple[str, ...] = ()  # the ones served when not clusterwide
    # Deadline of every API call the reconcilers make (hub and silo clusters): an endpoint
    # that accepts and never answers costs this, then counts as unreachable.
    api_timeout_s: float = DEFAULT_TIMEOUT_S
    # What a tenant's spec may make the operator do (hub silo namespaces, images).
    tenancy: Tenancy = field(default_factory=Tenancy)


async def default_api() -> client.ApiClient:
    """In a pod: the service account; elsewhere: $KUBECONFIG / ~/.kube/config."""
    from kubernetes_asyncio import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config()
    return client.ApiClient()


class SpecDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, empty: it serves change handlers (on.create, on.update), and this
    operator has none (its reconcilers read the spec and compare it with the accepted one
    themselves). kopf builds it for every watch event by deep-copying the object, which made
    that copy, and another to clear it, a fifth of the operator's CPU under load."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()


def plain(obj: Any) -> Any:
    """A plain copy of a kopf body, without ``managedFields`` (the reconcilers never read
    them, and at 100 silos they are a large part of a round object)."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items() if k != "managedFields"}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def build_registry(cfg: OperatorConfig, api_factory: ApiFactory = default_api,
                   metrics: Metrics | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    metrics = metrics or Metrics()
    state: dict[str, Any] = {}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The pod's ServiceAccount, else $KUBECONFIG / ~/.kube/config: the same credentials as
        ``default_api``. A bare registry has no login handler and kopf would exit at start-up
        with "Ran out of valid credentials"."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress lives in our own status fields, not kopf's; keep kopf out of the objects
        # except its last-handled annotation.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="fedma.io")
        settings.persistence.diffbase_storage = SpecDiffBase(
            prefix="fedma.io", key="last-handled-configuration")
        settings.posting.level = logging.WARNING
        settings.scanning.disabled = not cfg.clusterwide
        api = await api_factory()
        hub = Hub(api, metrics.observe_api, cfg.api_timeout_s)
        pool = ClusterPool(hub)
        state.update(api=api, hub=hub, pool=pool,
                     rounds=RoundReconciler(pool, cfg.job_settings, metrics,
                                            cfg.cluster_grace_s, watched, cfg.tenancy),
                     trainings=TrainingReconciler(hub, cfg.tenancy))
        # The hub's Job watch (jobwatch.py), with the same server-side label selector: a
        # cluster's other Jobs never reach the operator; ours wake their round when settled.
        scopes: tuple[str | None, ...] = (None,) if cfg.clusterwide else cfg.namespaces
        state["job_watches"] = [asyncio.create_task(JobWatch(api, ns, wake, wake_all).run())
                                for ns in scopes]

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in state.get("job_watches", []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if "pool" in state:
            await state["pool"].close()
            await state["api"].close()

    wakers: dict[tuple[str, str], asyncio.Event] = {}

    def watched(namespace: str) -> bool:
        """Whether the hub's Job watch (kopf's, below) sees Jobs in ``namespace``."""
        return cfg.clusterwide or namespace in cfg.namespaces

    def wake(namespace: str, name: str) -> None:
        event = wakers.get((namespace, name))
        if event is not None:
            event.set()

    def wake_all() -> None:
        for event in wakers.values():
            event.set()

    async def loop(kind: str, plural: str, body: Any, stopped: Any,
                   reconcile: Callable[[dict[str, Any], datetime], Awaitable[Outcome]],
                   finished: Callable[[dict[str, Any]], None] = lambda raw: None) -> None:
        """``finished(raw)`` runs once the final status is written (not before: whoever it
        wakes must read that status)."""
        meta = body["metadata"]
        key = (meta.get("namespace") or "default", meta["name"])
        woken = wakers.setdefault(key, asyncio.Event())
        written: dict[str, Any] | None = None  # status as of our own last write
        try:
            while not stopped:
                woken.clear()
                t0 = time.perf_counter()
                if written is None:
                    raw = plain(body)
                else:  # status as of our own write; copying the watch's older one is waste
                    raw = {k: plain(v) for k, v in body.items() if k != "status"}
                    raw["status"] = written
                try:
                    outcome = await reconcile(raw, datetime.now(UTC))
                    current = raw.get("status") or {}
                    if any(current.get(k) != v for k, v in outcome.status.items()):
                        await state["hub"].patch_status(plural, *key, outcome.status)
                        written = merge_patch(current, outcome.status)
                except Exception:  # an API hiccup: log it, try again after the interval
                    log.exception("%s %s/%s: reconcile failed; retrying in %.0f s", kind, *key,
                                  cfg.interval_s)
                    written = None  # what we wrote last may not be what is there now
                    await _sleep(woken, stopped, cfg.interval_s)
                    continue
                for etype, reason, message in outcome.events:
                    kopf.event(body, type=etype, reason=reason, message=message[:1000])
                took = time.perf_counter() - t0
                metrics.reconcile_seconds(kind, took)
                log.debug("%s %s/%s: %s in %.3f s; next within %.1f s or when woken", kind,
                          *key, outcome.status.get("phase") or "reconciled", took,
                          outcome.recheck_s or cfg.interval_s)
                if outcome.done:
                    finished(raw)
                    if not outcome.dormant:
                        return
                    await _sleep(woken, stopped, None)  # until an edit (``edited``) wakes it
                    continue
                await _sleep(woken, stopped, outcome.recheck_s or cfg.interval_s, since=t0,
                             gap=max(MIN_GAP_S, outcome.gap_s))
        finally:
            if wakers.get(key) is woken:
                del wakers[key]

    @kopf.daemon(GROUP, VERSION, "federatedrounds", registry=registry, id="reconcile",
                 cancellation_timeout=10)
    async def round_daemon(body: Any, stopped: Any, **_: Any) -> None:
        def finished(raw: dict[str, Any]) -> None:
            # The training's loop creates the next round now, not at its poll.
            wake(raw["metadata"].get("namespace") or "default",
                 (raw.get("spec") or {}).get("trainingName", ""))

        await loop("FederatedRound", "federatedrounds", body, stopped,
                   state["rounds"].reconcile, finished)

    @kopf.on.delete(GROUP, VERSION, "federatedrounds", registry=registry, id="release")
    async def round_deleted(body: Any, **_: Any) -> None:
        """Jobs where no ownerReference reaches (release.py); never raises, so a cluster
        that cannot be reached costs bounded tries and an Event, not a stuck deletion."""
        try:
            events = await release(state["pool"], plain(body))
        except Exception as exc:  # e.g. the hub itself unreachable: do not block deletion
            log.exception("FederatedRound %s/%s: release failed", body["metadata"].get(
                "namespace"), body["metadata"]["name"])
            events = [("Warning", "RoundReleaseFailed", f"cannot release the round: {exc}")]
        for etype, reason, message in events:
            kopf.event(body, type=etype, reason=reason, message=message[:1000])

    @kopf.daemon(GROUP, VERSION, "federatedtrainings", registry=registry, id="reconcile",
                 cancellation_timeout=10)
    async def training_daemon(body: Any, stopped: Any, **_: Any) -> None:
        async def go(raw: dict[str, Any], now: datetime) -> Outcome:
            out = await state["trainings"].reconcile(raw, now)
            name = raw["metadata"]["name"]
            if out.status.get("currentRound"):
                metrics.training_progress(name, out.status["currentRound"],
                                          out.status.get("loss"))
            return out

        await loop("FederatedTraining", "federatedtrainings", body, stopped, go)

    async def edited(body: Any, **_: Any) -> None:
        """A spec edit (generation past the one status observed) wakes the object's loop,
        which refuses it at once (reconcile.py) rather than at its next poll."""
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        if int(meta.get("generation") or 0) > int(status.get("observedGeneration") or 0):
            wake(meta.get("namespace") or "default", meta["name"])

    for plural in ("federatedrounds", "federatedtrainings"):
        kopf.on.event(GROUP, VERSION, plural, registry=registry, id="edited")(edited)

    return registry


COALESCE_S = 0.05  # after a wake-up, let the rest of a burst of Job events arrive
# A woken loop reconciles at most this often: a round's every reconcile reads all its Jobs
# (and pods, when some finished), so 100 silos finishing one by one cost 100 full reads; a
# lone event is still acted on at once when the last reconcile is older than this.
MIN_GAP_S = 0.5


async def _sleep(woken: asyncio.Event, stopped: Any, seconds: float | None,
                 since: float | None = None, gap: float = MIN_GAP_S) -> None:
    """Until woken, stopped (kopf's flag) or ``seconds`` pass (None: never), whichever is
    first. A wake-up
    waits a little more so that Jobs finishing together cost one reconcile, not one each,
    and no sooner than ``gap`` after the reconcile that began at ``since``
    (``time.perf_counter()``)."""
    waits = [asyncio.ensure_future(woken.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await w
    if woken.is_set() and not stopped:
        left = gap - (time.perf_counter() - since) if since is not None else 0.0
        await asyncio.sleep(max(COALESCE_S, left))
