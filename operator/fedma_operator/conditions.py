"""The conditions a person and ``kubectl wait`` read, from a round's decision and its silos'
entries. Pure: the reconcilers merge them into status (status.merge_conditions keeps each
one's lastTransitionTime while its status stays).

A round has ``Running`` (training or aggregating), ``Degraded`` (a silo excluded, on a retry,
or with a pod stuck (``waiting``: ImagePullBackOff, Unschedulable, ...), naming them),
``QuorumAtRisk`` (one more exclusion fails the round, once a silo has been lost or is
retrying), ``Failed`` and ``Succeeded`` (set when the round ends). A training mirrors its
current round's ``Degraded`` and ``QuorumAtRisk`` and adds ``Running`` and ``Suspended``
(training.py). So ``kubectl wait --for=condition=Succeeded`` and ``--for=condition=Failed``
both end when the object does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fedma.rounds import RoundPhase, SiloPhase
from fedma_operator.status import condition

NAMES = 10  # silos named in one message; the rest counted


def named(silos: list[str]) -> str:
    more = len(silos) - NAMES
    return ", ".join(silos[:NAMES]) + (f" (+{more} more)" if more > 0 else "")


def _why_waiting(silo: str, entry: dict[str, Any]) -> str:
    return f"{silo} ({str(entry['waiting']).split(':', 1)[0]})"


def round_conditions(phase: RoundPhase, quorum: int, entries: dict[str, dict[str, Any]],
                     generation: int, now: datetime) -> list[dict[str, Any]]:
    excluded = sorted(s for s, e in entries.items() if e.get("phase") == SiloPhase.EXCLUDED)
    still_open = {s: e for s, e in sorted(entries.items())
                  if e.get("phase") not in (SiloPhase.SUCCEEDED, SiloPhase.EXCLUDED)}
    retrying = [s for s, e in still_open.items() if int(e.get("attempts") or 0) > 1]
    waiting = [s for s, e in still_open.items() if e.get("waiting")]
    done = phase in (RoundPhase.SUCCEEDED, RoundPhase.FAILED)
    out = [condition("Running", phase in (RoundPhase.TRAINING, RoundPhase.AGGREGATING),
                     str(phase), f"round is {phase}", generation, now),
           condition("Failed", phase == RoundPhase.FAILED, str(phase),
                     "round failed" if phase == RoundPhase.FAILED else "round has not failed",
                     generation, now)]
    if excluded or retrying or (waiting and not done):
        parts = ([f"excluded: {named(excluded)}"] if excluded else []) + (
            [f"retrying: {named(retrying)}"] if retrying else []) + (
            [f"waiting: {named([_why_waiting(s, entries[s]) for s in waiting])}"]
            if waiting and not done else [])
        reason = ("SilosExcluded" if excluded else "SilosRetrying" if retrying
                  else "SilosWaiting")
        out.append(condition("Degraded", True, reason, "; ".join(parts), generation, now))
    else:
        out.append(condition("Degraded", False, "AllSilosHealthy",
                             "no silo excluded or retrying", generation, now))
    spare = len(entries) - len(excluded) - quorum
    at_risk = not done and spare <= 0 and bool(excluded or retrying)
    out.append(condition(
        "QuorumAtRisk", at_risk, "NoSpareSilo" if at_risk else "QuorumSafe",
        f"{len(entries) - len(excluded)} silos can still succeed, {quorum} needed"
        + (": one more exclusion fails the round" if at_risk else ""), generation, now))
    return out


def mirrored(round_status: dict[str, Any], generation: int, now: datetime
             ) -> list[dict[str, Any]]:
    """The current round's Degraded and QuorumAtRisk, for its training."""
    out = []
    for c in round_status.get("conditions") or []:
        if c.get("type") in ("Degraded", "QuorumAtRisk"):
            out.append(condition(c["type"], c.get("status") == "True", c.get("reason") or "",
                                 c.get("message") or "", generation, now))
    return out
