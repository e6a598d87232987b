"""The hub's Job watch reads only what can wake a round: every settled Job wakes it (the same
rule kopf's handler applied), events that cannot be settled are not decoded, and the stream
is split into events whatever their size. The watch against the real apiserver: the kube
suites and bench/load.py."""

from __future__ import annotations

import json

import pytest

from fedma_operator import jobwatch
from fedma_operator.jobwatch import Seen, lines, read_event, settled


def job(status: dict | None = None, rv: str = "42", **labels: str) -> dict:
    meta = {"name": "t-r0001-silo-1-a1", "namespace": "silos", "uid": "u-1",
            "resourceVersion": rv, "labels": {
                "app.kubernetes.io/managed-by": "fedma-operator",
                "fedma.io/round-name": "t-r0001", **labels}}
    return {"kind": "Job", "apiVersion": "batch/v1", "metadata": meta,
            "spec": {"backoffLimit": 0, "template": {"spec": {"containers": [
                {"name": "trainer", "args": ["--label", "a=b"]}]}}},
            "status": status or {}}


def line(kind: str, obj: dict, compact: bool = True) -> bytes:
    """An event as the apiserver writes it (compact, type first); ``compact=False`` as a
    simpler server might (spaces)."""
    return json.dumps({"type": kind, "object": obj},
                      separators=(",", ":") if compact else None).encode()


TRUE = "True"
# A silo Job's life as the Job controller writes it, then failures and a deadline.
LIFE = [
    None,
    {"active": 1, "startTime": "t", "uncountedTerminatedPods": {}},
    {"active": 1, "ready": 1, "startTime": "t"},
    {"active": 0, "ready": 0, "uncountedTerminatedPods": {"succeeded": ["p-1"]}},
    {"succeeded": 1, "conditions": [{"type": "SuccessCriteriaMet", "status": TRUE}]},
    {"succeeded": 1, "conditions": [{"type": "SuccessCriteriaMet", "status": TRUE},
                                    {"type": "Complete", "status": TRUE}]},
    {"active": 0, "failed": 1, "conditions": [{"type": "FailureTarget", "status": TRUE,
                                               "reason": "BackoffLimitExceeded"}]},
    {"active": 1, "conditions": [{"type": "FailureTarget", "status": TRUE,
                                  "reason": "DeadlineExceeded"}]},
    {"conditions": [{"type": "Suspended", "status": "False"}], "active": 1},
]


@pytest.mark.parametrize("compact", [True, False], ids=["apiserver", "spaced"])
@pytest.mark.parametrize("kind", ["ADDED", "MODIFIED", "DELETED"])
@pytest.mark.parametrize("status", LIFE, ids=range(len(LIFE)))
def test_a_round_is_woken_exactly_for_the_events_kopf_acted_on(status, kind, compact):
    obj = job(status)
    seen = read_event(line(kind, obj, compact))
    assert (seen.wake is not None) == settled(obj, kind)
    assert seen.version == "42"
    if seen.wake is not None:
        assert seen.wake == ("silos", "t-r0001")


def test_events_that_cannot_be_settled_are_not_decoded(monkeypatch):
    decoded = []
    real = json.loads
    monkeypatch.setattr(jobwatch.json, "loads", lambda b: decoded.append(b) or real(b))
    for status in LIFE[:3]:
        assert read_event(line("MODIFIED", job(status, rv="7"))) == Seen("7")
    assert decoded == []
    assert read_event(line("MODIFIED", job(LIFE[5]))).wake == ("silos", "t-r0001")
    assert len(decoded) == 1


def test_a_round_in_another_namespace_and_a_job_of_no_round():
    done = LIFE[5]
    assert read_event(line("MODIFIED", job(done, **{"fedma.io/round-namespace": "hub"}))
                      ).wake == ("hub", "t-r0001")
    foreign = job(done)
    del foreign["metadata"]["labels"]["fedma.io/round-name"]
    assert read_event(line("MODIFIED", foreign)) == Seen("42")


def test_an_expired_version_asks_for_a_relist_and_bookmarks_move_the_version():
    gone = {"kind": "Status", "code": 410, "reason": "Expired"}
    assert read_event(line("ERROR", gone)).expired
    mark = {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"resourceVersion": "99"}}
    assert read_event(line("BOOKMARK", mark)) == Seen("99")


def test_the_stream_is_split_into_events_whatever_their_size():
    big = job(LIFE[5])
    big["spec"]["template"]["spec"]["containers"][0]["args"] = [
        f"silo-{i:04d}={'ab' * 32}" for i in range(1000)]  # the 1,000-silo aggregation Job
    stream = line("ADDED", job()) + b"\n" + line("MODIFIED", big) + b"\n\n"
    buffer = bytearray()
    got = []
    for i in range(0, len(stream), 1000):
        got += lines(buffer, stream[i:i + 1000])
    assert not buffer
    assert [read_event(g).wake for g in got] == [None, ("silos", "t-r0001")]
    assert len(got[1]) > 64 * 1024  # past aiohttp's line limit
