"""Report a round: pure functions from what was observed and decided to the status patch
and the Events. No I/O, so every status a round can show is tested without a cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fedma import termination
from fedma.rounds import Decision, JobState, RoundPhase, SiloPhase
from fedma_operator.conditions import round_conditions
from fedma_operator.status import Event, condition, merge_conditions, now_iso


@dataclass
class Settled:
    """Silos whose phase changed in this reconcile."""

    excluded: list[str] = field(default_factory=list)  # newly excluded (stop their Jobs)
    succeeded: list[str] = field(default_factory=list)  # newly succeeded


def settle(decision: Decision, old: dict[str, dict[str, Any]],
           entries: dict[str, dict[str, Any]], agg: dict[str, Any]) -> Settled:
    """Write the decided phase and reason into each silo's entry. A silo that succeeded
    after the aggregation's included set was recorded stays out of it (excluded, with the
    reason), so status never claims an update the aggregate does not contain."""
    recorded = set((agg.get("included") or {}).keys())
    out = Settled()
    for name, phase in decision.silo_phases.items():
        entry = entries[name]
        if recorded and phase == SiloPhase.SUCCEEDED and name not in recorded:
            phase = SiloPhase.EXCLUDED
            decision.reasons[name] = ("finished after aggregation started; its update is "
                                      "not used")
        was = old.get(name, {}).get("phase")
        entry["phase"] = phase
        entry["reason"] = decision.reasons.get(
            name, entry.get("reason", "") if phase != SiloPhase.SUCCEEDED else "")
        if phase == SiloPhase.EXCLUDED and was != SiloPhase.EXCLUDED:
            out.excluded.append(name)
        if phase == SiloPhase.SUCCEEDED and was != SiloPhase.SUCCEEDED:
            out.succeeded.append(name)
    return out


def aggregated(entries: dict[str, dict[str, Any]], agg: dict[str, Any]) -> dict[str, Any]:
    """A succeeded round's results from the aggregator's summary: the output, and each silo
    it rejected or bounded marked in that silo's entry (a shortened summary names them by
    mask; their reasons are then in the output's manifest in the store)."""
    summary = agg.get("summary") or {}
    requested = sorted((agg.get("included") or {}).keys())
    output = (summary.get("output") or {}).get("uri", "the output")
    missing = f"reason in the manifest of {output} (the termination message was shortened)"
    for silo, reason in termination.silo_flags(summary, "rejected", requested,
                                               missing).items():
        if silo in entries:
            entries[silo].update(phase=SiloPhase.EXCLUDED,
                                 reason=f"rejected by the aggregator: {reason}")
    for silo, note in termination.silo_flags(summary, "notes", requested, missing).items():
        if silo in entries:  # included, but bounded by a robust rule
            entries[silo]["note"] = note
    agg["excluded"] = sorted(s for s, e in entries.items()
                             if e.get("phase") == SiloPhase.EXCLUDED)
    return {"loss": summary.get("loss"), "output": summary.get("output"),
            "serverState": summary.get("server_state")}


def _dropping(status: dict[str, Any], entries: dict[str, dict[str, Any]]
              ) -> dict[str, dict[str, Any]]:
    """The silo entries as a merge patch writes them: a key this reconcile removed (the
    last attempt's ``waiting``) is sent as null, or the stored status would keep it."""
    old = status.get("silos") or {}
    return {name: {**{k: None for k in old.get(name) or {} if k not in entry}, **entry}
            for name, entry in entries.items()}


def report(decision: Decision, status: dict[str, Any], patch: dict[str, Any],
           conds: list[dict[str, Any]], entries: dict[str, dict[str, Any]],
           agg: dict[str, Any], settled: Settled, generation: int, now: datetime,
           quorum: int) -> tuple[dict[str, Any], list[Event], bool]:
    """The status patch, the Events and whether the round is done."""
    events: list[Event] = [("Warning", "SiloExcluded", f"silo {s}: {entries[s]['reason']}")
                           for s in settled.excluded]
    phase, message = decision.phase, decision.message
    done = phase in (RoundPhase.SUCCEEDED, RoundPhase.FAILED)
    if phase == RoundPhase.SUCCEEDED:
        agg["phase"] = JobState.SUCCEEDED
        patch.update(aggregated(entries, agg))
    if done:
        patch["completionTime"] = now_iso(now)
        conds.append(condition("Succeeded", phase == RoundPhase.SUCCEEDED, str(phase),
                               message, generation, now))
    done_count = sum(1 for e in entries.values() if e.get("phase") == SiloPhase.SUCCEEDED)
    losses = [e["loss"] for e in entries.values() if isinstance(e.get("loss"), int | float)]
    if "loss" not in patch and losses:
        patch["loss"] = round(sum(losses) / len(losses), 6)
    patch.update(phase=phase, message=message, silos=_dropping(status, entries),
                 aggregation=agg,
                 silosDone=f"{done_count}/{len(entries)}")
    if phase != status.get("phase"):
        patch["phaseSince"] = now_iso(now)
        events.append(("Warning" if phase == RoundPhase.FAILED else "Normal",
                       f"Round{phase}", message))
    conds.extend(round_conditions(phase, quorum, entries, generation, now))
    patch["conditions"] = merge_conditions(status.get("conditions") or [], conds)
    return patch, events, done
