"""One reconcile of a FederatedTraining: create round r, and round r+1 when r succeeds.

Round r+1's input is round r's output projector (URI + digest) and its server state, both
read from round r's status; the round objects carry the rest. Like rounds, progress lives in
status and in the round objects (deterministic names ``<training>-r0003``), so a restarted
operator neither skips nor duplicates a round.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fedma.rounds import RoundPhase
from fedma.spec import FederatedTraining, ProjectorRef, SpecError, dump, parse, round_spec
from fedma_operator.conditions import mirrored
from fedma_operator.kube import Hub
from fedma_operator.reconcile import WATCHED_RECHECK_S
from fedma_operator.status import (
    Outcome,
    accept_spec,
    condition,
    invalid,
    merge_conditions,
    now_iso,
)
from fedma_operator.tenancy import Tenancy


def _ref(value: Any) -> ProjectorRef | None:
    if isinstance(value, dict) and value.get("uri") and value.get("digest"):
        return ProjectorRef(uri=value["uri"], digest=value["digest"])
    return None


def foreign_owner(obj: dict[str, Any], uid: str | None) -> str | None:
    """Why a round object is not this training's, or None if it is (or ``uid`` is unknown)."""
    if not uid:
        return None
    owners = [o for o in obj.get("metadata", {}).get("ownerReferences") or []
              if o.get("kind") == "FederatedTraining" and o.get("controller")]
    if not owners:
        return "it has no owner"
    if owners[0].get("uid") != uid:
        return f"its owner is FederatedTraining uid {owners[0].get('uid')}"
    return None


# status.history keeps the newest rounds only, each with counts and a few names: a training
# of 10,000 rounds over 1,000 silos must stay far inside etcd's object limit. The rest is in
# each round's own status, the store's manifests, and Prometheus (fedma_round_loss).
HISTORY_ROUNDS = 50
HISTORY_NAMES = 20


def history_entry(current: int, name: str, rstatus: dict[str, Any]) -> dict[str, Any]:
    """One succeeded round, bounded: how many silos were included and excluded, and the
    first HISTORY_NAMES excluded ones by name."""
    excluded = sorted(s for s, e in (rstatus.get("silos") or {}).items()
                      if e.get("phase") == "Excluded")
    return {"round": current, "name": name, "phase": rstatus.get("phase"),
            "loss": rstatus.get("loss"), "output": rstatus.get("output"),
            "silosIncluded": len((rstatus.get("aggregation") or {}).get("included") or {}),
            "silosExcluded": len(excluded), "excluded": excluded[:HISTORY_NAMES],
            "completionTime": rstatus.get("completionTime")}


def finished_edit(body: dict[str, Any], status: dict[str, Any], generation: int, now: datetime
                  ) -> Outcome:
    """A Succeeded training takes one edit, raised ``spec.rounds``; any other (rounds lowered,
    a silo renamed) is refused as while it ran, with SpecChangeRefused and an Event, and
    restoring the spec clears it. Nothing else is written: the loop sleeps until the next edit."""
    _, _, conds, events = accept_spec(body, status, generation, now)
    old = status.get("conditions") or []
    merged = merge_conditions(old, conds)
    if merged == old and not events:
        return Outcome({}, done=True, dormant=True)
    return Outcome({"conditions": merged, "observedGeneration": generation}, events,
                   done=True, dormant=True)


