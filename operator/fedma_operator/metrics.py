"""Prometheus metrics of the operator (prometheus-client; served on ``/metrics``).

Names follow Prometheus conventions: ``fedma_`` prefix, base units in the name, ``_total`` on
counters. Counters count transitions the operator observed; after a restart they start at 0
again, which ``rate()``/``increase()`` handle as a counter reset.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_ROUND_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)

ROUNDS = Counter("fedma_rounds_total", "Rounds finished, by outcome", ["training", "outcome"])
ROUND_SECONDS = Histogram("fedma_round_duration_seconds", "Wall time of finished rounds",
                          ["training", "outcome"], buckets=_ROUND_BUCKETS)
PHASE_SECONDS = Histogram("fedma_round_phase_duration_seconds",
                          "Time rounds spent in each phase", ["training", "phase"],
                          buckets=_ROUND_BUCKETS)
SILO_JOBS = Counter("fedma_silo_jobs_total", "Silo training Jobs by outcome "
                    "(created, succeeded, excluded)", ["training", "silo", "outcome"])
UPDATES = Counter("fedma_silo_updates_total", "Silo updates accepted into or excluded from "
                  "aggregation", ["training", "outcome"])
SILO_SAMPLES = Gauge("fedma_silo_samples", "Samples in the silo's last accepted update",
                     ["training", "silo"])
SILO_LOSS = Gauge("fedma_silo_loss", "Mean training loss of the silo's last accepted update",
                  ["training", "silo"])
SILO_THROUGHPUT = Gauge("fedma_silo_samples_per_second",
                        "Training throughput of the silo's last accepted update",
                        ["training", "silo"])
ROUND_LOSS = Gauge("fedma_round_loss", "Sample-weighted training loss of the latest round",
                   ["training"])
ROUND_DEADLINE = Gauge("fedma_round_deadline_timestamp_seconds",
                       "Unix time by which an active round must have finished: its start, plus "
                       "the deadline for silos, plus the same deadline for the aggregation Job. "
                       "Present only while the round is active", ["training", "round"])
CURRENT_ROUND = Gauge("fedma_training_current_round", "Round a training is in",
                      ["training"])
AGG_SECONDS = Histogram("fedma_aggregation_duration_seconds",
                        "From aggregation Job launch to its success", ["training"],
                        buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800))
RECONCILE_SECONDS = Histogram("fedma_reconcile_duration_seconds", "One reconcile",
                              ["kind"], buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
API_REQUESTS = Counter("fedma_kubernetes_api_requests_total", "Kubernetes API requests",
                       ["verb", "resource"])
API_ERRORS = Counter("fedma_kubernetes_api_errors_total",
                     "Kubernetes API requests that failed (404 on get/delete and 409 on "
                     "create are expected and not counted)", ["verb", "resource"])
API_SECONDS = Histogram("fedma_kubernetes_api_request_duration_seconds",
                        "Kubernetes API request latency", ["verb", "resource"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


def _ts(value: str | None) -> datetime | None:
    from fedma_operator.status import parse_time

    return parse_time(value)


class Metrics:
    """The reconcilers report transitions here; kept as an object so tests can swap it."""

    def observe_api(self, verb: str, resource: str, seconds: float, error: bool) -> None:
        API_REQUESTS.labels(verb, resource).inc()
        API_SECONDS.labels(verb, resource).observe(seconds)
        errors = API_ERRORS.labels(verb, resource)  # exists at 0: an error rate, not no data
        if error:
            errors.inc()

    def silo_job_started(self, training: str, silo: str, attempt: int = 1) -> None:
        SILO_JOBS.labels(training, silo, "created").inc()
        if attempt > 1:  # a retry: the previous attempt failed
            SILO_JOBS.labels(training, silo, "failed").inc()
        # Every outcome exists from the first Job on, at 0: increase() over a series that
        # appears at 1 would miss that first event (alerts count exclusions with it).
        for outcome in ("failed", "succeeded", "excluded"):
            SILO_JOBS.labels(training, silo, outcome)
        for outcome in ("accepted", "excluded"):
            UPDATES.labels(training, outcome)

    def silo_excluded(self, training: str, silo: str) -> None:
        SILO_JOBS.labels(training, silo, "excluded").inc()
        UPDATES.labels(training, "excluded").inc()

    def silo_succeeded(self, training: str, silo: str, entry: dict[str, Any]) -> None:
        SILO_JOBS.labels(training, silo, "succeeded").inc()
        UPDATES.labels(training, "accepted").inc()
        if isinstance(entry.get("samples"), int | float):
            SILO_SAMPLES.labels(training, silo).set(entry["samples"])
            secs = entry.get("seconds")
            if isinstance(secs, int | float) and secs > 0:
                SILO_THROUGHPUT.labels(training, silo).set(entry["samples"] / secs)
        if isinstance(entry.get("loss"), int | float):
            SILO_LOSS.labels(training, silo).set(entry["loss"])

    def round_phase(self, training: str, old: str, new: str, body: dict[str, Any],
                    now: datetime) -> None:
        status = body.get("status") or {}
        since = _ts(status.get("phaseSince")) or _ts(status.get("startTime"))
        if old and since:
            PHASE_SECONDS.labels(training, old).observe((now - since).total_seconds())
        if new == "Succeeded" and old == "Aggregating":
            launched = _ts((status.get("aggregation") or {}).get("launchedAt"))
            if launched:
                AGG_SECONDS.labels(training).observe((now - launched).total_seconds())
        if new in ("Succeeded", "Failed"):
            ROUNDS.labels(training, new).inc()
            start = _ts(status.get("startTime"))
            if start:
                ROUND_SECONDS.labels(training, new).observe((now - start).total_seconds())

    def round_active(self, training: str, round_name: str, must_finish_by: datetime) -> None:
        ROUND_DEADLINE.labels(training, round_name).set(must_finish_by.timestamp())
        for outcome in ("Succeeded", "Failed"):  # at 0 from the start, as above
            ROUNDS.labels(training, outcome)

    def round_finished(self, training: str, round_name: str) -> None:
        with contextlib.suppress(KeyError):  # never reported, or already removed
            ROUND_DEADLINE.remove(training, round_name)

    def training_progress(self, training: str, current: int, loss: Any) -> None:
        CURRENT_ROUND.labels(training).set(current)
        if isinstance(loss, int | float):
            ROUND_LOSS.labels(training).set(loss)

    def reconcile_seconds(self, kind: str, seconds: float) -> None:
        RECONCILE_SECONDS.labels(kind).observe(seconds)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr)
