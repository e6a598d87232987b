"""What every reconcile of a fedma object reports with: its outcome, conditions, the spec it
acts on (the accepted one: specs are immutable once work started) and the verdict on an
invalid spec. Pure functions, shared by rounds and trainings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fedma.rounds import RoundPhase
from fedma.spec import SpecError

Event = tuple[str, str, str]  # (type, reason, message) of a Kubernetes Event


@dataclass
class Outcome:
    status: dict[str, Any]  # merge-patch for .status
    events: list[Event] = field(default_factory=list)
    done: bool = False  # Succeeded or Failed: no more reconciles needed
    # The longest the loop may wait for a wake-up before reconciling again (None: its
    # interval): a round whose every Job is watched needs no poll, only its next deadline.
    recheck_s: float | None = None
    # Woken again and again (Jobs finishing one after another), reconcile no more often than
    # this: a round's reconcile costs in proportion to its silos (reconcile.py).
    gap_s: float = 0.0
    # Done, but an edit can bring it back (a Succeeded training whose spec.rounds is raised):
    # its loop sleeps until woken instead of ending.
    dormant: bool = False


def now_iso(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7386) is applied by the
    apiserver: maps merge key by key, null deletes, anything else replaces. The operator keeps
    its view of a status it wrote this way instead of decoding the apiserver's echo of the
    whole object (at 100 silos, tens of KiB per write)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


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


# spec.suspend (FederatedTraining) pauses and resumes; every other field is fixed at start,
# except the GROWS ones, which may be raised (spec.rounds: extending a training).
MUTABLE = ("suspend",)
GROWS = ("rounds",)


def accept_spec(body: dict[str, Any], status: dict[str, Any], generation: int, now: datetime
                ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]],
                           list[tuple[str, str, str]]]:
    """The spec to act on: the one accepted at the first reconcile, kept in status.

    A spec is immutable once work started. An edit is refused with a condition and an
    Event, and the object goes on under the accepted spec (never half-applied); restoring
    the spec clears the condition. Returns (spec, status patch, conditions, events).
    """
    current = body.get("spec") or {}
    # The fields that may change while the object runs take their current value; those
    # that may grow, their current value when it is not lower.
    accepted = {k: v for k, v in (status.get("acceptedSpec") or current).items()
                if k not in MUTABLE}
    accepted.update({k: current[k] for k in MUTABLE if k in current})
    for k in GROWS:
        if isinstance(current.get(k), int) and current[k] > accepted.get(k, current[k]):
            accepted[k] = current[k]
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


def invalid(exc: SpecError, status: dict[str, Any], generation: int, now: datetime,
            reason: str = "InvalidSpec") -> Outcome:
    """Failed for good: a spec the schema admitted but fedma refuses (``InvalidSpec``), or
    one the operator will not run for this tenant (``NotPermitted``, tenancy.py)."""
    # Paths are whole-object (``spec.training.batchSize``), as parse() and tenancy.py give.
    msg = "; ".join(f"{p}: {m}" for p, m in exc.errors)
    return Outcome({
        "phase": RoundPhase.FAILED, "observedGeneration": generation,
        "completionTime": now_iso(now), "message": msg,
        "conditions": merge_conditions(status.get("conditions") or [], [
            condition("InvalidSpec", True, reason, msg, generation, now),
            condition("Failed", True, reason, msg, generation, now),
            condition("Succeeded", False, reason, msg, generation, now)]),
    }, [("Warning", reason, msg)], done=True)


