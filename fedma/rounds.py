"""The round state machine: pure decisions from observed state, shared by every backend.

A backend (the local runner, the kopf operator) observes the world — which silo Jobs exist,
which finished, what the clock says — and asks :func:`decide` what to do next. Keeping the
decision pure means it is unit-tested in microseconds, a restarted backend reaches the same
decision from the same observation (no hidden in-memory progress), and the local runner and
the operator cannot drift apart in how they treat stragglers, retries and quorum.

Semantics:
- every silo gets one training attempt, plus up to ``backoff_limit`` retries after a failure,
  except a failure its attempt reported as permanent (its data is malformed: another attempt
  on the same data fails the same way, and each costs a reload of the backbones);
- the round waits for all silos until ``deadline_s`` after it started; at the deadline, silos
  still running are excluded as stragglers. A silo whose Jobs wait in a queue (Kueue) has a
  clock of its own: ``deadline_s`` to be admitted, then ``deadline_s`` from admission, so time
  spent queued behind other work is not counted as straggling;
- aggregation starts when every silo is settled (succeeded or excluded), or at the deadline,
  provided at least ``quorum`` silos succeeded; it uses exactly the succeeded silos;
- if the quorum can no longer be met (too many exclusions, or the deadline passed short of
  it) the round fails with a reason naming the silos at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class JobState(StrEnum):
    ABSENT = "Absent"
    ACTIVE = "Active"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class SiloPhase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"  # its Job waits for admission by a queue (Kueue)
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    EXCLUDED = "Excluded"


class RoundPhase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    AGGREGATING = "Aggregating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class Policy:
    silos: tuple[str, ...]
    quorum: int
    deadline_s: float
    backoff_limit: int

    def __post_init__(self) -> None:
        if not 1 <= self.quorum <= len(self.silos):
            raise ValueError(f"quorum {self.quorum} must be within 1..{len(self.silos)}")


@dataclass(frozen=True)
class SiloObservation:
    """What the backend sees of a silo's current attempt.

    ``attempts`` counts attempts launched so far (0 before the first); ``job`` is the state of
    the latest one. ``rejected`` carries a reason when the attempt succeeded but its update was
    refused (bad digest, non-finite values): that is a failure of the attempt.

    ``clock_s`` is the silo's own clock for an active attempt in a queue: seconds waiting for
    admission while ``queued``, else seconds since admission. None: the round's clock.

    ``permanent``: the failed attempt said a retry cannot succeed (``"retry": false`` in its
    summary: bad data).
    """

    attempts: int = 0
    job: JobState = JobState.ABSENT
    reason: str = ""
    rejected: str = ""
    queued: bool = False
    clock_s: float | None = None
    permanent: bool = False

    def past(self, policy: Policy, elapsed_s: float) -> bool:
        """Whether this silo is past its deadline."""
        if self.job == JobState.ACTIVE and self.clock_s is not None:
            return self.clock_s >= policy.deadline_s
        return elapsed_s >= policy.deadline_s


@dataclass(frozen=True)
class Observation:
    silos: dict[str, SiloObservation]
    aggregation: JobState = JobState.ABSENT
    aggregation_reason: str = ""
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class LaunchSilo:
    silo: str
    attempt: int


@dataclass(frozen=True)
class LaunchAggregation:
    included: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    phase: RoundPhase
    silo_phases: dict[str, SiloPhase]
    reasons: dict[str, str] = field(default_factory=dict)
    launch: tuple[LaunchSilo, ...] = ()
    aggregate: LaunchAggregation | None = None
    message: str = ""

    @property
    def included(self) -> tuple[str, ...]:
        return tuple(s for s, p in self.silo_phases.items() if p == SiloPhase.SUCCEEDED)

    @property
    def excluded(self) -> tuple[str, ...]:
        return tuple(s for s, p in self.silo_phases.items() if p == SiloPhase.EXCLUDED)


def _silo(policy: Policy, name: str, obs: SiloObservation, past_deadline: bool,
          aggregating: bool) -> tuple[SiloPhase, str, LaunchSilo | None]:
    job = obs.job
    if job == JobState.SUCCEEDED and obs.rejected:
        job = JobState.FAILED
    if job == JobState.SUCCEEDED:
        return SiloPhase.SUCCEEDED, "", None
    failure = obs.rejected or obs.reason or "training Job failed"
    if aggregating:
        # Once aggregation has started the included set is fixed: late arrivals stay out.
        reason = failure if job == JobState.FAILED else "missed the round's deadline"
        return SiloPhase.EXCLUDED, reason, None
    if job == JobState.FAILED:
        if obs.permanent:
            return SiloPhase.EXCLUDED, f"{failure} (not retried: fix the data)", None
        if obs.attempts > policy.backoff_limit:
            return (SiloPhase.EXCLUDED,
                    f"{failure} (attempt {obs.attempts} of {policy.backoff_limit + 1})", None)
        if past_deadline:
            return SiloPhase.EXCLUDED, f"{failure}; no time left to retry before the deadline", None
        return SiloPhase.RUNNING, "", LaunchSilo(name, obs.attempts + 1)
    if past_deadline and obs.queued:
        return (SiloPhase.EXCLUDED, f"not admitted by its queue within the deadline "
                f"({policy.deadline_s:.0f} s)", None)
    if past_deadline and obs.clock_s is not None and job == JobState.ACTIVE:
        return (SiloPhase.EXCLUDED, f"missed its deadline ({policy.deadline_s:.0f} s from "
                "admission by its queue; straggler)", None)
    if past_deadline:
        return SiloPhase.EXCLUDED, "missed the round's deadline (straggler)", None
    if job == JobState.ABSENT:
        return SiloPhase.PENDING, "", LaunchSilo(name, obs.attempts + 1)
    return (SiloPhase.QUEUED if obs.queued else SiloPhase.RUNNING), "", None


def decide(policy: Policy, obs: Observation) -> Decision:
    """What to do next for one round, given what is observed now."""
    unknown = set(obs.silos) - set(policy.silos)
    if unknown:
        raise ValueError(f"observation names silos not in the round: {sorted(unknown)}")
    aggregating = obs.aggregation != JobState.ABSENT
    phases: dict[str, SiloPhase] = {}
    reasons: dict[str, str] = {}
    launches: list[LaunchSilo] = []
    for name in policy.silos:
        seen = obs.silos.get(name, SiloObservation())
        phase, reason, launch = _silo(
            policy, name, seen, seen.past(policy, obs.elapsed_s), aggregating
        )
        phases[name] = phase
        if reason:
            reasons[name] = reason
        if launch:
            launches.append(launch)

    succeeded = [s for s in policy.silos if phases[s] == SiloPhase.SUCCEEDED]
    excluded = [s for s in policy.silos if phases[s] == SiloPhase.EXCLUDED]

    def fail(msg: str) -> Decision:
        return Decision(RoundPhase.FAILED, phases, reasons, message=msg)

    if aggregating:
        if obs.aggregation == JobState.SUCCEEDED:
            return Decision(RoundPhase.SUCCEEDED, phases, reasons,
                            message=f"aggregated {len(succeeded)} of {len(policy.silos)} silos")
        if obs.aggregation == JobState.FAILED:
            return fail(f"aggregation failed: {obs.aggregation_reason or 'Job failed'}")
        return Decision(RoundPhase.AGGREGATING, phases, reasons,
                        message=f"aggregating {len(succeeded)} silo updates")

    possible = len(policy.silos) - len(excluded)
    if possible < policy.quorum:
        detail = "; ".join(f"{s}: {reasons[s]}" for s in excluded)
        return fail(f"quorum impossible: {possible} silos can still succeed, {policy.quorum} "
                    f"needed ({detail})")
    settled = len(succeeded) + len(excluded) == len(policy.silos)
    # Past the deadline: the round's clock ran out and no queued silo's own clock is still
    # running (each such silo is excluded when its own clock runs out, which settles it).
    past_deadline = obs.elapsed_s >= policy.deadline_s and all(
        phases[s] in (SiloPhase.SUCCEEDED, SiloPhase.EXCLUDED) or obs.silos.get(
            s, SiloObservation()).past(policy, obs.elapsed_s) for s in policy.silos)
    if settled or past_deadline:
        if len(succeeded) < policy.quorum:
            return fail(f"deadline passed with {len(succeeded)} of {policy.quorum} required "
                        "silo updates")
        return Decision(RoundPhase.AGGREGATING, phases, reasons,
                        aggregate=LaunchAggregation(tuple(succeeded)),
                        message=f"quorum met: aggregating {len(succeeded)} silo updates")
    started = any(p != SiloPhase.PENDING for p in phases.values()) or any(
        o.attempts for o in obs.silos.values())
    phase = RoundPhase.TRAINING if started or launches else RoundPhase.PENDING
    return Decision(phase, phases, reasons, launch=tuple(launches),
                    message=f"{len(succeeded)} of {len(policy.silos)} silos done")
