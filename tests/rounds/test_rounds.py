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
