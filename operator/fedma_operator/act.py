"""Act on a round's decision: create silo Jobs, the aggregation Job and the round's file,
stop stragglers, and remove the round's files when it ends. Each change is recorded in the
silo's or aggregation's status entry (the attempt it is, or why it failed) and reported as
an Event; a failure in one silo's cluster never stops the others.

A create that meets an existing object of the same name (409) adopts it only if it is this
round's: a Job of the name that carries another round uid (an earlier object of the same
name, say a training deleted and created again) is a conflict. The attempt fails with that
reason and the next attempt, under a new name, goes on; the foreign Job is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fedma.rounds import Decision, JobState
from fedma.spec import FederatedRound
from fedma_operator import jobs
from fedma_operator.conditions import named
from fedma_operator.kube import Cluster, why
from fedma_operator.observe import Placement
from fedma_operator.status import Event, now_iso

# Creates and deletes in flight at once per reconcile: 100 silos launch in a few round
# trips, without a burst that a silo cluster's API priority and fairness would queue.
CONCURRENCY = 16


@dataclass
class Acts:
    """What acting did, for the report and the metrics."""

    events: list[Event] = field(default_factory=list)
    started: list[tuple[str, int]] = field(default_factory=list)  # (silo, attempt) created


async def _bounded(calls: list[Callable[[], Awaitable[None]]]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


def _where(cluster: Cluster, namespace: str) -> str:
    return f"{cluster.name}/{namespace}"


def created_message(round_name: str, started: list[tuple[str, int]]) -> str:
    listed = named([f"{silo} (attempt {attempt})" for silo, attempt in sorted(started)])
    return (f"{len(started)} silo Job{'s' if len(started) != 1 else ''} created for round "
            f"{round_name}: {listed}")


class Actor:
    def __init__(self, rnd: FederatedRound, namespace: str, settings: jobs.JobSettings,
                 owner: dict[str, Any] | None, hub: Cluster, file_status: dict[str, Any]):
        self.rnd, self.namespace, self.settings, self.owner = rnd, namespace, settings, owner
        self.hub = hub
        self.ref = jobs.round_file(rnd)
        # Where the round's file was created: status, so a retry or a restarted operator
        # neither creates it again nor forgets to remove it.
        placed = file_status.get("placed") if file_status.get("name") == self.ref.name else []
        self.file = {"name": self.ref.name, "sha256": self.ref.digest,
                     "placed": list(placed or [])}
        self.acts = Acts()

    def _owner_for(self, cluster: Cluster, namespace: str) -> dict[str, Any] | None:
        # An ownerReference only binds within one namespace of one cluster: the garbage
        # collector treats an owner in another namespace as absent and deletes the object.
        return self.owner if cluster is self.hub and namespace == self.namespace else None

    async def _file_in(self, cluster: Cluster, namespace: str) -> None:
        where = _where(cluster, namespace)
        if where in self.file["placed"]:
            return
        await cluster.create_config_map(namespace, jobs.round_config_map(
            self.rnd, self.ref, namespace, self._owner_for(cluster, namespace)))
        self.file["placed"].append(where)

    def _conflict(self, name: str, cluster: Cluster, namespace: str) -> str:
        return (f"Job {name} already exists in {namespace} of {cluster.name} and is not "
                f"this round's (its {jobs.LABEL}/round-uid is not {jobs.round_uid(self.rnd)}: an "
                "earlier object of the same name?); it is left alone")

    async def launch_silos(self, decision: Decision, placements: dict[str, Placement],
                           entries: dict[str, dict[str, Any]], now: datetime) -> None:
        """The decision's launches, each recorded in status with the attempt it is."""
        by_group: dict[tuple[str, str], list[Any]] = {}
        specs = {s.name: s for s in self.rnd.spec.silos}
        for launch in decision.launch:
            silo = specs[launch.silo]
            entry, where = entries[silo.name], placements[silo.name]
            name = jobs.silo_job_name(self.rnd.metadata.name, silo.name, launch.attempt)
            entry.update(attempts=launch.attempt, job=name, jobState=JobState.ACTIVE,
                         reason="", launchedAt=now_iso(now))
            entry.pop("waiting", None)  # the last attempt's pod trouble
            entry.pop("admittedAt", None)  # and its admission by a queue
            if where.cluster is None:
                entry.update(jobState=JobState.FAILED, reason=where.error)
                continue
            by_group.setdefault((where.cluster.name, where.namespace), []).append(
                (silo, launch.attempt, where.cluster, entry))
        await asyncio.gather(*(self._launch_group(group) for group in by_group.values()))
        if self.acts.started:
            # One Event per reconcile, not one per silo: 1,000 silos would be 1,000 Events a
            # round, past the apiserver's event rate limits; each Job is in the silo's status.
            self.acts.events.append(("Normal", "SiloJobCreated", created_message(
                self.rnd.metadata.name, self.acts.started)))

    async def _launch_group(self, group: list[Any]) -> None:
        cluster, namespace = group[0][2], group[0][3]["namespace"]
        try:
            await self._file_in(cluster, namespace)
        except Exception as exc:
            reason = (f"cannot create the round's ConfigMap {self.ref.name} in {namespace} "
                      f"of {cluster.name}: {why(exc)}")
            for silo, _, _, entry in group:
                entry.update(jobState=JobState.FAILED, reason=reason)
                self.acts.events.append(("Warning", "JobCreateFailed",
                                         f"silo {silo.name}: {reason}"))
            return

        def create(silo: Any, attempt: int, entry: dict[str, Any]
                   ) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                manifest = jobs.silo_job(self.rnd, silo, attempt, namespace, self.settings,
                                         self._owner_for(cluster, namespace), self.ref)
                name = manifest["metadata"]["name"]
                try:
                    created = await cluster.create_job(namespace, manifest)
                except Exception as exc:
                    reason = f"cannot create Job {name} in {cluster.name}: {why(exc)}"
                    entry.update(jobState=JobState.FAILED, reason=reason)
                    self.acts.events.append(("Warning", "JobCreateFailed",
                                             f"silo {silo.name}: {reason}"))
                    return
                if created:
                    self.acts.started.append((silo.name, attempt))
                elif jobs.round_uid(self.rnd) is not None:
                    # Not in this reconcile's list of the round's Jobs, yet there: not ours.
                    reason = self._conflict(name, cluster, namespace)
                    entry.update(jobState=JobState.FAILED, reason=reason)
                    self.acts.events.append(("Warning", "JobConflict",
                                             f"silo {silo.name}: {reason}"))
            return call

        await _bounded([create(silo, attempt, entry) for silo, attempt, _, entry in group])

    async def launch_aggregation(self, agg: dict[str, Any], included: dict[str, str],
                                 now: datetime, again: bool = False) -> None:
        """The aggregation Job over ``included`` (recorded in status first, so a restarted
        operator aggregates exactly this set); ``again``: recorded but found missing."""
        if not again:
            agg.update(job=jobs.aggregation_job_name(self.rnd.metadata.name),
                       included=included, launchedAt=now_iso(now), phase=JobState.ACTIVE)
        try:
            await self._file_in(self.hub, self.namespace)
            manifest = jobs.aggregation_job(self.rnd, included, self.namespace, self.settings,
                                            self.owner, self.ref)
            created = await self.hub.create_job(self.namespace, manifest)
        except Exception as exc:
            agg.update(phase=JobState.FAILED,
                       reason=f"cannot create Job {agg['job']}: {why(exc)}")
            return
        if created:
            self.acts.events.append(("Normal", "AggregationJobCreated",
                                     f"Job {agg['job']}: {len(included)} silo updates"))
        elif jobs.round_uid(self.rnd) is not None and not again:
            agg.update(phase=JobState.FAILED,
                       reason=self._conflict(agg["job"], self.hub, self.namespace))
            self.acts.events.append(("Warning", "JobConflict", agg["reason"]))

    async def stop(self, stragglers: list[str], placements: dict[str, Placement],
                   entries: dict[str, dict[str, Any]]) -> None:
        """Delete the Jobs of silos just excluded while still running (they hold GPUs); a
        delete that fails is an Event and the Job ends at its deadline."""
        def delete(silo: str) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                entry, cluster = entries[silo], placements[silo].cluster
                assert cluster is not None
                try:
                    await cluster.delete_job(entry["namespace"], entry["job"])
                except Exception as exc:
                    self.acts.events.append((
                        "Warning", "JobDeleteFailed", f"silo {silo}: cannot delete Job "
                        f"{entry['job']} in {cluster.name}: {why(exc)}"))
                entry["jobState"] = JobState.FAILED
            return call

        await _bounded([delete(s) for s in stragglers if placements[s].cluster is not None
                        and entries[s].get("jobState") == JobState.ACTIVE])

    async def remove_files(self, placements: dict[str, Placement]) -> None:
        """The round ended: its file is removed wherever it was created (the round's status
        keeps the accepted spec), so finished rounds leave no ConfigMaps behind."""
        clusters = {c.name: c for c in (p.cluster for p in placements.values()) if c}
        clusters[self.hub.name] = self.hub

        def delete(where: str) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                cname, _, namespace = where.rpartition("/")
                cluster = clusters.get(cname)
                try:
                    if cluster is None:
                        raise RuntimeError("no client for it (its kubeconfig Secret is gone)")
                    await cluster.delete_config_map(namespace, self.ref.name)
                except Exception as exc:
                    self.acts.events.append((
                        "Warning", "RoundFileDeleteFailed", f"cannot delete ConfigMap "
                        f"{self.ref.name} in {namespace} of {cname}: {why(exc)}"))
                    return
                self.file["placed"].remove(where)
            return call

        await _bounded([delete(w) for w in list(self.file["placed"])])
