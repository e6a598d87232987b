"""Observe a round: where each silo's Job runs, what its latest attempt is doing, what the
aggregation Job is doing. Reads only; nothing here creates or deletes.

Silo clusters are observed concurrently, each (cluster, namespace) with one label-selected
list of the round's Jobs and, only when some finished, one of their pods. Every call has the
operator's API deadline, and a group stops at its first failure, so a silo endpoint that
accepts and never answers costs one deadline per reconcile (not one per silo, and not one
after another), and its silos then ride out the grace of :func:`unreachable`.

Jobs are this round's only when they carry its uid (``fedma.io/round-uid``): a Job of the
same name from an earlier object under the same name is not adopted (see act.py for the
conflict it becomes).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fedma.rounds import JobState, SiloObservation
from fedma.spec import FederatedRound
from fedma_operator import jobs
from fedma_operator.clusters import ClusterPool, SiloClusterError
from fedma_operator.kube import Cluster, Selector, why
from fedma_operator.status import now_iso, parse_time


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


def ours(job: dict[str, Any], uid: str | None) -> bool:
    """A Job of this very round object (any Job of its name when the round has no uid yet)."""
    return uid is None or (job["metadata"].get("labels") or {}).get(
        f"{jobs.LABEL}/round-uid") == uid


@dataclass(frozen=True)
class Placement:
    """Where a silo's Jobs run; ``cluster`` is None when its kubeconfig Secret is unusable."""

    cluster: Cluster | None
    namespace: str
    error: str = ""


async def place(pool: ClusterPool, rnd: FederatedRound, namespace: str
                ) -> dict[str, Placement]:
    """Each silo's cluster and namespace: one Secret read per kubeconfig Secret named,
    concurrently."""
    secrets = {s.kubeconfig_secret: s for s in rnd.spec.silos if s.kubeconfig_secret}
    names = list(secrets)
    found = await asyncio.gather(*(pool.for_silo(namespace, secrets[n]) for n in names),
                                 return_exceptions=True)
    by_secret = dict(zip(names, found, strict=True))
    out: dict[str, Placement] = {}
    for silo in rnd.spec.silos:
        ns = silo.namespace or namespace
        got = by_secret.get(silo.kubeconfig_secret) if silo.kubeconfig_secret else pool.hub
        if isinstance(got, SiloClusterError):
            # The message names the silo that first named the Secret; name this one.
            first = secrets[silo.kubeconfig_secret].name  # type: ignore[index]
            out[silo.name] = Placement(None, ns, str(got).replace(
                f"silo {first}:", f"silo {silo.name}:", 1))
        elif isinstance(got, BaseException):
            raise got
        else:
            out[silo.name] = Placement(got, ns)
    return out


def failed_before(entry: dict[str, Any], attempts: int) -> SiloObservation:
    """The failure status recorded for the latest attempt, as an observation (its reason,
    and whether the attempt said a retry cannot succeed)."""
    return SiloObservation(attempts, JobState.FAILED, entry.get("reason", ""),
                           permanent=entry.get("retry") is False)


def unreachable(entry: dict[str, Any], why: str, now: datetime, grace_s: float
                ) -> SiloObservation:
    """A silo whose own cluster does not answer: its last known state stands for
    ``grace_s`` (a blip costs nothing), then its attempt counts as failed with the reason —
    retried within the backoff limit, else excluded, and the round goes on by quorum instead
    of waiting on a cluster it cannot see."""
    since = parse_time(entry.get("unreachableSince")) or now
    entry["unreachableSince"] = now_iso(since)
    attempts = int(entry.get("attempts") or 0)
    recorded = entry.get("jobState")
    if recorded == JobState.SUCCEEDED and attempts:
        return SiloObservation(attempts, JobState.SUCCEEDED)
    if recorded == JobState.FAILED and attempts:
        return failed_before(entry, attempts)
    if attempts and (now - since).total_seconds() < grace_s:
        entry["reason"] = f"{why} (since {now_iso(since)}; waiting)"
        return SiloObservation(attempts, JobState.ACTIVE)
    if not attempts:
        return SiloObservation(0, JobState.ABSENT)  # the launch will say if it fails
    reason = f"{why} for {(now - since).total_seconds():.0f} s"
    entry.update(jobState=JobState.FAILED, reason=reason)
    return SiloObservation(attempts, JobState.FAILED, reason)


