"""One reconcile of a FederatedRound: observe Jobs, ask the round state machine, act, report.

All progress lives in the object's status and in the Jobs' own status (and, for results, in
the store the Jobs write to); nothing is kept in memory between reconciles. So an operator
killed at any point and restarted reaches the same decision from the same observation:
deterministic Job names make a repeated create a 409 that adopts the existing Job, a finished
attempt's summary is copied into status before it is acted on, and the aggregation Job gets
the included set recorded in status, never a recomputed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fedma.rounds import (
    JobState,
    Observation,
    Policy,
    RoundPhase,
    SiloObservation,
    SiloPhase,
    decide,
)
from fedma.spec import FederatedRound, SpecError, parse
from fedma_operator import jobs
from fedma_operator.clusters import ClusterPool, SiloClusterError
from fedma_operator.kube import Cluster, matches

log = logging.getLogger("fedma.operator")


@dataclass
class Outcome:
    status: dict[str, Any]  # merge-patch for .status
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    done: bool = False  # Succeeded or Failed: no more reconciles needed


def now_iso(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def condition(ctype: str, status: bool, reason: str, message: str, generation: int,
              now: datetime) -> dict[str, Any]:
    return {"type": ctype, "status": "True" if status else "False", "reason": reason,
            "message": message[:1000], "lastTransitionTime": now_iso(now),
            "observedGeneration": generation}


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace by type; keep lastTransitionTime when the status did not change."""
    by_type = {c["type"]: c for c in old}
    for c in new:
        prev = by_type.get(c["type"])
        if prev and prev.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": prev.get("lastTransitionTime", c["lastTransitionTime"])}
        by_type[c["type"]] = c
    return list(by_type.values())


def job_state(job: dict[str, Any]) -> tuple[JobState, str]:
    st = job.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return JobState.SUCCEEDED, ""
        if c.get("type") in ("Failed", "FailureTarget"):
            return JobState.FAILED, f"{c.get('reason', 'Failed')}: {c.get('message', '')}".strip()
    if st.get("succeeded"):
        return JobState.SUCCEEDED, ""
    if st.get("failed"):
        return JobState.FAILED, "Job failed"
    return JobState.ACTIVE, ""


