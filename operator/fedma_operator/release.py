"""A deleted round releases what no ownerReference reaches: its Jobs and its file in a silo's
own cluster, or in a hub namespace other than the round's. (An ownerReference binds within
one namespace of one cluster; there the garbage collector deletes the round's Jobs and pods.)
Without this, deleting a training would leave its remote silo Jobs holding GPUs until their
deadline.

Run from the round's finalizer (handlers.py), so a round deleted while the operator is down
is released when it comes back. Deletion is never blocked for good: each place gets a few
tries, each call bounded by the API timeout; what is still there after them is named in a
Warning Event (``RoundReleaseFailed``) and left to its deadline and the Job TTL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fedma.spec import FederatedRound, SpecError
from fedma_operator import jobs
from fedma_operator.clusters import ClusterPool
from fedma_operator.kube import Cluster, why
from fedma_operator.observe import place
from fedma_operator.reconcile import parse_round
from fedma_operator.status import Event

TRIES = 3
BACKOFF_S = 2.0


def _round(body: dict[str, Any]) -> FederatedRound | None:
    """The round as the reconciler ran it; None if it never ran (an invalid or refused spec
    launches nothing, so there is nothing to release)."""
    status = body.get("status") or {}
    if any(c.get("type") == "InvalidSpec" and c.get("status") == "True"
           for c in status.get("conditions") or []):
        return None
    try:
        rnd = parse_round(body, status.get("acceptedSpec") or body.get("spec") or {})
    except SpecError:
        return None
    return rnd if jobs.round_uid(rnd) else None


async def _tried(call: Callable[[], Awaitable[None]], tries: int, backoff_s: float) -> str:
    """Empty once ``call`` succeeded, else why its last try failed."""
    last = ""
    for attempt in range(tries):
        try:
            await call()
            return ""
        except Exception as exc:
            last = why(exc)
            if attempt + 1 < tries:
                await asyncio.sleep(backoff_s * (attempt + 1))
    return last


async def release(pool: ClusterPool, body: dict[str, Any], tries: int = TRIES,
                  backoff_s: float = BACKOFF_S) -> list[Event]:
    """Delete the round's Jobs and file wherever the garbage collector cannot; Events for
    what was deleted and what could not be."""
    rnd = _round(body)
    if rnd is None:
        return []
    namespace = rnd.metadata.namespace or "default"
    uid = jobs.round_uid(rnd)
    placements = await place(pool, rnd, namespace)
    events: list[Event] = []
    groups: dict[tuple[str, str], tuple[Cluster, list[str]]] = {}
    for silo in rnd.spec.silos:
        where = placements[silo.name]
        if where.cluster is None:
            events.append(("Warning", "RoundReleaseFailed",
                           f"{where.error}: its Jobs in {where.namespace} are left to their "
                           "deadline"))
            continue
        if where.cluster is pool.hub and where.namespace == namespace:
            continue  # owned: the garbage collector deletes them with the round
        key = (where.cluster.name, where.namespace)
        groups.setdefault(key, (where.cluster, []))[1].append(silo.name)
    file_name = jobs.round_file(rnd).name
    recorded = {s: e["job"] for s, e in ((body.get("status") or {}).get("silos") or {}).items()
                if isinstance(e, dict) and e.get("job")}

    async def one(cluster: Cluster, ns: str, silos: list[str]) -> None:
        deleted: list[str] = []

        async def go() -> None:
            for job in await cluster.list_jobs(ns, {f"{jobs.LABEL}/round-uid": str(uid)}):
                name = job["metadata"]["name"]
                if name not in deleted:
                    await cluster.delete_job(ns, name)
                    deleted.append(name)
            await cluster.delete_config_map(ns, file_name)

        failed = await _tried(go, tries, backoff_s)
        known = [f"{s} (Job {recorded[s]})" if s in recorded else s for s in silos]
        if deleted:
            events.append(("Normal", "RoundReleased", f"deleted Jobs {', '.join(deleted)} "
                           f"in {ns} of {cluster.name}"))
        if failed:
            events.append(("Warning", "RoundReleaseFailed",
                           f"silos {', '.join(known)}: cannot delete the round's Jobs and "
                           f"ConfigMap {file_name} in {ns} of {cluster.name} after {tries} "
                           f"tries ({failed}); they stop at their deadline and expire after "
                           "the Job TTL"))

    await asyncio.gather(*(one(c, ns, silos) for (_, ns), (c, silos) in groups.items()))
    return events
