"""FedAvg (McMahan et al., 2017): the sample-weighted mean of the silos' projectors.

Accumulates in float64 over silos sorted by name, so the result — and its digest — is the
same for the same inputs whatever order the updates arrived in; a retried aggregation Job
reproduces the projector bit for bit.
"""

from __future__ import annotations

from fedma.aggregate.base import AggregateResult, SiloUpdate, Tensors


class FedAvg:
    name = "fedavg"

    def __init__(self, server_lr: float = 1.0):
        if server_lr <= 0:
            raise ValueError("aggregation.options.server_lr must be > 0")
        self.server_lr = float(server_lr)

    def aggregate(self, base: Tensors, updates: list[SiloUpdate],
                  server_state: Tensors) -> AggregateResult:
        if not updates:
            raise ValueError("FedAvg needs at least one update")
        total = sum(u.samples for u in updates)
        if total <= 0:
            raise ValueError("FedAvg needs updates with a positive sample count")
        ordered = sorted(updates, key=lambda u: u.silo)
        acc = {k: v.double().clone() * 0 for k, v in base.items()}
        for u in ordered:
            w = u.samples / total
            for k, d in u.delta(base).items():
                acc[k] += w * d
        new = {k: (base[k].double() + self.server_lr * acc[k]).to(base[k].dtype) for k in base}
        report = {u.silo: {"weight": u.samples / total, "samples": u.samples} for u in ordered}
        return AggregateResult(new, dict(server_state), report)
