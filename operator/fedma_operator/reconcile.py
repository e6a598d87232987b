"""One reconcile of a FederatedRound: observe → decide → act → report.

- observe (observe.py): every silo's latest attempt, all silo clusters at once, and the
  aggregation Job; reads only;
- decide: the pure round state machine (``fedma.rounds.decide``), shared with the local
  runner;
- act (act.py): create what the decision launches, stop stragglers, remove the round's file
  when it ends;
- report (report.py): a pure function from observation and decision to the status patch.

All progress lives in the object's status and in the Jobs' own status (and, for results, in
the store the Jobs write to); nothing is kept in memory between reconciles. So an operator
killed at any point and restarted reaches the same decision from the same observation:
deterministic Job names and the round's uid on each Job let it adopt exactly what it created,
a finished attempt's summary is copied into status before it is acted on, and the aggregation
Job gets the included set recorded in status, never a recomputed one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fedma.rounds import JobState, Observation, Policy, RoundPhase, decide
from fedma.spec import FederatedRound, SpecError, parse
from fedma_operator import jobs
from fedma_operator.act import Actor
from fedma_operator.clusters import ClusterPool
from fedma_operator.observe import Placement, observe_aggregation, observe_silos, place
from fedma_operator.report import Settled, report, settle
from fedma_operator.status import Outcome, accept_spec, invalid, now_iso, parse_time
from fedma_operator.tenancy import Tenancy

log = logging.getLogger("fedma.operator")


# Between two reconciles of a round whose every Job the hub watches, at most this long: the
# watch wakes it when a Job finishes, the deadline when time is up; this is the safety net.
WATCHED_RECHECK_S = 60.0
POD_RECHECK_S = 30.0
# A woken round reconciles at most every GAP_PER_SILO_S × silos seconds, up to MAX_GAP_S (and
# at least every 0.5 s, handlers.py): its reconcile reads, decides and writes in proportion to
# its silos, so Jobs finishing one after another cost the operator a bounded share of a core
# however large the round (3 s between reconciles at 100 silos, 10 s from 334), not one
# reconcile per Job. At 100 silos, 3 s (not 1 s) cut the Job lists and status writes of a
# round by 40 % in bench/load.py; a Job's result waits at most that long to be seen.
GAP_PER_SILO_S = 0.03
MAX_GAP_S = 10.0


def parse_round(body: dict[str, Any], spec: dict[str, Any], source: str = "manifest"
                ) -> FederatedRound:
    """The round object with ``spec``, and of its metadata only what identifies it: the Jobs'
    round file must not change with every write (resourceVersion, managedFields)."""
    meta = body.get("metadata") or {}
    ident = {k: meta[k] for k in ("name", "namespace", "uid") if meta.get(k)}
    rnd = parse({"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                 "metadata": ident, "spec": spec}, source=source)
    if not isinstance(rnd, FederatedRound):
        raise SpecError(source, [("kind", "must be FederatedRound")])
    return rnd


class RoundReconciler:
    def __init__(self, pool: ClusterPool, settings: jobs.JobSettings, metrics: Any = None,
                 cluster_grace_s: float = 60.0,
                 watched: Callable[[str], bool] = lambda namespace: False,
                 tenancy: Tenancy | None = None):
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.cluster_grace_s = cluster_grace_s
        self.watched = watched  # is this hub namespace in the operator's Job watch?
        self.tenancy = tenancy or Tenancy(trainer_image=settings.trainer_image)

    async def reconcile(self, body: dict[str, Any], now: datetime) -> Outcome:
        meta = body.get("metadata", {})
        status = dict(body.get("status") or {})
        generation = int(meta.get("generation") or 1)
        namespace = meta.get("namespace") or "default"
        if status.get("phase") in (RoundPhase.SUCCEEDED, RoundPhase.FAILED):
            return Outcome({}, done=True)
        spec, patch, conds, events = accept_spec(body, status, generation, now)
        source = f"FederatedRound {namespace}/{meta.get('name')}"
        try:
            rnd = parse_round(body, spec, source)
        except SpecError as exc:
            return invalid(exc, status, generation, now)
        refused = self.tenancy.check(rnd.spec.silos, namespace, source)
        if refused is not None:
            return invalid(refused, status, generation, now, reason="NotPermitted")
        start = parse_time(status.get("startTime")) or now
        patch.update(startTime=now_iso(start))
        elapsed = (now - start).total_seconds()

        # Observe.
        old: dict[str, dict[str, Any]] = status.get("silos") or {}
        entries = {s.name: {"attempts": 0, **old.get(s.name, {})} for s in rnd.spec.silos}
        placements = await place(self.pool, rnd, namespace)
        for silo in rnd.spec.silos:
            where = placements[silo.name]
            entries[silo.name].update(namespace=where.namespace, cluster=where.cluster.name
                                      if where.cluster else silo.kubeconfig_secret)
        agg = dict(status.get("aggregation") or {})
        silos = await observe_silos(rnd, placements, entries, self.pool.hub, now,
                                    self.cluster_grace_s)
        seen = await observe_aggregation(rnd, self.pool.hub, namespace, agg)

        # Decide.
        spec_ = rnd.spec
        policy = Policy(tuple(s.name for s in spec_.silos), spec_.quorum,
                        spec_.aggregation.deadline_seconds, spec_.aggregation.backoff_limit)
        decision = decide(policy, Observation(silos, seen.state, seen.reason, elapsed))

        # Act.
        owner = jobs.owner_reference(body) if meta.get("uid") else None
        actor = Actor(rnd, namespace, self.settings, owner, self.pool.hub,
                      status.get("roundFile") or {})
        await actor.launch_silos(decision, placements, entries, now)
        if seen.missing:
            await actor.launch_aggregation(agg, agg["included"], now, again=True)
        elif decision.aggregate is not None and not agg.get("included"):
            await actor.launch_aggregation(
                agg, {s: entries[s]["update"]["digest"] for s in decision.aggregate.included},
                now)
        settled = settle(decision, old, entries, agg)
        await actor.stop(settled.excluded, placements, entries)
        if decision.phase in (RoundPhase.SUCCEEDED, RoundPhase.FAILED):
            await actor.remove_files(placements)
        patch["roundFile"] = actor.file

        # Report.
        patch, reported, done = report(decision, status, patch, conds, entries, agg, settled,
                                       generation, now, policy.quorum)
        self._metrics(rnd, body, status, patch, settled, actor.acts.started, entries, elapsed,
                      now, done)
        return Outcome(patch, [*events, *actor.acts.events, *reported], done,
                       self._recheck(placements, spec_.aggregation.deadline_seconds, elapsed,
                                     any(e.get("jobState") == JobState.ACTIVE
                                         for e in entries.values()),
                                     any(s.queue_name and entries[s.name].get("jobState")
                                         == JobState.ACTIVE for s in spec_.silos)),
                       min(MAX_GAP_S, GAP_PER_SILO_S * len(spec_.silos)))

    def _recheck(self, placements: dict[str, Placement], deadline_s: float, elapsed: float,
                 running: bool = False, queued: bool = False) -> float | None:
        """No poll when the hub's Job watch sees every Job of the round (it wakes the loop
        when one finishes): wait for it, or for the round's deadline. A silo in another
        cluster, or in an unwatched namespace, keeps the interval (its only clock); so does
        a silo in a queue past the round's deadline (its own deadline is still to come)."""
        if any(p.cluster is not self.pool.hub or not self.watched(p.namespace)
               for p in placements.values()):
            return None
        left = deadline_s - elapsed
        # Running Jobs get their pods looked at (observe.pod_trouble) this often: a pod stuck
        # on its image or a missing Secret shows in status within a minute, not at the deadline.
        every = POD_RECHECK_S if running else WATCHED_RECHECK_S
        return min(every, left + 0.5) if left > 0 else (every if queued else None)

    def _metrics(self, rnd: FederatedRound, body: dict[str, Any], status: dict[str, Any],
                 patch: dict[str, Any], settled: Settled, started: list[tuple[str, int]],
                 entries: dict[str, dict[str, Any]], elapsed: float, now: datetime,
                 done: bool) -> None:
        if not self.metrics:
            return
        training = rnd.spec.training_name
        for silo, attempt in started:
            self.metrics.silo_job_started(training, silo, attempt)
        for silo in settled.excluded:
            self.metrics.silo_excluded(training, silo)
        for silo in settled.succeeded:
            self.metrics.silo_succeeded(training, silo, entries[silo])
        if patch["phase"] != status.get("phase"):
            self.metrics.round_phase(training, str(status.get("phase") or ""),
                                     str(patch["phase"]), body, now)
        if done:
            self.metrics.round_finished(training, rnd.metadata.name)
        else:
            budget = timedelta(seconds=elapsed - 2 * rnd.spec.aggregation.deadline_seconds)
            self.metrics.round_active(training, rnd.metadata.name, now - budget)