class TrainingReconciler:
    def __init__(self, hub: Hub, tenancy: Tenancy | None = None):
        self.hub = hub
        # Checked before any round is created: a refused silo fails the training at once,
        # not its first round (which checks again: a round can be created by hand).
        self.tenancy = tenancy or Tenancy()

    async def reconcile(self, body: dict[str, Any], now: datetime) -> Outcome:
        meta = body.get("metadata", {})
        status = dict(body.get("status") or {})
        generation = int(meta.get("generation") or 1)
        namespace = meta.get("namespace") or "default"
        if status.get("phase") == "Failed":
            return Outcome({}, done=True)
        extending = False
        if status.get("phase") == "Succeeded":
            # The one edit that brings a finished training back: raised spec.rounds.
            wanted = (body.get("spec") or {}).get("rounds")
            if not isinstance(wanted, int) or wanted <= int(status.get("completedRounds") or 0):
                return finished_edit(body, status, generation, now)
            extending = True
        spec, patch, conds, events = accept_spec(body, status, generation, now)
        source = f"FederatedTraining {namespace}/{meta.get('name')}"
        try:
            training = parse({**{k: body[k] for k in ("apiVersion", "kind", "metadata")
                                 if k in body}, "spec": spec}, source=source)
        except SpecError as exc:
            out = invalid(exc, status, generation, now)
            out.status.pop("completionTime", None)
            return out
        assert isinstance(training, FederatedTraining)
        refused = self.tenancy.check(training.spec.silos, namespace, source)
        if refused is not None:
            out = invalid(refused, status, generation, now, reason="NotPermitted")
            out.status.pop("completionTime", None)
            return out
        total = training.spec.rounds
        # The rounds of one pass over the data: the training's rounds when it started, so
        # that extending it never re-cuts the shards earlier rounds trained on.
        pass_rounds = int(status.get("passRounds") or total)
        patch["passRounds"] = pass_rounds
        if extending:
            patch["completionTime"] = None
            events.append(("Normal", "TrainingExtended",
                           f"spec.rounds raised to {total}: rounds "
                           f"{int(status.get('completedRounds') or 0) + 1}–{total} follow"))
        current = int(status.get("currentRound") or 1)
        history: list[dict[str, Any]] = list(status.get("history") or [])
        completed = int(status.get("completedRounds") or len(history))
        latest, server_state = _ref(status.get("latest")), _ref(status.get("serverState"))
        patch["startTime"] = status.get("startTime") or now_iso(now)
        phase, message, done = "Running", "", False
        seen: dict[str, Any] = {}  # the status of the newest round looked at
        while True:
            rnd = round_spec(training, current, latest, server_state, pass_rounds)
            name = rnd.metadata.name
            obj = await self.hub.get_round(namespace, name)
            if obj is None and training.spec.suspend:
                phase = "Suspended"
                message = (f"suspended before round {current} of {total} (spec.suspend); set "
                           "it to false to resume")
                break
            if obj is None:
                wire = dump(rnd)
                wire["metadata"]["namespace"] = namespace
                wire["metadata"]["labels"] = {"fedma.io/training": training.metadata.name,
                                              "fedma.io/round": str(current)}
                if meta.get("uid"):
                    wire["metadata"]["ownerReferences"] = [{
                        "apiVersion": body.get("apiVersion"), "kind": "FederatedTraining",
                        "name": meta["name"], "uid": meta["uid"], "controller": True,
                        "blockOwnerDeletion": True}]
                if await self.hub.create_round(namespace, wire):
                    events.append(("Normal", "RoundCreated", f"round {current}/{total}: {name}"))
                message = f"round {current} of {total} created"
                break
            stranger = foreign_owner(obj, meta.get("uid"))
            if stranger is not None:
                # An earlier object's round (a training deleted with its rounds orphaned, or
                # a hand-made one): its results are not this training's. Wait, saying why.
                message = (f"round {current}: FederatedRound {namespace}/{name} exists and is "
                           f"not this training's ({stranger}); delete it to go on")
                if status.get("message") != message:
                    events.append(("Warning", "RoundConflict", message))
                break
            rstatus = obj.get("status") or {}
            seen = rstatus
            rphase = rstatus.get("phase")
            if rphase == RoundPhase.SUCCEEDED:
                out = _ref(rstatus.get("output"))
                if out is None:
                    phase, done = "Failed", True
                    message = f"round {current} succeeded without an output in its status"
                    break
                if completed < current:
                    history = [*history, history_entry(current, name, rstatus)][-HISTORY_ROUNDS:]
                    completed = current
                latest, server_state = out, _ref(rstatus.get("serverState"))
                patch["loss"] = rstatus.get("loss")
                if current >= total:
                    phase, done = "Succeeded", True
                    message = f"all {total} rounds succeeded"
                    break
                current += 1
                continue
            if rphase == RoundPhase.FAILED:
                phase, done = "Failed", True
                message = f"round {current} failed: {rstatus.get('message', '')}"
                break
            message = f"round {current} of {total}: {rphase or 'Pending'}"
            break
        patch.update(phase=phase, message=message, currentRound=current,
                     completedRounds=completed, history=history,
                     latest=latest.model_dump() if latest else None,
                     serverState=server_state.model_dump() if server_state else None)
        if done or extending:
            if done:
                patch["completionTime"] = now_iso(now)
            conds.append(condition("Succeeded", phase == "Succeeded",
                                   "Extended" if extending and not done else phase, message,
                                   generation, now))
        conds += [condition("Running", phase == "Running", phase, message, generation, now),
                  condition("Suspended", phase == "Suspended",
                            "SpecSuspend" if phase == "Suspended" else "NotSuspended",
                            message, generation, now),
                  condition("Failed", phase == "Failed", phase, message, generation, now),
                  *mirrored(seen, generation, now)]
        if status.get("phase") != phase:
            events.append(("Warning" if phase == "Failed" else "Normal", f"Training{phase}",
                           message))
        patch["conditions"] = merge_conditions(status.get("conditions") or [], conds)
        # A running round wakes this loop when it finishes (handlers.py): no need to poll it.
        waiting = phase == "Running" and "not this training's" not in message
        return Outcome(patch, events, done, WATCHED_RECHECK_S if waiting else None,
                       dormant=phase == "Succeeded")