def termination_summary(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The JSON summary the container wrote to its termination log (latest pod first)."""
    pods = sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "",
                  reverse=True)
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            msg = term.get("message")
            if not msg:
                continue
            try:
                out = json.loads(msg)
            except json.JSONDecodeError:
                continue
            if isinstance(out, dict):
                return out
    return None


def _digest_ok(ref: Any) -> bool:
    return (isinstance(ref, dict) and isinstance(ref.get("digest"), str)
            and len(ref["digest"]) == 64 and isinstance(ref.get("uri"), str))


def accept_spec(body: dict[str, Any], status: dict[str, Any], generation: int, now: datetime
                ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]],
                           list[tuple[str, str, str]]]:
    """The spec to act on: the one accepted at the first reconcile, kept in status.

    A spec is immutable once work started. An edit is refused with a condition and an
    Event, and the object goes on under the accepted spec (never half-applied); restoring
    the spec clears the condition. Returns (spec, status patch, conditions, events).
    """
    current = body.get("spec") or {}
    accepted = status.get("acceptedSpec") or current
    patch: dict[str, Any] = {"acceptedSpec": accepted, "observedGeneration": generation}
    refused_before = any(c.get("type") == "SpecChangeRefused" and c.get("status") == "True"
                         for c in status.get("conditions") or [])
    conds: list[dict[str, Any]] = []
    events: list[tuple[str, str, str]] = []
    if spec_hash(current) != spec_hash(accepted):
        msg = (f"spec changed at generation {generation} after work started; the change is not "
               "applied (the spec is immutable) and the object goes on with the spec it was "
               "accepted with: restore it, or create a new object")
        conds.append(condition("SpecChangeRefused", True, "SpecImmutable", msg, generation, now))
        if not refused_before:
            events.append(("Warning", "SpecChangeRefused", msg))
    elif refused_before:
        conds.append(condition("SpecChangeRefused", False, "SpecRestored",
                               "spec matches the accepted one again", generation, now))
    return accepted, patch, conds, events


def invalid(exc: SpecError, status: dict[str, Any], generation: int, now: datetime) -> Outcome:
    msg = "; ".join(f"spec.{p}: {m}" if not p.startswith(("apiVersion", "kind", "metadata"))
                    else f"{p}: {m}" for p, m in exc.errors)
    return Outcome({
        "phase": RoundPhase.FAILED, "observedGeneration": generation,
        "completionTime": now_iso(now), "message": msg,
        "conditions": merge_conditions(status.get("conditions") or [], [
            condition("InvalidSpec", True, "InvalidSpec", msg, generation, now),
            condition("Succeeded", False, "InvalidSpec", msg, generation, now)]),
    }, [("Warning", "InvalidSpec", msg)], done=True)


class RoundReconciler:
    def __init__(self, pool: ClusterPool, settings: jobs.JobSettings, metrics: Any = None,
                 cluster_grace_s: float = 60.0):
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.cluster_grace_s = cluster_grace_s

    async def reconcile(self, body: dict[str, Any], now: datetime) -> Outcome:
        meta = body.get("metadata", {})
        status = dict(body.get("status") or {})
        generation = int(meta.get("generation") or 1)
        namespace = meta.get("namespace") or "default"
        if status.get("phase") in (RoundPhase.SUCCEEDED, RoundPhase.FAILED):
            return Outcome({}, done=True)
        spec, patch, conds, events = accept_spec(body, status, generation, now)
        try:
            rnd = parse({**{k: body[k] for k in ("apiVersion", "kind", "metadata") if k in body},
                         "spec": spec},
                        source=f"FederatedRound {namespace}/{meta.get('name')}")
        except SpecError as exc:
            return invalid(exc, status, generation, now)
        assert isinstance(rnd, FederatedRound)
        start = parse_time(status.get("startTime")) or now
        patch.update(startTime=now_iso(start))
        out = await self._run(rnd, body, status, patch, conds, namespace, generation, now,
                              (now - start).total_seconds())
        out.events[:0] = events
        return out

    # -- the round ---------------------------------------------------------------------------
    async def _run(self, rnd: FederatedRound, body: dict[str, Any], status: dict[str, Any],
                   patch: dict[str, Any], conds: list[dict[str, Any]], namespace: str,
                   generation: int, now: datetime, elapsed: float) -> Outcome:
        spec = rnd.spec
        old_silos: dict[str, dict[str, Any]] = status.get("silos") or {}
        silos: dict[str, dict[str, Any]] = {k: dict(v) for k, v in old_silos.items()}
        clusters: dict[str, Cluster | None] = {}
        cluster_errors: dict[str, str] = {}
        owner = jobs.owner_reference(body) if body.get("metadata", {}).get("uid") else None
        events: list[tuple[str, str, str]] = []

        obs_silos: dict[str, SiloObservation] = {}
        # One list of this round's silo Jobs per (cluster, namespace), not one per silo.
        round_jobs: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        down: dict[str, str] = {}  # silo clusters that did not answer in this reconcile
        for silo in spec.silos:
            entry = silos.setdefault(silo.name, {"attempts": 0})
            ns = silo.namespace or namespace
            entry["namespace"] = ns
            try:
                cluster = await self.pool.for_silo(namespace, silo)
            except SiloClusterError as exc:
                cluster, cluster_errors[silo.name] = None, str(exc)
            clusters[silo.name] = cluster
            entry["cluster"] = cluster.name if cluster else silo.kubeconfig_secret
            if cluster is not None and cluster.name in down:
                obs_silos[silo.name] = self._unreachable(entry, down[cluster.name], now)
                continue
            try:
                obs_silos[silo.name] = await self._observe_silo(
                    rnd, silo.name, cluster, ns, entry, cluster_errors.get(silo.name),
                    round_jobs)
            except Exception as exc:
                if cluster is None or cluster is self.pool.hub:
                    raise  # the hub itself: the whole reconcile is retried
                # A silo's own cluster: that silo is marked, the others go on.
                down[cluster.name] = (f"silo cluster {cluster.name} unreachable: "
                                      f"{getattr(exc, 'reason', None) or exc}")
                obs_silos[silo.name] = self._unreachable(entry, down[cluster.name], now)
                continue
            if entry.get("unreachableSince"):  # its cluster answers again
                entry["unreachableSince"] = None  # null: a merge patch deletes the field
                if entry.get("jobState") == JobState.ACTIVE:
                    entry["reason"] = ""  # the waiting note is stale

        agg = dict(status.get("aggregation") or {})
        agg_state, agg_reason = await self._observe_aggregation(rnd, namespace, agg)
        obs = Observation(obs_silos, agg_state, agg_reason, elapsed)
        policy = Policy(tuple(s.name for s in spec.silos), spec.quorum,
                        spec.aggregation.deadline_seconds, spec.aggregation.backoff_limit)
        decision = decide(policy, obs)

        # Act: launches first, each recorded in status with the attempt it is.
        for launch in decision.launch:
            silo = next(s for s in spec.silos if s.name == launch.silo)
            entry = silos[silo.name]
            cluster = clusters[silo.name]
            name = jobs.silo_job_name(rnd.metadata.name, silo.name, launch.attempt)
            entry.update(attempts=launch.attempt, job=name, jobState=JobState.ACTIVE,
                         reason="", launchedAt=now_iso(now))
            if cluster is None:
                entry.update(jobState=JobState.FAILED, reason=cluster_errors[silo.name])
                continue
            # An ownerReference only binds within one namespace of one cluster: the garbage
            # collector treats an owner in another namespace as absent and deletes the Job.
            same = cluster is self.pool.hub and entry["namespace"] == namespace
            manifest = jobs.silo_job(rnd, silo, launch.attempt, entry["namespace"],
                                     self.settings, owner if same else None)
            try:
                created = await cluster.create_job(entry["namespace"], manifest)
            except Exception as exc:
                reason = (f"cannot create Job {name} in {cluster.name}: "
                          f"{getattr(exc, 'reason', None) or exc}")
                entry.update(jobState=JobState.FAILED, reason=reason)
                events.append(("Warning", "JobCreateFailed", f"silo {silo.name}: {reason}"))
                continue
            if created:
                events.append(("Normal", "SiloJobCreated",
                               f"silo {silo.name}: Job {name} (attempt {launch.attempt})"))
                if self.metrics:
                    self.metrics.silo_job_started(spec.training_name, silo.name,
                                                  launch.attempt)

        included_recorded = agg.get("included")
        if decision.aggregate is not None and not included_recorded:
            included = {s: silos[s]["update"]["digest"] for s in decision.aggregate.included}
            agg.update(job=jobs.aggregation_job_name(rnd.metadata.name), included=included,
                       launchedAt=now_iso(now), phase=JobState.ACTIVE)
            manifest = jobs.aggregation_job(rnd, included, namespace, self.settings, owner)
            try:
                if await self.pool.hub.create_job(namespace, manifest):
                    events.append(("Normal", "AggregationJobCreated",
                                   f"Job {agg['job']}: {len(included)} silo updates"))
            except Exception as exc:
                agg.update(phase=JobState.FAILED,
                           reason=f"cannot create Job {agg['job']}: {exc}")

        # Silos settled by the decision: stragglers' Jobs are stopped (they hold GPUs).
        recorded = set((agg.get("included") or {}).keys())
        for name, phase in decision.silo_phases.items():
            entry = silos[name]
            if recorded and phase == SiloPhase.SUCCEEDED and name not in recorded:
                phase = SiloPhase.EXCLUDED
                decision.reasons[name] = ("finished after aggregation started; its update is "
                                          "not used")
            was = old_silos.get(name, {}).get("phase")
            entry["phase"] = phase
            entry["reason"] = decision.reasons.get(name, entry.get("reason", "")
                                                   if phase != SiloPhase.SUCCEEDED else "")
            if phase == SiloPhase.EXCLUDED and was != SiloPhase.EXCLUDED:
                events.append(("Warning", "SiloExcluded", f"silo {name}: {entry['reason']}"))
                if self.metrics:
                    self.metrics.silo_excluded(spec.training_name, name)
                cluster = clusters.get(name)
                if entry.get("jobState") == JobState.ACTIVE and cluster is not None:
                    try:
                        await cluster.delete_job(entry["namespace"], entry["job"])
                    except Exception as exc:  # the round goes on; the Job ends at its deadline
                        why = getattr(exc, "reason", None) or exc
                        events.append(("Warning", "JobDeleteFailed",
                                       f"silo {name}: cannot delete Job {entry['job']} in "
                                       f"{cluster.name}: {why}"))
                    entry["jobState"] = JobState.FAILED
            if phase == SiloPhase.SUCCEEDED and was != SiloPhase.SUCCEEDED and self.metrics:
                self.metrics.silo_succeeded(spec.training_name, name, entry)

        phase = decision.phase
        message = decision.message
        done = phase in (RoundPhase.SUCCEEDED, RoundPhase.FAILED)
        if phase == RoundPhase.SUCCEEDED:
            summary = agg.get("summary") or {}
            agg["phase"] = JobState.SUCCEEDED
            patch["loss"] = summary.get("loss")
            patch["output"] = summary.get("output")
            patch["serverState"] = summary.get("server_state")
            rejected = summary.get("rejected") or {}
            for silo_name, why in rejected.items():
                if silo_name in silos:
                    silos[silo_name].update(phase=SiloPhase.EXCLUDED,
                                            reason=f"rejected by the aggregator: {why}")
            for silo_name, note in (summary.get("notes") or {}).items():
                if silo_name in silos:  # included, but bounded by a robust rule
                    silos[silo_name]["note"] = str(note)
            agg["excluded"] = sorted(s for s, e in silos.items()
                                     if e.get("phase") == SiloPhase.EXCLUDED)
        if done:
            patch["completionTime"] = now_iso(now)
            conds.append(condition("Succeeded", phase == RoundPhase.SUCCEEDED, str(phase),
                                   message, generation, now))
        done_count = sum(1 for e in silos.values() if e.get("phase") in (SiloPhase.SUCCEEDED,))
        losses = [e["loss"] for e in silos.values() if isinstance(e.get("loss"), int | float)]
        if "loss" not in patch and losses:
            patch["loss"] = round(sum(losses) / len(losses), 6)
        patch.update(phase=phase, message=message, silos=silos, aggregation=agg,
                     silosDone=f"{done_count}/{len(spec.silos)}")
        old_phase = status.get("phase")
        if phase != old_phase:
            patch["phaseSince"] = now_iso(now)
            kind = "Warning" if phase == RoundPhase.FAILED else "Normal"
            events.append((kind, f"Round{phase}", message))
            if self.metrics:
                self.metrics.round_phase(spec.training_name, str(old_phase or ""), str(phase),
                                         body, now)
        if self.metrics:
            if done:
                self.metrics.round_finished(spec.training_name, rnd.metadata.name)
            else:
                budget = timedelta(seconds=elapsed - 2 * spec.aggregation.deadline_seconds)
                self.metrics.round_active(spec.training_name, rnd.metadata.name, now - budget)
        patch["conditions"] = merge_conditions(status.get("conditions") or [], conds)
        return Outcome(patch, events, done)

    async def _observe_silo(self, rnd: FederatedRound, silo: str, cluster: Cluster | None,
                            namespace: str, entry: dict[str, Any], cluster_error: str | None,
                            round_jobs: dict[tuple[str, ...], list[dict[str, Any]]]
                            ) -> SiloObservation:
        attempts = int(entry.get("attempts") or 0)
        recorded = entry.get("jobState")
        if cluster is None:
            if attempts and recorded == JobState.FAILED:
                return SiloObservation(attempts, JobState.FAILED, entry.get("reason", ""))
            return SiloObservation(attempts, JobState.ABSENT if not attempts else JobState.FAILED,
                                   cluster_error or "")
        if recorded == JobState.SUCCEEDED and attempts:
            return SiloObservation(attempts, JobState.SUCCEEDED)
        key = (cluster.name, namespace)
        if key not in round_jobs:
            round_jobs[key] = await cluster.list_jobs(namespace, {
                f"{jobs.LABEL}/round-name": rnd.metadata.name, f"{jobs.LABEL}/role": "silo"})
        found = [j for j in round_jobs[key] if j["metadata"]["labels"].get(
            f"{jobs.LABEL}/silo") == silo]
        by_attempt = {int(j["metadata"]["labels"][f"{jobs.LABEL}/attempt"]): j for j in found
                      if j["metadata"]["labels"].get(f"{jobs.LABEL}/attempt", "").isdigit()}
        if by_attempt and max(by_attempt) > attempts:
            # Created by an operator that died before it recorded the launch: adopt it.
            attempts = max(by_attempt)
            entry.update(attempts=attempts, job=by_attempt[attempts]["metadata"]["name"],
                         jobState=JobState.ACTIVE)
        if not attempts:
            return SiloObservation()
        job = by_attempt.get(attempts)
        if job is None:
            if recorded == JobState.FAILED:
                return SiloObservation(attempts, JobState.FAILED, entry.get("reason", ""))
            entry.update(jobState=JobState.FAILED,
                         reason=f"Job {entry.get('job')} disappeared before it finished")
            return SiloObservation(attempts, JobState.FAILED, entry["reason"])
        state, reason = job_state(job)
        if state == JobState.ACTIVE:
            entry["jobState"] = JobState.ACTIVE
            return SiloObservation(attempts, JobState.ACTIVE)
        # One pod list per cluster and namespace per reconcile, as for Jobs (was one per silo:
        # 100 silos finishing together cost 100 lists; bench/operator.py), selected by the
        # round's labels, which a Job's pods carry from its template (not the namespace's
        # every pod: that list grew with the cluster; bench/load.py).
        pods_key = (cluster.name, namespace, "pods")
        if pods_key not in round_jobs:
            round_jobs[pods_key] = await cluster.list_pods(namespace, {
                f"{jobs.LABEL}/round-name": rnd.metadata.name, f"{jobs.LABEL}/role": "silo"})
        pods = [p for p in round_jobs[pods_key] if matches(p, {"job-name":
                                                               job["metadata"]["name"]})]
        summary = termination_summary(pods)
        if state == JobState.FAILED:
            why = (summary or {}).get("reason") or reason or "training Job failed"
            entry.update(jobState=JobState.FAILED, reason=why)
            return SiloObservation(attempts, JobState.FAILED, why)
        if not summary or summary.get("status") != "Succeeded" or not _digest_ok(
                summary.get("update")):
            why = "the Job succeeded but left no valid summary (update URI + sha256) in its " \
                  "termination message"
            entry.update(jobState=JobState.FAILED, reason=why)
            return SiloObservation(attempts, JobState.SUCCEEDED, rejected=why)
        entry.update(jobState=JobState.SUCCEEDED, reason="", update=summary["update"],
                     samples=summary.get("samples"), loss=summary.get("loss"),
                     steps=summary.get("steps"), seconds=summary.get("seconds"))
        return SiloObservation(attempts, JobState.SUCCEEDED)

    def _unreachable(self, entry: dict[str, Any], why: str, now: datetime) -> SiloObservation:
        """A silo whose own cluster does not answer: its last known state stands for
        ``cluster_grace_s`` (a blip costs nothing), then its attempt counts as failed with
        the reason — retried within the backoff limit, else excluded, and the round goes on
        by quorum instead of waiting on a cluster it cannot see."""
        since = parse_time(entry.get("unreachableSince")) or now
        entry["unreachableSince"] = now_iso(since)
        attempts = int(entry.get("attempts") or 0)
        recorded = entry.get("jobState")
        if recorded == JobState.SUCCEEDED and attempts:
            return SiloObservation(attempts, JobState.SUCCEEDED)
        if recorded == JobState.FAILED and attempts:
            return SiloObservation(attempts, JobState.FAILED, entry.get("reason", ""))
        if attempts and (now - since).total_seconds() < self.cluster_grace_s:
            entry["reason"] = f"{why} (since {now_iso(since)}; waiting)"
            return SiloObservation(attempts, JobState.ACTIVE)
        if not attempts:
            return SiloObservation(0, JobState.ABSENT)  # the launch will say if it fails
        reason = f"{why} for {(now - since).total_seconds():.0f} s"
        entry.update(jobState=JobState.FAILED, reason=reason)
        return SiloObservation(attempts, JobState.FAILED, reason)

    async def _observe_aggregation(self, rnd: FederatedRound, namespace: str,
                                   agg: dict[str, Any]) -> tuple[JobState, str]:
        if not agg.get("included"):
            return JobState.ABSENT, ""
        if agg.get("phase") == JobState.FAILED:
            return JobState.FAILED, agg.get("reason", "")
        if agg.get("phase") == JobState.SUCCEEDED and agg.get("summary"):
            return JobState.SUCCEEDED, ""
        hub = self.pool.hub
        found = await hub.list_jobs(namespace, {f"{jobs.LABEL}/round-name": rnd.metadata.name,
                                                f"{jobs.LABEL}/role": "aggregate"})
        if not found:
            # Recorded but not there: created by a crashed reconcile? Create it (again).
            manifest = jobs.aggregation_job(rnd, agg["included"], namespace, self.settings,
                                            None)
            await hub.create_job(namespace, manifest)
            return JobState.ACTIVE, ""
        state, reason = job_state(found[0])
        if state == JobState.ACTIVE:
            return state, ""
        summary = termination_summary(await hub.list_pods(
            namespace, {"job-name": found[0]["metadata"]["name"]}))
        if state == JobState.FAILED:
            agg.update(phase=JobState.FAILED,
                       reason=(summary or {}).get("reason") or reason or "Job failed")
            return JobState.FAILED, agg["reason"]
        if not summary or not _digest_ok(summary.get("output")):
            agg.update(phase=JobState.FAILED, reason="the aggregation Job succeeded but left "
                       "no output URI + sha256 in its termination message")
            return JobState.FAILED, agg["reason"]
        agg.update(phase=JobState.SUCCEEDED, summary={
            k: summary.get(k) for k in ("output", "server_state", "included", "rejected",
                                        "notes", "samples", "loss")})
        return JobState.SUCCEEDED, ""