# A container waiting for one of these is not going to start by itself soon: the silo's
# status says so (``waiting``) instead of "Running" until the deadline.
STUCK = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                   "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                   "CrashLoopBackOff"})
# A Job running this long gets its pods looked at (one pod list for all such Jobs of the
# group): a round whose Jobs finish sooner never pays for it.
POD_CHECK_AFTER_S = 15.0


def pod_trouble(pod: dict[str, Any]) -> str:
    """Why a pod of a running Job is not getting anywhere, or ""; or how it ended badly
    (OOMKilled, Evicted) when the Job failed."""
    st = pod.get("status") or {}
    if st.get("reason") == "Evicted":
        return f"Evicted: {st.get('message', '')}"[:300]
    for c in st.get("conditions") or []:
        if (c.get("type") == "PodScheduled" and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"):
            return f"Unschedulable: {c.get('message', '')}"[:300]
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK:
            return f"{waiting['reason']}: {waiting.get('message', '')}"[:300]
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            if ((state.get("terminated") or {}).get("reason")) == "OOMKilled":
                return "OOMKilled: the container exceeded its memory limit"
    return ""


def first_trouble(pods: list[dict[str, Any]]) -> str:
    return next((t for t in map(pod_trouble, pods) if t), "")


def no_pod(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """Why a Job running past ``POD_CHECK_AFTER_S`` has not one pod, or "" when it has: its
    controller could not create one (FailedCreate: a ResourceQuota, a LimitRange, PodSecurity
    admission or a webhook refused the pod). The refusal itself is only in the Job's Events,
    which the operator has no right to read; say where to look instead of "Running"."""
    if pods:
        return ""
    name = job["metadata"]["name"]
    return (f"FailedCreate: no pod after {POD_CHECK_AFTER_S:.0f} s; the Job controller could "
            f"not create one (a ResourceQuota, LimitRange or admission policy refused it; "
            f"kubectl describe job {name} says which)")


def queue_clock(job: dict[str, Any], entry: dict[str, Any], now: datetime
                ) -> tuple[bool, float]:
    """A queued silo's own clock (Kueue): while its Job is suspended (not admitted, or
    preempted and put back) the seconds since the Job was created, else the seconds since
    admission, when the Job controller started it (``status.startTime``, which it resets
    at each resume). ``entry`` records ``admittedAt`` (null while queued) for people."""
    meta, spec, st = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    if spec.get("suspend"):
        entry.pop("admittedAt", None)
        created = parse_time(meta.get("creationTimestamp")) or now
        return True, max(0.0, (now - created).total_seconds())
    admitted = parse_time(st.get("startTime")) or now
    entry["admittedAt"] = now_iso(admitted)
    return False, max(0.0, (now - admitted).total_seconds())


def _recorded(entry: dict[str, Any]) -> SiloObservation | None:
    """What status already settled for the latest attempt (no need to look again)."""
    attempts = int(entry.get("attempts") or 0)
    if attempts and entry.get("jobState") == JobState.SUCCEEDED:
        return SiloObservation(attempts, JobState.SUCCEEDED)
    return None


def _latest(entry: dict[str, Any], found: list[dict[str, Any]]
            ) -> tuple[int, dict[str, Any] | None]:
    """The latest attempt and its Job; a Job newer than status knows (created by an operator
    that died before it recorded the launch) is adopted."""
    attempts = int(entry.get("attempts") or 0)
    by_attempt = {int(j["metadata"]["labels"][f"{jobs.LABEL}/attempt"]): j for j in found
                  if j["metadata"]["labels"].get(f"{jobs.LABEL}/attempt", "").isdigit()}
    if by_attempt and max(by_attempt) > attempts:
        attempts = max(by_attempt)
        entry.update(attempts=attempts, job=by_attempt[attempts]["metadata"]["name"],
                     jobState=JobState.ACTIVE)
    return attempts, by_attempt.get(attempts)


def _finished(entry: dict[str, Any], attempts: int, state: JobState, reason: str,
              summary: dict[str, Any] | None) -> SiloObservation:
    if state == JobState.FAILED:
        why = (summary or {}).get("reason") or reason or "training Job failed"
        entry.update(jobState=JobState.FAILED, reason=why)
        if (summary or {}).get("retry") is False:  # bad data: fedma.rounds does not retry
            entry["retry"] = False
        return failed_before(entry, attempts)
    if not summary or summary.get("status") != "Succeeded" or not _digest_ok(
            summary.get("update")):
        why = ("the Job succeeded but left no valid summary (update URI + sha256) in its "
               "termination message")
        entry.update(jobState=JobState.FAILED, reason=why)
        return SiloObservation(attempts, JobState.SUCCEEDED, rejected=why)
    entry.update(jobState=JobState.SUCCEEDED, reason="", update=summary["update"],
                 samples=summary.get("samples"), loss=summary.get("loss"),
                 steps=summary.get("steps"), seconds=summary.get("seconds"))
    return SiloObservation(attempts, JobState.SUCCEEDED)


async def observe_group(rnd: FederatedRound, cluster: Cluster, namespace: str,
                        entries: dict[str, dict[str, Any]], now: datetime | None = None
                        ) -> dict[str, SiloObservation]:
    """The silos of one (cluster, namespace): one list of the round's Jobs there and, when
    some finished, one list of their pods (not one per silo: 100 silos finishing together
    cost 100 lists; nor the namespace's every pod: that grew with the cluster)."""
    out: dict[str, SiloObservation] = {}
    pending = {}
    for silo, entry in entries.items():
        recorded = _recorded(entry)
        if recorded is not None:
            out[silo] = recorded
        else:
            pending[silo] = entry
    if not pending:
        return out
    selector: Selector = {f"{jobs.LABEL}/round-name": rnd.metadata.name,
                          f"{jobs.LABEL}/role": "silo"}
    uid = jobs.round_uid(rnd)
    in_queue = {s.name for s in rnd.spec.silos if s.queue_name}
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    # Only the silos still open: a round's late reconciles read a few Jobs, not all of them.
    wanted = selector if len(pending) == len(entries) else {
        **selector, f"{jobs.LABEL}/silo": frozenset(pending)}
    for job in await cluster.list_jobs(namespace, wanted):
        if ours(job, uid):
            found[job["metadata"]["labels"].get(f"{jobs.LABEL}/silo", "")].append(job)
    done: dict[str, tuple[int, dict[str, Any], JobState, str]] = {}
    slow: dict[str, dict[str, Any]] = {}  # running for a while: worth a look at their pods
    for silo, entry in pending.items():
        attempts, job = _latest(entry, found.get(silo, []))
        if not attempts:
            out[silo] = SiloObservation()
        elif job is None:
            if entry.get("jobState") != JobState.FAILED:
                entry.update(jobState=JobState.FAILED,
                             reason=f"Job {entry.get('job')} disappeared before it finished")
            out[silo] = failed_before(entry, attempts)
        else:
            state, reason = job_state(job)
            if state == JobState.ACTIVE:
                entry["jobState"] = JobState.ACTIVE
                queued, clock = (queue_clock(job, entry, now) if silo in in_queue
                                 and now is not None else (False, None))
                out[silo] = SiloObservation(attempts, JobState.ACTIVE, queued=queued,
                                            clock_s=clock)
                started = parse_time(entry.get("admittedAt") if silo in in_queue
                                     else entry.get("launchedAt"))
                if now is not None and started is not None and not queued and (
                        now - started).total_seconds() >= POD_CHECK_AFTER_S:
                    slow[silo] = job
            else:
                done[silo] = (attempts, job, state, reason)
    if done or slow:
        pods: dict[str, list[dict[str, Any]]] = defaultdict(list)
        names = frozenset(job["metadata"]["name"] for _, job, _, _ in done.values()) | \
            frozenset(job["metadata"]["name"] for job in slow.values())
        for pod in await cluster.list_pods(namespace, {**selector, "job-name": names}):
            pods[(pod["metadata"].get("labels") or {}).get("job-name", "")].append(pod)
        for silo, (attempts, job, state, reason) in done.items():
            got = pods.get(job["metadata"]["name"], [])
            summary = termination_summary(got)
            trouble = first_trouble(got)
            if state == JobState.FAILED and trouble and not (summary or {}).get("reason"):
                reason = f"{reason}: {trouble}" if reason else trouble
            pending[silo].pop("waiting", None)
            out[silo] = _finished(pending[silo], attempts, state, reason, summary)
        for silo, job in slow.items():
            got = pods.get(job["metadata"]["name"], [])
            trouble = first_trouble(got) or no_pod(job, got)
            if trouble:
                pending[silo]["waiting"] = trouble
            else:
                pending[silo].pop("waiting", None)
    return out


async def observe_silos(rnd: FederatedRound, placements: dict[str, Placement],
                        entries: dict[str, dict[str, Any]], hub: Cluster, now: datetime,
                        grace_s: float) -> dict[str, SiloObservation]:
    """Every silo, all (cluster, namespace) groups at once. A group in a silo's own cluster
    that fails marks its silos unreachable; a failure on the hub fails the reconcile (it is
    retried whole: the hub holds the round itself)."""
    out: dict[str, SiloObservation] = {}
    groups: dict[tuple[str, str], tuple[Cluster, dict[str, dict[str, Any]]]] = {}
    for silo, where in placements.items():
        entry = entries[silo]
        if where.cluster is None:
            attempts = int(entry.get("attempts") or 0)
            if attempts and entry.get("jobState") == JobState.FAILED:
                out[silo] = failed_before(entry, attempts)
            else:
                out[silo] = SiloObservation(attempts, JobState.ABSENT if not attempts
                                            else JobState.FAILED, where.error)
            continue
        key = (where.cluster.name, where.namespace)
        groups.setdefault(key, (where.cluster, {}))[1][silo] = entry
    keys = list(groups)
    results = await asyncio.gather(*(observe_group(rnd, groups[k][0], k[1], groups[k][1], now)
                                     for k in keys), return_exceptions=True)
    for key, result in zip(keys, results, strict=True):
        cluster, members = groups[key]
        if isinstance(result, BaseException):
            if cluster is hub or not isinstance(result, Exception):
                raise result
            reason = f"silo cluster {cluster.name} unreachable: {why(result)}"
            out.update({s: unreachable(e, reason, now, grace_s) for s, e in members.items()})
            continue
        out.update(result)
        for entry in members.values():
            if entry.get("unreachableSince"):  # its cluster answers again
                entry["unreachableSince"] = None  # null: a merge patch deletes the field
                if entry.get("jobState") == JobState.ACTIVE:
                    entry["reason"] = ""  # the waiting note is stale
    return out


@dataclass(frozen=True)
class AggregationSeen:
    state: JobState
    reason: str = ""
    missing: bool = False  # recorded in status but not there: act creates it (again)


async def observe_aggregation(rnd: FederatedRound, hub: Cluster, namespace: str,
                              agg: dict[str, Any]) -> AggregationSeen:
    """The aggregation Job, once status records its included set; ``agg`` (the status
    entry) gets its verdict and, on success, the summary the round reports."""
    if not agg.get("included"):
        return AggregationSeen(JobState.ABSENT)
    if agg.get("phase") == JobState.FAILED:
        return AggregationSeen(JobState.FAILED, agg.get("reason", ""))
    if agg.get("phase") == JobState.SUCCEEDED and agg.get("summary"):
        return AggregationSeen(JobState.SUCCEEDED)
    selector = {f"{jobs.LABEL}/round-name": rnd.metadata.name,
                f"{jobs.LABEL}/role": "aggregate"}
    uid = jobs.round_uid(rnd)
    found = [j for j in await hub.list_jobs(namespace, selector) if ours(j, uid)]
    if not found:
        return AggregationSeen(JobState.ACTIVE, missing=True)
    state, reason = job_state(found[0])
    if state == JobState.ACTIVE:
        return AggregationSeen(state)
    name = found[0]["metadata"]["name"]
    summary = termination_summary(await hub.list_pods(namespace, {"job-name": name}))
    if state == JobState.FAILED:
        agg.update(phase=JobState.FAILED,
                   reason=(summary or {}).get("reason") or reason or "Job failed")
        return AggregationSeen(JobState.FAILED, agg["reason"])
    if not summary or not _digest_ok(summary.get("output")):
        agg.update(phase=JobState.FAILED, reason="the aggregation Job succeeded but left "
                   "no output URI + sha256 in its termination message")
        return AggregationSeen(JobState.FAILED, agg["reason"])
    agg.update(phase=JobState.SUCCEEDED, summary={
        k: summary.get(k) for k in ("output", "server_state", "rejected", "notes",
                                    "rejectedMask", "notesMask", "samples", "loss", "robust",
                                    "truncated") if summary.get(k) is not None})
    return AggregationSeen(JobState.SUCCEEDED)
