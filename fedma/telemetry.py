"""Prometheus metrics of a silo training Job, served while it runs (``$FEDMA_METRICS_PORT``).

The operator sees a silo only at the end of a round (its termination message); these live series
are what shows a slow or stuck silo *during* the round: the PodMonitor in the Helm chart scrapes
them and the silo dashboard and the throughput alert read them. Every series carries
``training`` and ``silo`` labels so they join the operator's series without relabelling.
Only rank 0 of a multi-rank Job serves them (the ranks share one pod, one port).
"""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)
PHASES = ("loading", "training", "uploading", "done")
_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class TrainerMetrics:
    """One silo's training progress. A registry of its own: nothing global leaks into tests."""

    def __init__(self, training: str, silo: str, round_number: int,
                 registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ["training", "silo"]
        self._values = (training, silo)
        r = self.registry
        self.steps = Counter("fedma_trainer_steps_total", "Optimiser steps taken this round",
                             labels, registry=r).labels(*self._values)
        self.samples = Counter("fedma_trainer_samples_total",
                               "Training samples processed this round", labels,
                               registry=r).labels(*self._values)
        self.loss = Gauge("fedma_trainer_loss", "Loss of the latest step", labels,
                          registry=r).labels(*self._values)
        self.step_seconds = Histogram("fedma_trainer_step_duration_seconds",
                                      "Wall time of one optimiser step", labels,
                                      buckets=_STEP_BUCKETS, registry=r).labels(*self._values)
        self.round = Gauge("fedma_trainer_round", "The round this Job trains", labels,
                           registry=r).labels(*self._values)
        # A gauge per state rather than prometheus_client's Enum, whose state label would be
        # named after the metric: the alerts and dashboards select {phase="training"}.
        self._phase = Gauge("fedma_trainer_phase", "What the Job is doing: 1 for the current "
                            "phase (loading, training, uploading, done), 0 for the others",
                            [*labels, "phase"], registry=r)
        self.round.set(round_number)
        self.set_phase("loading")
        self._last = time.perf_counter()

    def step(self, batch_size: int, loss: float) -> None:
        now = time.perf_counter()
        if self.phase == "loading":  # the first step includes the data pipeline's start
            self.set_phase("training")
        self.step_seconds.observe(now - self._last)
        self._last = now
        self.steps.inc()
        self.samples.inc(batch_size)
        self.loss.set(loss)

    def set_phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        for p in PHASES:
            self._phase.labels(*self._values, p).set(1 if p == phase else 0)
        self.phase = phase
        self._last = time.perf_counter()

    def serve(self, port: int, addr: str = "0.0.0.0") -> bool:
        """Metrics are for watching, never a reason to fail a round: a port that cannot be
        bound is logged and training goes on without the endpoint."""
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.warning("no metrics endpoint on port %d: %s; training continues", port, exc)
            return False
        return True


def metrics_port() -> int:
    """``$FEDMA_METRICS_PORT`` (0 or unset: no endpoint); rank 0 only."""
    raw = os.environ.get("FEDMA_METRICS_PORT", "").strip()
    if not raw or int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) != 0:
        return 0
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"$FEDMA_METRICS_PORT must be a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"$FEDMA_METRICS_PORT must be a port number, got {raw!r}")
    return port
