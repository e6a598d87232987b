from fedma.rounds import (
    JobState,
    LaunchSilo,
    Observation,
    Policy,
    RoundPhase,
    SiloObservation,
    SiloPhase,
    decide,
)

P = Policy(("a", "b", "c"), quorum=2, deadline_s=100, backoff_limit=1)
S, F, A = JobState.SUCCEEDED, JobState.FAILED, JobState.ACTIVE


def obs(elapsed=0.0, agg=JobState.ABSENT, **silos):
    return Observation({k: SiloObservation(*v) for k, v in silos.items()}, agg,
                       elapsed_s=elapsed)


def test_fresh_round_launches_every_silo():
    d = decide(P, obs())
    assert d.phase == RoundPhase.TRAINING
    assert d.launch == (LaunchSilo("a", 1), LaunchSilo("b", 1), LaunchSilo("c", 1))


def test_all_succeeded_aggregates_all():
    d = decide(P, obs(a=(1, S), b=(1, S), c=(1, S)))
    assert d.phase == RoundPhase.AGGREGATING
    assert d.aggregate is not None and d.aggregate.included == ("a", "b", "c")


def test_failure_is_retried_then_excluded_with_reason():
    d = decide(P, obs(a=(1, F, "OOMKilled"), b=(1, A), c=(1, A)))
    assert d.launch == (LaunchSilo("a", 2),)
    d = decide(P, obs(a=(2, F, "OOMKilled"), b=(1, S), c=(1, S)))
    assert d.silo_phases["a"] == SiloPhase.EXCLUDED
    assert "OOMKilled (attempt 2 of 2)" in d.reasons["a"]
    assert d.aggregate is not None and d.aggregate.included == ("b", "c")


def test_a_permanent_failure_is_not_retried():
    """Bad data fails every attempt the same way (and each reloads the backbones)."""
    bad = SiloObservation(1, F, "DataError: data.jsonl:7: image x.jpg is unreadable",
                          permanent=True)
    d = decide(P, Observation({"a": bad, "b": SiloObservation(1, A), "c": SiloObservation(1, A)}))
    assert d.launch == () and d.silo_phases["a"] == SiloPhase.EXCLUDED
    assert d.reasons["a"] == ("DataError: data.jsonl:7: image x.jpg is unreadable (not "
                              "retried: fix the data)")
    # The same failure without the flag is retried, within the backoff limit.
    again = decide(P, Observation({"a": SiloObservation(1, F, "OOMKilled"),
                                   "b": SiloObservation(1, A), "c": SiloObservation(1, A)}))
    assert again.launch == (LaunchSilo("a", 2),)


def test_rejected_update_counts_as_failed_attempt():
    d = decide(P, obs(a=(2, S, "", "sha256 mismatch"), b=(1, S), c=(1, S)))
    assert d.reasons["a"].startswith("sha256 mismatch")
    assert d.aggregate.included == ("b", "c")


def test_waits_for_stragglers_until_deadline():
    d = decide(P, obs(elapsed=50, a=(1, S), b=(1, S), c=(1, A)))
    assert d.phase == RoundPhase.TRAINING and d.aggregate is None and not d.launch
    d = decide(P, obs(elapsed=100, a=(1, S), b=(1, S), c=(1, A)))
    assert d.aggregate.included == ("a", "b")
    assert "straggler" in d.reasons["c"]


def test_quorum_impossible_fails_early_naming_silos():
    d = decide(P, obs(a=(2, F, "data missing"), b=(2, F, "bad image"), c=(1, A)))
    assert d.phase == RoundPhase.FAILED
    assert "quorum impossible" in d.message and "a: data missing" in d.message


def test_deadline_without_quorum_fails():
    d = decide(P, obs(elapsed=101, a=(1, S), b=(1, A), c=(1, A)))
    assert d.phase == RoundPhase.FAILED


def test_aggregation_outcomes_and_late_arrivals_stay_out():
    d = decide(P, obs(agg=JobState.ACTIVE, a=(1, S), b=(1, S), c=(1, A)))
    assert d.phase == RoundPhase.AGGREGATING and d.silo_phases["c"] == SiloPhase.EXCLUDED
    assert not d.launch
    d = decide(P, obs(agg=JobState.SUCCEEDED, a=(1, S), b=(1, S), c=(1, S)))
    assert d.phase == RoundPhase.SUCCEEDED
    d = decide(P, Observation({"a": SiloObservation(1, S)}, JobState.FAILED, "disk full"))
    assert d.phase == RoundPhase.FAILED and "disk full" in d.message


def test_same_observation_same_decision():
    o = obs(elapsed=3, a=(1, F, "x"), b=(1, S))
    assert decide(P, o) == decide(P, o)


def queued(attempts=1, clock=0.0):
    return SiloObservation(attempts, A, queued=True, clock_s=clock)


def admitted(clock):
    return SiloObservation(attempts=1, job=A, clock_s=clock)


def test_a_queued_silo_is_queued_and_its_deadline_counts_from_admission():
    """Kueue: the round's clock ran out, but the silo admitted 30 s ago has 70 s left, so the
    round waits for it; with the round's clock alone it would be a straggler."""
    o = Observation({"a": SiloObservation(1, S), "b": SiloObservation(1, S),
                     "c": queued(clock=40)}, elapsed_s=40)
    d = decide(P, o)
    assert d.silo_phases["c"] == SiloPhase.QUEUED and d.phase == RoundPhase.TRAINING
    o = Observation({"a": SiloObservation(1, S), "b": SiloObservation(1, S),
                     "c": admitted(30)}, elapsed_s=130)
    d = decide(P, o)
    assert d.silo_phases["c"] == SiloPhase.RUNNING, d
    assert d.aggregate is None and d.phase == RoundPhase.TRAINING
    d = decide(P, Observation({**o.silos, "c": admitted(100)}, elapsed_s=200))
    assert d.silo_phases["c"] == SiloPhase.EXCLUDED
    assert "from admission" in d.reasons["c"]
    assert d.aggregate is not None and d.aggregate.included == ("a", "b")


def test_a_silo_never_admitted_is_excluded_when_its_queue_wait_reaches_the_deadline():
    o = Observation({"a": SiloObservation(1, S), "b": SiloObservation(1, S),
                     "c": queued(clock=99.9)}, elapsed_s=99.9)
    assert decide(P, o).silo_phases["c"] == SiloPhase.QUEUED
    d = decide(P, Observation({**o.silos, "c": queued(clock=100)}, elapsed_s=100))
    assert d.silo_phases["c"] == SiloPhase.EXCLUDED
    assert "not admitted by its queue" in d.reasons["c"]
    assert d.aggregate is not None and d.aggregate.included == ("a", "b")


def test_silos_without_a_queue_keep_the_rounds_clock_beside_a_queued_one():
    o = Observation({"a": SiloObservation(1, A), "b": SiloObservation(1, S),
                     "c": admitted(10)}, elapsed_s=100)
    d = decide(P, o)
    assert d.silo_phases["a"] == SiloPhase.EXCLUDED and "straggler" in d.reasons["a"]
    assert d.silo_phases["c"] == SiloPhase.RUNNING and d.aggregate is None
